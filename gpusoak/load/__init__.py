"""Load: compute and VRAM pressure with checked results, run in a child process.

``python -m gpusoak.load`` loads one GPU (cupy) or, for tests and the simulated node, the CPU
(numpy) with the very same checking code (``checks``). The GPU-only part (``device``) is small:
choosing the CUDA device by PCI bus id, memory info, synchronisation. The soak's own process never
imports cupy: a process holding a CUDA context blocks a reset.
"""
