"""Training-time output: progress bar, JSON-lines metrics, TensorBoard events and PNG image grids.

Only one process writes (rank 0 under torch.distributed): every other rank builds a ``RunLogger``
with ``enabled=False``, which accepts the same calls and does nothing.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import torch

from dgnet.fileio import write_text_atomic
from dgnet.generative.figures import image_grid, save_png


class RunLogger:
    """One stage's logs under ``folder``: ``metrics.jsonl``, ``tb/<stage>/`` events, ``images/<stage>_<it>.png``.

    Args:
        folder: the run's output folder.
        stage: ``"teacher"`` or ``"dgnet"``; prefixes TensorBoard tags and image names.
        total: the stage's last iteration (for the progress bar).
        start: iterations already done (after a resume); metrics lines of this stage beyond it,
            left by an interrupted run, are dropped so the file reads as one uninterrupted run.
        enabled: ``False`` on non-zero ranks: every call is a no-op.
        progress: show the tqdm bar (on stderr).
    """

    def __init__(
        self,
        folder: str | Path,
        stage: str,
        total: int,
        start: int = 0,
        enabled: bool = True,
        progress: bool = True,
        tensorboard: bool = True,
    ) -> None:
        self.enabled = enabled
        self.stage = stage
        self.folder = Path(folder)
        self._bar = None
        self._tb = None
        self._t0 = time.perf_counter()
        self._it0 = start
        if not enabled:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.folder / "metrics.jsonl"
        self._truncate(start)
        self._fh = self.metrics_path.open("a")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                # One folder per stage: a resumed stage purges its folder's events from ``start`` on, which
                # in a shared folder would hide the other stage's curves past that step too.
                self._tb = SummaryWriter(str(self.folder / "tb" / stage), purge_step=start if start else None)
            except ImportError:  # tensorboard is a pinned dependency; keep training if a user removed it
                print("dgnet: tensorboard is not installed, so no event files are written", file=sys.stderr)
        if progress:
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=start, desc=stage, dynamic_ncols=True, leave=True)

    def _truncate(self, start: int) -> None:
        if not self.metrics_path.exists():
            return
        kept = []
        for line in self.metrics_path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line torn by a crash
            if rec.get("stage") == self.stage and rec.get("iteration", 0) > start:
                continue
            kept.append(line)
        write_text_atomic(self.metrics_path, "".join(k + "\n" for k in kept))

    def step(self, n: int = 1, postfix: dict[str, float] | None = None) -> None:
        """Advance the progress bar; ``postfix`` losses are shown with the iteration rate."""
        if self._bar is None:
            return
        self._bar.update(n)
        if postfix:
            self._bar.set_postfix({k: f"{v:.3g}" for k, v in postfix.items()}, refresh=False)

    def its_per_second(self, iteration: int) -> float:
        dt = time.perf_counter() - self._t0
        return (iteration - self._it0) / dt if dt > 0 else 0.0

    def scalars(self, iteration: int, values: dict[str, float]) -> None:
        """One metrics line and one TensorBoard scalar per value (tag ``<stage>/<name>``)."""
        if not self.enabled:
            return
        clean = {k: (float(v) if math.isfinite(float(v)) else str(float(v))) for k, v in values.items()}
        rec = {"stage": self.stage, "iteration": iteration, "time": time.time(), **clean}
        self._fh.write(json.dumps(rec) + "\n")
        self._fh.flush()
        if self._tb is not None:
            for k, v in values.items():
                self._tb.add_scalar(f"{self.stage}/{k}", float(v), iteration)

    def grid(self, iteration: int, rows: list[torch.Tensor], name: str = "samples") -> Path | None:
        """Save ``rows`` (see ``image_grid``) as ``images/<stage>_<name>_<iteration>.png`` and to TensorBoard."""
        if not self.enabled:
            return None
        g = image_grid(rows)
        path = save_png(g, self.folder / "images" / f"{self.stage}_{name}_{iteration:08d}.png")
        if self._tb is not None:
            self._tb.add_image(f"{self.stage}/{name}", g, iteration)
        return path

    def write(self, msg: str) -> None:
        """Print a line without breaking the progress bar."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(msg)
        else:
            print(msg, flush=True)

    def close(self) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()
        self._fh.close()
