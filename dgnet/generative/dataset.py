"""A generated re-id dataset from a trained DG-Net, for training other models (``python -m dgnet.generate``).

Each exported image is ``x_ab = G(s_a, f_b)`` for a random pair of training images of two different
identities: the structure (pose, box, background, camera conditions) of ``a`` and the appearance of ``b``.
It takes ``b``'s identity, as DG-Net's primary feature learning does, and ``a``'s camera, whose scene it
shows. Written as the train split of the ``folder`` layout (``dgnet.data.load_folder``):

    <out>/train/<pid>/<pid>_c<camera>_g<index>.jpg     pid: the dataset's original identity; camera from 1
    <out>/manifest.csv                                  path, pid, camid, structure_source, appearance_source

Identities keep their original numbers, so the set can sit next to the real training images: copy the real
set's query and gallery beside ``train/`` to train and test on it with ``data.dataset=folder``, or read the
images alone with ``load_folder(out, splits=("train", "train", "train"))``.
"""

from __future__ import annotations

import csv
import io
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from dgnet.data.streams import load_images
from dgnet.data.transforms import denormalize
from dgnet.fileio import write_text_atomic
from dgnet.models import eval_mode

MANIFEST_FIELDS = ("path", "pid", "camid", "structure_source", "appearance_source")


@dataclass(frozen=True)
class ExportRow:
    path: str  # relative to the export folder
    pid: int  # original identity of the appearance provider
    camid: int  # zero-based camera of the structure provider
    structure_source: str
    appearance_source: str


def draw_pairs(pids: np.ndarray, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` (structure, appearance) index pairs into ``pids``, uniform over images, identities always differing."""
    if count <= 0:
        raise ValueError(f"count={count}: expected a positive number of images")
    if len(np.unique(pids)) < 2:
        raise ValueError("the training split holds fewer than 2 identities: no cross-identity pair exists")
    rng = np.random.default_rng(seed)
    a = rng.integers(0, len(pids), count)
    b = rng.integers(0, len(pids), count)
    same = pids[a] == pids[b]
    while same.any():  # redraw the appearance provider of same-identity pairs
        b[same] = rng.integers(0, len(pids), int(same.sum()))
        same = pids[a] == pids[b]
    return a, b


@torch.no_grad()
def generate_dataset(model: torch.nn.Module, ds, size: tuple[int, int], out: str | Path, count: int, seed: int = 0,
                     device: torch.device | str = "cpu", backend: str = "torch", quality: int = 95,
                     batch_size: int = 32) -> list[ExportRow]:
    """Write ``count`` cross-identity images of ``model`` (a ``DGNet``, run in eval mode) from ``ds.train`` to ``out``.

    Images are read with the test transform at ``size`` = (H, W), the model's. Returns the manifest rows, in
    index order.
    """
    from PIL import Image

    out = Path(out)
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: expected an integer >= 1")
    if not 1 <= quality <= 100:
        raise ValueError(f"quality={quality}: expected a JPEG quality in 1..100")
    if (out / "manifest.csv").exists() or ((out / "train").is_dir() and any((out / "train").iterdir())):
        raise ValueError(f"{out} already holds a generated set; choose another folder or remove it")
    device = torch.device(device)
    train = ds.train
    original = {label: pid for pid, label in ds.pid_map.items()}
    a, b = draw_pairs(np.array([s.pid for s in train]), count, seed)
    rows = []
    digits = max(6, len(str(count - 1)))
    for start in range(0, count, batch_size):
        ia, ib = a[start : start + batch_size], b[start : start + batch_size]
        xa = load_images([train[i] for i in ia], size, backend, device)
        xb = load_images([train[i] for i in ib], size, backend, device)
        with eval_mode(model):  # train mode would take Ea's BatchNorm statistics from each batch
            _, s_a, _, _ = model.encode(xa)
            f_b, _, _, _ = model.encode(xb)
            generated = model.decode(s_a, f_b)
        images = (denormalize(generated) * 255).round().to(torch.uint8)
        for k, (i, j) in enumerate(zip(ia, ib, strict=True)):
            pid, camid = original.get(train[j].pid, train[j].pid), train[i].camid
            rel = Path("train") / f"{pid:04d}" / f"{pid:04d}_c{camid + 1}_g{start + k:0{digits}d}.jpg"
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[k].permute(1, 2, 0).numpy()).save(out / rel, format="JPEG", quality=quality)
            rows.append(ExportRow(rel.as_posix(), pid, camid, train[i].path, train[j].path))
    text = io.StringIO(newline="")
    w = csv.DictWriter(text, fieldnames=MANIFEST_FIELDS)
    w.writeheader()
    w.writerows(asdict(r) for r in rows)
    write_text_atomic(out / "manifest.csv", text.getvalue())  # last: its presence marks a complete export
    return rows
