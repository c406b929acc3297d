"""Dataset layouts, the synthetic dataset, samplers, and the DALI and PyTorch input pipelines.

- :func:`load_dataset` reads Market-1501, DukeMTMC-reID, MSMT17, a plain folder tree or the synthetic set.
- :mod:`dgnet.data.synthetic` draws the embedded synthetic pedestrian dataset (``ensure_dataset``).
- :func:`train_stream` / :func:`test_stream` feed the model from DALI or a torch DataLoader.
- :mod:`dgnet.data.check` finds corrupt images before training (``preflight``).

The stream names are imported lazily: ``python -m dgnet.data.check`` and ``python -m dgnet.data.synthetic``
then start without importing torch.
"""

from dgnet import _submodules
from dgnet.data.layouts import ReidDataset, Sample, load_dataset, relabel, singleton_identities

_STREAMS = ("TestStream", "TrainStream", "dali_status", "drop_singletons", "resolve_backend", "test_stream",
            "train_stream")

__all__ = ["ReidDataset", "Sample", "load_dataset", "relabel", "singleton_identities", *_STREAMS]


_submodule, _dir = _submodules(__name__, __path__, [*globals(), *__all__])


def __getattr__(name: str):
    if name in _STREAMS:
        from dgnet.data import streams

        return getattr(streams, name)
    return _submodule(name)  # dgnet.data.check, dgnet.data.synthetic, ...: imported on first access


def __dir__() -> list[str]:
    return _dir()
