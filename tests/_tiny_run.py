"""Shared by the training tests: a tiny synthetic set and the flags for a seconds-long run on it."""

from __future__ import annotations

from pathlib import Path

TINY_SET = {"synthetic_ids": 12, "synthetic_cams": 3, "synthetic_height": 64, "synthetic_width": 32}


def tiny_flags(root: Path, out: Path, *extra: str) -> list[str]:
    """``python -m dgnet.train`` flags for a 64x32, batch-2 run on the tiny set at ``root``.

    One thread and no loader workers: fast on a shared CPU and bitwise reproducible.
    """
    sets = {**{f"data.{k}": v for k, v in TINY_SET.items()},
            "data.height": 64, "data.width": 32, "data.pad": 2, "data.batch_size": 2, "data.teacher_batch_size": 8,
            "data.workers": 0, "train.threads": 1, "train.log_every": 1, "train.deterministic": True,
            "eval.batch_size": 32, "eval.k1": 4, "eval.k2": 2}
    flags = ["--data-root", str(root), "--output", str(out), "--loader", "torch", "--device", "cpu"]
    for k, v in sets.items():
        flags += ["--set", f"{k}={v}"]
    return flags + list(extra)


def make_tiny_set(root: Path) -> Path:
    from dgnet.data.synthetic import ensure_dataset

    return ensure_dataset(root, verbose=False, seed=0, ids=TINY_SET["synthetic_ids"], cams=TINY_SET["synthetic_cams"],
                          height=TINY_SET["synthetic_height"], width=TINY_SET["synthetic_width"])
