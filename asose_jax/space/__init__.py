"""What a network is: primitives, DARTS and NAS-Bench-201 cells and networks, genotypes and arch
strings, the structure spec, parameter and MAC counts. Knows nothing of optimizers, data, configs or I/O."""
