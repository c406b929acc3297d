"""dgnet: DG-Net person re-identification (Zheng et al., CVPR 2019), correct to the paper and fast.

The public API for a trained model: :func:`dgnet.load_model` and :class:`dgnet.FeatureExtractor`
(:mod:`dgnet.inference.extractor`). They, and every sub-module (``dgnet.evaluation.rank``, ``dgnet.ops``,
``dgnet.inference.export``, ...), are imported on first use, so ``import dgnet`` and the torch-free data commands
stay light. ``python -m dgnet`` lists the commands.
"""

import importlib as _importlib
import importlib.util as _util
import pkgutil as _pkgutil
from collections.abc import Callable as _Callable
from collections.abc import Iterable as _Iterable
from typing import Any as _Any

__version__ = "0.1.0"

__all__ = ["FeatureExtractor", "load_model"]


def _submodules(package: str, path: _Iterable[str],
                names: _Iterable[str] = ()) -> tuple[_Callable[[str], _Any], _Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for the package ``package`` at ``path`` (``names``: its own public names): its
    sub-modules as attributes, imported on first access as ``import package.x`` would, so that ``import dgnet``
    stays light and ``dgnet.evaluation.rank.evaluate_rank`` works without importing it first. The import system
    finds them: a module that moves or is added needs no list."""

    def getattr_(name: str) -> _Any:
        if not name.startswith("__") and _util.find_spec(f"{package}.{name}") is not None:
            return _importlib.import_module(f"{package}.{name}")
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def dir_() -> list[str]:
        return sorted({*names, *(m.name for m in _pkgutil.iter_modules(list(path)))})

    return getattr_, dir_


_submodule, _dir = _submodules(__name__, __path__, ["__version__", *__all__])


def __getattr__(name: str):
    if name in __all__:
        from dgnet.inference import extractor as api

        return getattr(api, name)
    return _submodule(name)


def __dir__() -> list[str]:
    return _dir()
