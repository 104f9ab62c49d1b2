"""PyTorch twin of the JAX search network, for cross-checking JAX against DARTS-family torch code.

torch_ops / torch_network: the same primitives, cells and networks (NCHW), fed the same edge weights.
convert: Flax variables <-> torch state_dict. torch_steps: the same optimisers in torch.
compare: `python -m parity.compare` prints max abs differences of both sides on identical inputs.
"""
