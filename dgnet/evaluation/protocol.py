"""The test protocol: features of images, then distances, re-ranking and Rank-k / mAP / mINP.

DG-Net's feature (spec: Test protocol): each head's 512-d post-BN bottleneck (dropout off),
L2-normalised; image and horizontal flip summed; each half re-normalised; the two concatenated. The
score of a query-gallery pair is ``primary . primary' + alpha * fine . fine'``: the reference weights
the fine-grained term by ``alpha`` by scaling the *query's* fine half alone. Here both sides' fine
halves are scaled by ``sqrt(alpha)``, which gives the same score and keeps queries and gallery in one
feature space, so re-ranking's gallery-gallery distances weight the two heads the same way. The
teacher's feature is its single 512-d feature, treated the same way. The distance is the negative
score (``dgnet.ops.pairwise_distance``'s ``neg_dot``). Every feature has norm ``sqrt(1 + alpha)`` (or 1),
so re-ranking's squared Euclidean distance is ``2 * norm^2 - 2 * score``: the same order.

Data flows one way and stays on the model's device: images -> features (:func:`extract`) -> distances ->
re-ranking -> evaluation (:func:`evaluate_features`), all through ``dgnet.ops`` and ``dgnet.evaluation.rank``
on the features' device; the only host copy is of the final metrics.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dgnet import ops
from dgnet.config import Config, EvalConfig, check_alpha
from dgnet.data import test_stream
from dgnet.distributed import all_gather_varlen, broadcast_state, world
from dgnet.evaluation.rank import evaluate
from dgnet.models import eval_mode

METRIC_KEYS = ("rank1", "rank5", "rank10", "mAP", "mAP_trapz", "mINP")
KINDS = ("dgnet", "teacher")
# ``--alphas``: this entry scores by the fine-grained head alone (the reference's third printed result).
FINE = "fine"
Alpha = float | str  # a weight >= 0, or FINE


def _head_features(model: torch.nn.Module, kind: str, x: torch.Tensor) -> list[torch.Tensor]:
    """The model's post-BN features as a list of ``(N, 512)`` float32 tensors (2 for DG-Net, 1 for the teacher)."""
    if kind == "dgnet":
        primary, fine = model.Ea.features(x)
        return [primary.float(), fine.float()]
    if kind == "teacher":
        return [model.features(x).float()]
    raise ValueError(f"kind={kind!r}: expected one of {KINDS}")


