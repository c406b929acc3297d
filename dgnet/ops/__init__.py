"""The Python front of every dgnet fast op: reference, dispatch, fake and autograd registration.

One base name per op across ``csrc/``, ``dgnet/ops/``, ``kernels/``, ``tests/`` and ``benchmarks/``: ``adain``,
``distance``, ``rerank``, ``evaluation`` (the op under ``dgnet.evaluation.rank``), ``upsample_conv5`` and
``grouped_mlp``. Every fast path has a plain twin (``*_reference``) that its tests hold it to.
"""

from dgnet.ops._lib import extension_available
from dgnet.ops.adain import adain, adain_reference
from dgnet.ops.distance import METRICS, pairwise_distance, pairwise_distance_reference
from dgnet.ops.evaluation import evaluate_queries
from dgnet.ops.grouped_mlp import grouped_mlp, grouped_mlp_reference
from dgnet.ops.rerank import re_ranking, re_ranking_features, re_ranking_reference
from dgnet.ops.upsample_conv5 import upsample_conv5, upsample_conv5_reference

__all__ = [
    "METRICS",
    "adain",
    "adain_reference",
    "evaluate_queries",
    "extension_available",
    "grouped_mlp",
    "grouped_mlp_reference",
    "pairwise_distance",
    "pairwise_distance_reference",
    "re_ranking",
    "re_ranking_features",
    "re_ranking_reference",
    "upsample_conv5",
    "upsample_conv5_reference",
]
