"""The cost model: architectures, GPUs, the operator roofline, predicted step latency,
the appendix's simulations. Pure: no torch.
"""
