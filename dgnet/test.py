"""``python -m dgnet.test``: features per the spec's test protocol, then Rank-1/5/10, mAP (both definitions) and mINP.

DG-Net's feature (spec: Test protocol): each head's 512-d post-BN bottleneck (dropout off),
L2-normalised; image and horizontal flip summed; each half re-normalised; the two concatenated. The
score of a query-gallery pair is ``primary . primary' + alpha * fine . fine'``: the reference weights
the fine-grained term by ``alpha`` by scaling the *query's* fine half alone. Here both sides' fine
halves are scaled by ``sqrt(alpha)``, which gives the same score and keeps queries and gallery in one
feature space, so re-ranking's gallery-gallery distances weight the two heads the same way. The
teacher's feature is its single 512-d feature, treated the same way. The distance is the negative
score. Every feature has norm ``sqrt(1 + alpha)`` (or 1), so re-ranking's squared Euclidean distance
(``dgnet.ops``) is ``2 * norm^2 - 2 * score``: the same order as ``2 - 2 * score``. k-reciprocal
re-ranking and the metrics run through the extension ops (``dgnet.ops``, ``dgnet.evaluation``).
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dgnet.config import Config, check_alpha
from dgnet.logging_utils import write_results

METRIC_KEYS = ("rank1", "rank5", "rank10", "mAP", "mAP_trapz", "mINP")


def _head_features(model: torch.nn.Module, kind: str, x: torch.Tensor) -> list[torch.Tensor]:
    """The model's post-BN features as a list of ``(N, 512)`` float32 tensors (2 for DG-Net, 1 for the teacher)."""
    if kind == "dgnet":
        primary, fine = model.Ea.features(x)
        return [primary.float(), fine.float()]
    return [model.features(x).float()]


