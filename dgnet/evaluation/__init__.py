"""Evaluation: ``rank`` (CMC and mAP from a distance matrix, torchreid's ``evaluate_rank`` signature) and
``protocol`` (the spec's test protocol: features, distances, re-ranking, metrics; what ``python -m dgnet.test``
runs)."""
