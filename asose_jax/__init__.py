"""asose_jax: differentiable architecture search that grows the network (ASO-SE), in JAX.

Layers, lowest first (tests/test_layers.py enforces the order): `space` and `data`; `report`,
`benchmarks` and `search`; `growth`; `run`; and the entry points `train`, `evaluate`, `sweep`.
"""