@torch.no_grad()
def embed(model: torch.nn.Module, kind: str, x: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """Test-protocol features of a batch ``x`` ``(N, 3, H, W)`` (normalised images, model's device).

    Returns ``(N, 1024)`` for ``kind="dgnet"`` (primary, then ``sqrt(alpha)`` * fine: the dot product of
    two such features is ``p . p' + alpha * f . f'``) or ``(N, 512)`` for ``kind="teacher"``; float32, on
    ``x``'s device.
    """
    check_alpha(alpha)
    heads = [F.normalize(f, dim=1) for f in _head_features(model, kind, x)]
    flipped = [F.normalize(f, dim=1) for f in _head_features(model, kind, x.flip(3))]
    parts = [F.normalize(a + b, dim=1) for a, b in zip(heads, flipped, strict=True)]
    if len(parts) == 2:
        parts[1] = parts[1] * math.sqrt(alpha)
    return torch.cat(parts, dim=1)


@torch.no_grad()
def extract(model: torch.nn.Module, kind: str, samples: list, cfg: Config, backend: str, device: torch.device,
            alpha: float | None = None) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Features of every sample, in sample order: ``(features (N, D) float32 CPU, pids (N,), camids (N,))``.

    Under torchrun (``dgnet.distributed``) rank r embeds samples ``r, r + W, ...`` and every rank receives all
    features, in sample order (the same values as one process: the model is in eval mode, so a sample's
    feature does not depend on the rest of its batch).
    """
    from dgnet.data import test_stream
    from dgnet.distributed import all_gather_varlen, world

    rank, size = world()
    split = size > 1 and len(samples) >= size
    mine = list(range(rank, len(samples), size)) if split else list(range(len(samples)))
    every, samples = samples, [samples[i] for i in mine]
    from dgnet.models import eval_mode

    alpha = cfg.eval.alpha if alpha is None else alpha
    feats: torch.Tensor | None = None
    seen = torch.zeros(len(samples), dtype=torch.bool)
    with eval_mode(model):
        for batch in test_stream(samples, backend, batch_size=cfg.eval.batch_size,
                                 size=(cfg.data.height, cfg.data.width), device=device,
                                 workers=cfg.data.workers):
            f = embed(model, kind, batch["image"].to(device), alpha).cpu()
            idx = torch.as_tensor(batch["index"]).long().cpu()
            if feats is None:
                feats = torch.zeros(len(samples), f.shape[1])
            feats[idx] = f
            seen[idx] = True
    if feats is None or not bool(seen.all()):
        missing = int((~seen).sum())
        raise RuntimeError(f"test pipeline returned no features for {missing} of {len(samples)} images")
    if split:
        # NCCL gathers device tensors; gloo CPU ones
        comm = device if torch.distributed.get_backend() == "nccl" else torch.device("cpu")
        gathered = all_gather_varlen(feats.to(comm)).cpu()
        order = all_gather_varlen(torch.tensor(mine, dtype=torch.int64, device=comm)).cpu()
        feats = torch.zeros(len(every), feats.shape[1])
        feats[order] = gathered
    samples = every
    pids = np.array([s.pid for s in samples], dtype=np.int64)
    camids = np.array([s.camid for s in samples], dtype=np.int64)
    return feats, pids, camids


def _metrics(distmat: torch.Tensor, qp, gp, qc, gc) -> dict[str, float]:
    from dgnet.evaluation import evaluate

    r = evaluate(distmat, qp, gp, qc, gc)
    cmc = np.asarray(r.cmc, dtype=np.float64)
    return {"rank1": float(cmc[0]), "rank5": float(cmc[min(4, len(cmc) - 1)]),
            "rank10": float(cmc[min(9, len(cmc) - 1)]), "mAP": float(r.mAP), "mAP_trapz": float(r.mAP_trapz),
            "mINP": float(r.mINP)}


def evaluate_features(qf: torch.Tensor, gf: torch.Tensor, qp, gp, qc, gc, cfg: Config,
                      rerank: bool = True) -> dict[str, dict[str, float]]:
    """``{"plain": metrics, "rerank": metrics}`` (the second only with ``rerank``); metrics in [0, 1]."""
    from dgnet import ops

    qp, gp, qc, gc = (torch.as_tensor(np.asarray(a)) for a in (qp, gp, qc, gc))
    dist = -(qf.float() @ gf.float().T)  # the spec's score is the dot product; distance = negative score
    out = {"plain": _metrics(dist, qp, gp, qc, gc)}
    if rerank:
        e = cfg.eval
        rdist = ops.re_ranking_features(qf, gf, k1=e.k1, k2=e.k2, lambda_value=e.lambda_value, metric="euclidean")
        out["rerank"] = _metrics(rdist, qp, gp, qc, gc)
    return out


def evaluate_models(models: dict[str, torch.nn.Module], ds, cfg: Config, device: torch.device, backend: str,
                    rerank: bool | None = None, alpha: float | None = None) -> dict[str, Any]:
    """Evaluate each of ``{"teacher": ..., "dgnet": ...}`` on ``ds``'s query/gallery.

    Returns ``{name: {"plain": {rank1, rank5, rank10, mAP, mAP_trapz, mINP}, "rerank": {...}}}``.
    Under torchrun every rank must call it: each first takes rank 0's parameters and buffers (the ranks'
    BatchNorm running statistics differ after training without ``train.sync_bn``; rank 0's are saved), then
    extracts its share of the features, and rank 0 alone evaluates (the other ranks return ``{}``).
    """
    from dgnet.distributed import broadcast_state, world

    rerank = cfg.eval.rerank if rerank is None else rerank
    results = {}
    for name, model in models.items():
        broadcast_state(model)
        qf, qp, qc = extract(model, name, ds.query, cfg, backend, device, alpha)
        gf, gp, gc = extract(model, name, ds.gallery, cfg, backend, device, alpha)
        if world()[0] == 0:
            results[name] = evaluate_features(qf, gf, qp, gp, qc, gc, cfg, rerank=rerank)
    return results


def format_table(results: dict[str, Any]) -> str:
    """A Markdown table (percentages) of ``evaluate_models``'s output.

    "mAP (devkit)" is the Market-1501 devkit's trapezoidal AP, the one DG-Net's published mAP uses
    (``dgnet.evaluation``).
    """
    lines = ["| model | re-ranking | Rank-1 | Rank-5 | Rank-10 | mAP | mAP (devkit) | mINP |",
             "|---|---|---|---|---|---|---|---|"]
    for name, by_mode in results.items():
        for mode, m in by_mode.items():
            vals = " | ".join(f"{100 * m[k]:.1f}" for k in METRIC_KEYS)
            lines.append(f"| {name} | {'yes' if mode == 'rerank' else 'no'} | {vals} |")
    return "\n".join(lines)


def load_models(ckpt: dict, cfg: Config, device: torch.device, which: str = "all") -> dict[str, torch.nn.Module]:
    """Rebuild the models a checkpoint holds (``teacher`` and/or ``dgnet``), in eval mode on ``device``."""
    from dgnet.checkpoint import model_config_of
    from dgnet.models import DGNet, ReidBaseline

    build = {"teacher": ReidBaseline, "dgnet": DGNet}
    models = {}
    for name, state in ckpt["models"].items():
        if name not in build or which not in ("all", name):
            continue
        m = build[name](model_config_of(ckpt, name), ckpt["num_ids"]).to(device)
        m.load_state_dict(state)
        models[name] = m.eval()
    if not models:
        raise ValueError(f"the checkpoint holds no {which} model (it has {sorted(ckpt['models'])})")
    return models


def open_run(
    checkpoint: str, data_root: str | None, loader: str | None, device: str
) -> tuple[dict, Config, torch.device]:
    """Load a checkpoint and the config it was trained with, with the data root, loader and device a
    command line overrides: what ``dgnet.test`` and ``dgnet.visualize`` start from."""
    from dgnet.checkpoint import load_checkpoint
    from dgnet.config import config_from_dict
    from dgnet.train import resolve_device

    ckpt = load_checkpoint(checkpoint)
    cfg = config_from_dict(ckpt["config"])
    if data_root:
        cfg.data.root = data_root
    if loader:
        cfg.data.loader = loader
    return ckpt, cfg, resolve_device(device)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dgnet.test", description="Evaluate a dgnet checkpoint.")
    p.add_argument("--checkpoint", required=True, help="teacher.pt, dgnet.pt or any checkpoint of a run")
    p.add_argument("--data-root", help="dataset folder (default: the one the checkpoint was trained on)")
    p.add_argument("--rerank", action=argparse.BooleanOptionalAction, default=None,
                   help="also evaluate with k-reciprocal re-ranking (default: the run's eval.rerank)")
    p.add_argument("--alpha", type=float, help="weight of the fine-grained half (default: eval.alpha, 0.5)")
    p.add_argument("--loader", choices=("auto", "dali", "torch"))
    p.add_argument("--device", default="auto")
    p.add_argument("--model", choices=("all", "teacher", "dgnet"), default="all")
    p.add_argument("--output", help="JSON file for the results (default: next to the checkpoint)")
    args = p.parse_args(argv)
    from dgnet.distributed import destroy, init_from_env

    joined = not torch.distributed.is_initialized()
    try:
        from dgnet.data import resolve_backend
        from dgnet.train import prepare_dataset

        ckpt, cfg, device = open_run(args.checkpoint, args.data_root, args.loader, args.device)
        ctx = init_from_env(device)  # torchrun: features split across ranks, rank 0 evaluates
        rank, device = ctx.rank, ctx.device
        ds = prepare_dataset(cfg, verbose=rank == 0)
        models = load_models(ckpt, cfg, device, args.model)
        results = evaluate_models(models, ds, cfg, device, resolve_backend(cfg.data.loader, device),
                                  rerank=args.rerank, alpha=args.alpha)
    except (ValueError, FileNotFoundError) as exc:
        print(f"dgnet.test: error: {exc}", file=sys.stderr)
        return 2
    finally:
        if joined:
            destroy()
    if rank != 0:
        return 0
    print(format_table(results))
    write_results(results, args.checkpoint, args.output, ".results.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
