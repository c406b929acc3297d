"""Training: ``loop`` (both stages, checkpoints, logs; what ``python -m dgnet.train`` runs), ``step`` (one
iteration of the teacher or of DG-Net), ``logger`` (the run's log and image grids)."""
