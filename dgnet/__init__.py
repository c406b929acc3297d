"""dgnet: DG-Net person re-identification (Zheng et al., CVPR 2019), correct to the paper and fast.

The public API for a trained model: :func:`dgnet.load_model` and :class:`dgnet.FeatureExtractor`
(:mod:`dgnet.inference.extractor`). They are imported on first use, so ``import dgnet`` and the torch-free data
commands stay light.
"""

__version__ = "0.1.0"

__all__ = ["FeatureExtractor", "load_model"]


def __getattr__(name: str):
    if name in __all__:
        from dgnet.inference import extractor as api

        return getattr(api, name)
    raise AttributeError(f"module 'dgnet' has no attribute {name!r}")
