"""Dataset layouts, the synthetic dataset, samplers, and the DALI and PyTorch input pipelines."""
