"""dgnet: DG-Net person re-identification (Zheng et al., CVPR 2019), correct to the paper and fast."""

__version__ = "0.1.0"
