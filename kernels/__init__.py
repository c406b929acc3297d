"""Triton kernels of dgnet, installed as ``dgnet.kernels``. Import them through ``dgnet.ops``."""
