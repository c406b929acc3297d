"""The generative side: ``figures`` (the paper's image figures), ``dataset`` (generated training sets),
``disentanglement`` (how well appearance and structure are separated)."""

from dgnet import _submodules

__getattr__, __dir__ = _submodules(__name__, __path__)
