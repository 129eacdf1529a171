"""Triton kernels of sparsekit, installed as ``sparsekit.triton_kernels``."""
