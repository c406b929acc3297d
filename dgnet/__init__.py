"""dgnet: DG-Net person re-identification (Zheng et al., CVPR 2019), correct to the paper and fast.

The public API for a trained model: :func:`dgnet.load_model` and :class:`dgnet.FeatureExtractor`
(:mod:`dgnet.api`). They, and every sub-module (``dgnet.evaluation``, ``dgnet.deploy``, ``dgnet.ops``,
``dgnet.data``, ``dgnet.models``, ...), are imported on first use, so ``import dgnet`` and the torch-free data
commands stay light. ``python -m dgnet`` lists the commands.
"""

import importlib as _importlib
import importlib.util as _util
import pkgutil as _pkgutil

__version__ = "0.1.0"

__all__ = ["FeatureExtractor", "load_model"]


def __getattr__(name: str):
    if name in __all__:
        from dgnet import api

        return getattr(api, name)
    # a sub-module, imported on first access (as ``import dgnet.x`` would); found by the import system itself,
    # so modules that move or are added need no list here
    if not name.startswith("__") and _util.find_spec(f"{__name__}.{name}") is not None:
        return _importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'dgnet' has no attribute {name!r}")


def __dir__() -> list[str]:
    public = {n for n in globals() if not n.startswith("_") or n.startswith("__")}
    return sorted({*public, *__all__, *(m.name for m in _pkgutil.iter_modules(__path__))})
