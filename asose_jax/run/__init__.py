"""A run: validated configs, the phase loop (warmup, search with growth, optimize), the retrain of a
fixed architecture, and checkpoints."""
