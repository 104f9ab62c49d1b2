"""How the search learns: Gumbel sampling, optimizers, the train state, the jitted steps, the
execution form chosen for the backend, data parallelism, and the stability detectors."""
