"""Ground-truth lookups of published benchmarks (NATS-Bench TSS for the NAS-Bench-201 space)."""
