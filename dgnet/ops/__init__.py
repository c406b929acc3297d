"""The Python front of every dgnet fast op: reference, dispatch, fake and autograd registration."""

from dgnet.ops._lib import extension_available, fold_upsample_enabled, fused_enabled, set_fold_upsample, set_fused
from dgnet.ops.adain import adain, adain_reference
from dgnet.ops.distance import METRICS, pairwise_distance, pairwise_distance_reference
from dgnet.ops.evaluation import evaluate_queries as evaluate_queries
from dgnet.ops.rerank import re_ranking, re_ranking_features, re_ranking_reference

__all__ = [
    "METRICS",
    "pairwise_distance",
    "pairwise_distance_reference",
    "re_ranking",
    "re_ranking_features",
    "re_ranking_reference",
    "adain",
    "adain_reference",
    "extension_available",
    "fold_upsample_enabled",
    "fused_enabled",
    "set_fold_upsample",
    "set_fused",
]