@torch.no_grad()
def embed(model: torch.nn.Module, kind: str, x: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """Test-protocol features of a batch ``x`` ``(N, 3, H, W)`` (normalised images, model's device).

    Returns ``(N, 1024)`` for ``kind="dgnet"`` (primary, then ``sqrt(alpha)`` * fine: the dot product of
    two such features is ``p . p' + alpha * f . f'``) or ``(N, 512)`` for ``kind="teacher"``; float32, on
    ``x``'s device. Call it with the model in eval mode.
    """
    check_alpha(alpha)
    heads = [F.normalize(f, dim=1) for f in _head_features(model, kind, x)]
    flipped = [F.normalize(f, dim=1) for f in _head_features(model, kind, x.flip(3))]
    parts = [F.normalize(a + b, dim=1) for a, b in zip(heads, flipped, strict=True)]
    if len(parts) == 2:
        parts[1] = parts[1] * math.sqrt(alpha)
    return torch.cat(parts, dim=1)


def parse_alphas(text: str) -> tuple[Alpha, ...]:
    """``"0,0.5,fine"`` -> ``(0.0, 0.5, "fine")``: weights of the fine-grained head (``--alphas``), ``fine`` for the
    fine-grained head alone. The reference prints ``0``, ``0.5`` and the fine head alone.

    Raises:
        ValueError: naming the entry and what is expected.
    """
    out: list[Alpha] = []
    for item in (t.strip() for t in text.split(",")):
        if item == FINE:
            out.append(FINE)
            continue
        try:
            alpha = float(item)
        except ValueError:
            raise ValueError(f"--alphas {text!r}: {item!r} is neither a weight nor {FINE!r}") from None
        if not (math.isfinite(alpha) and alpha >= 0):
            raise ValueError(f"--alphas {text!r}: {item!r}: expected a finite weight >= 0 or {FINE!r}")
        out.append(alpha)
    if len(set(out)) != len(out):
        raise ValueError(f"--alphas {text!r}: an entry is repeated")
    return tuple(out)


def alpha_row(name: str, alpha: Alpha) -> str:
    """The results row of model ``name`` scored with ``alpha``: ``dgnet (alpha 0.5)``, ``dgnet (fine head)``."""
    return f"{name} (fine head)" if alpha == FINE else f"{name} (alpha {alpha:g})"


def weigh_heads(features: torch.Tensor, alpha: Alpha) -> torch.Tensor:
    """Test-protocol features for ``alpha`` from DG-Net features with both heads at weight 1 (:func:`embed` or
    :func:`extract` with ``alpha=1``; ``(N, 2D)`` float, each half unit-norm): ``[p, sqrt(alpha) f]`` ``(N, 2D)``,
    or for :data:`FINE` the fine-grained half alone ``(N, D)`` (score ``f . f'``: the reference zeroes the query's
    primary half). Same device and dtype; no network runs, so every alpha costs one feature pass in all."""
    half = features.shape[1] // 2
    if alpha == FINE:
        return features[:, half:]
    check_alpha(alpha)
    return torch.cat([features[:, :half], features[:, half:] * math.sqrt(alpha)], dim=1)


@torch.no_grad()
def extract(model: torch.nn.Module, kind: str, samples: list, cfg: Config, backend: str, device: torch.device,
            alpha: float | None = None) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Features of every sample, in sample order: ``(features (N, D) float32 on device, pids (N,), camids (N,))``.

    Under torchrun (``dgnet.distributed``) rank r embeds samples ``r, r + W, ...`` and every rank receives all
    features, in sample order (the same values as one process: the model is in eval mode, so a sample's
    feature does not depend on the rest of its batch).
    """
    rank, size = world()
    split = size > 1 and len(samples) >= size
    mine = list(range(rank, len(samples), size)) if split else list(range(len(samples)))
    every, samples = samples, [samples[i] for i in mine]
    alpha = cfg.eval.alpha if alpha is None else alpha
    feats: torch.Tensor | None = None
    seen = torch.zeros(len(samples), dtype=torch.bool, device=device)
    with eval_mode(model):
        for batch in test_stream(samples, backend, batch_size=cfg.eval.batch_size,
                                 size=(cfg.data.height, cfg.data.width), device=device,
                                 workers=cfg.data.workers):
            f = embed(model, kind, batch["image"].to(device), alpha)
            idx = torch.as_tensor(batch["index"]).long().to(device)
            if feats is None:
                feats = torch.zeros(len(samples), f.shape[1], device=device)
            feats[idx] = f
            seen[idx] = True
    if feats is None or not bool(seen.all()):
        missing = int((~seen).sum())
        raise RuntimeError(f"test pipeline returned no features for {missing} of {len(samples)} images")
    if split:
        # NCCL gathers device tensors; gloo CPU ones
        comm = device if torch.distributed.get_backend() == "nccl" else torch.device("cpu")
        gathered = all_gather_varlen(feats.to(comm)).to(device)
        order = all_gather_varlen(torch.tensor(mine, dtype=torch.int64, device=comm)).to(device)
        feats = torch.zeros(len(every), feats.shape[1], device=device)
        feats[order] = gathered
    samples = every
    pids = np.array([s.pid for s in samples], dtype=np.int64)
    camids = np.array([s.camid for s in samples], dtype=np.int64)
    return feats, pids, camids


def rank_metrics(distmat: torch.Tensor, qp, gp, qc, gc) -> dict[str, float]:
    """Rank-1/5/10, mAP, mAP (devkit) and mINP of ``distmat`` ``[Q, G]`` (on any device), as fractions."""
    r = evaluate(distmat, qp, gp, qc, gc)
    cmc = np.asarray(r.cmc, dtype=np.float64)
    return {"rank1": float(cmc[0]), "rank5": float(cmc[min(4, len(cmc) - 1)]),
            "rank10": float(cmc[min(9, len(cmc) - 1)]), "mAP": float(r.mAP), "mAP_trapz": float(r.mAP_trapz),
            "mINP": float(r.mINP)}


def evaluate_features(qf: torch.Tensor, gf: torch.Tensor, qp, gp, qc, gc, eval_cfg: EvalConfig,
                      rerank: bool = True) -> dict[str, dict[str, float]]:
    """``{"plain": metrics, "rerank": metrics}`` (the second only with ``rerank``); metrics in [0, 1].

    ``qf`` ``(Q, D)`` and ``gf`` ``(G, D)`` are test-protocol features on one device; distances, re-ranking
    and the evaluation run on that device. ``eval_cfg`` gives re-ranking's ``k1``, ``k2``, ``lambda_value``.
    """
    dist = ops.pairwise_distance(qf, gf, metric="neg_dot")  # the spec's score is the dot product
    out = {"plain": rank_metrics(dist, qp, gp, qc, gc)}
    if rerank:
        e = eval_cfg
        rdist = ops.re_ranking_features(qf, gf, k1=e.k1, k2=e.k2, lambda_value=e.lambda_value, metric="euclidean")
        out["rerank"] = rank_metrics(rdist, qp, gp, qc, gc)
    return out


def evaluate_models(models: dict[str, torch.nn.Module], ds, cfg: Config, device: torch.device, backend: str,
                    rerank: bool | None = None, alpha: float | None = None,
                    alphas: tuple[Alpha, ...] | None = None) -> dict[str, Any]:
    """Evaluate each of ``{"teacher": ..., "dgnet": ...}`` on ``ds``'s query/gallery.

    Returns ``{name: {"plain": {rank1, rank5, rank10, mAP, mAP_trapz, mINP}, "rerank": {...}}}``. With ``alphas``
    (:func:`parse_alphas`) DG-Net has one row per entry, named by :func:`alpha_row` (``dgnet (alpha 0.5)``), all
    scored from one feature pass (:func:`weigh_heads`); otherwise one ``dgnet`` row at ``alpha`` (default
    ``eval.alpha``).
    Under torchrun every rank must call it: each first takes rank 0's parameters and buffers (the ranks'
    BatchNorm running statistics differ after training without ``train.sync_bn``; rank 0's are saved), then
    extracts its share of the features, and rank 0 alone evaluates (the other ranks return ``{}``).
    """

    rerank = cfg.eval.rerank if rerank is None else rerank
    results = {}
    for name, model in models.items():
        broadcast_state(model)
        per_alpha = bool(alphas) and name == "dgnet"
        qf, qp, qc = extract(model, name, ds.query, cfg, backend, device, 1.0 if per_alpha else alpha)
        gf, gp, gc = extract(model, name, ds.gallery, cfg, backend, device, 1.0 if per_alpha else alpha)
        if world()[0] != 0:
            continue
        if not per_alpha:
            results[name] = evaluate_features(qf, gf, qp, gp, qc, gc, cfg.eval, rerank=rerank)
            continue
        for a in alphas:
            results[alpha_row(name, a)] = evaluate_features(weigh_heads(qf, a), weigh_heads(gf, a), qp, gp, qc, gc,
                                                            cfg.eval, rerank=rerank)
    return results


def format_table(results: dict[str, Any]) -> str:
    """A Markdown table (percentages) of :func:`evaluate_models`'s output.

    "mAP (devkit)" is the Market-1501 devkit's trapezoidal AP, the one DG-Net's published mAP uses
    (``dgnet.evaluation.rank``). The reference's published Rank-1 / mAP are the row ``dgnet (alpha 0.5)`` (or
    ``dgnet`` at the default alpha 0.5) without re-ranking: Rank-1 and mAP (devkit).
    """
    lines = ["| model | re-ranking | Rank-1 | Rank-5 | Rank-10 | mAP | mAP (devkit) | mINP |",
             "|---|---|---|---|---|---|---|---|"]
    for name, by_mode in results.items():
        for mode, m in by_mode.items():
            vals = " | ".join(f"{100 * m[k]:.1f}" for k in METRIC_KEYS)
            lines.append(f"| {name} | {'yes' if mode == 'rerank' else 'no'} | {vals} |")
    return "\n".join(lines)
