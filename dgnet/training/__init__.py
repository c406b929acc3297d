"""Training: ``loop`` (both stages, checkpoints, logs; what ``python -m dgnet.train`` runs), ``step`` (one
iteration of the teacher or of DG-Net), ``logger`` (the run's log and image grids)."""

from dgnet import _submodules

__getattr__, __dir__ = _submodules(__name__, __path__)
