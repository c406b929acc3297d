"""Disentanglement on the synthetic set, measured with its true factors (``python -m dgnet.quality``).

Two questions about a cross-identity image ``x_ab = G(s_a, f_b)`` (structure of ``a``, appearance of ``b``;
the task's naming, i.e. the spec's ``x_ab`` with the roles written out):

1. **Does it take b's appearance?** (:func:`appearance_following`) The frozen teacher embeds ``x_ab`` (the
   test protocol's feature, image + flip) and we take its nearest identity: the **nearest class mean** of the
   teacher's features of the real *gallery* images of the test split (cosine; distractors ``0`` and junk
   ``-1`` excluded). Pairs are drawn among the *query* images, which are never part of those means, so a
   real image is not matched against itself. Reported: the share whose nearest identity is ``b``
   (appearance followed), the share that is ``a`` (structure leaked a's identity), and chance (1 / number of
   identities). The same numbers for the real ``x_b`` give the teacher's own ceiling.

2. **Does it keep a's pose and silhouette?** (:func:`structure_kept`) The synthetic generator can draw
   image ``a``'s scene without the person (same camera, window, occluder, blur, illumination, noise seed and
   JPEG quality: :func:`dgnet.data.synthetic.render` with no identity), and the true silhouette of ``a``
   (pixels where the clean drawing with and without the person differ; occluders hide the parts they cover).
   In DG-Net the background belongs to the structure code, so ``x_ab`` should show a's background with a
   person, dressed as ``b``, standing exactly where a stands. The per-pixel RGB distance
   ``d = ||x_ab - background_a||`` should therefore be large on a's silhouette and small elsewhere,
   whatever colours b wears. We score:

   - **silhouette AUC**: the ROC AUC of ``d`` as a detector of a's silhouette pixels (the probability that a
     random silhouette pixel has a larger ``d`` than a random background pixel, ties count half).
     Threshold-free; 1 = the person is exactly a's shape on a's background, 0.5 = ``d`` says nothing about
     a's silhouette (e.g. a different scene everywhere);
   - **silhouette IoU**: IoU of ``d > tau`` with a's silhouette (``tau`` = 0.1 of the RGB range; a fixed
     threshold is easy to read but rewards a clean background, so AUC is the primary figure).

   The real ``x_a`` gives the ceiling of both (not exactly 1: JPEG blocks and blur spill across the edge)
   and the real ``x_b`` (another person on another scene) their floor. Pose is measured through the
   silhouette: limbs, stride, lean, view and position all change it. The structure code of the model's own
   Es is deliberately not used: Es is trained to reproduce exactly that, so it would grade itself.

Reference rows printed with DG-Net's: the real ``x_b`` and ``x_a`` (above), and the **ideal swap** rendered by
the synthetic generator itself (:func:`render_ideal`: b's identity drawn with a's pose, view, scene, occluder
and camera). The ideal swap is what a perfect DG-Net would produce, so its scores are the honest target:
its appearance share is the teacher's ability to recognise b under a's camera and pose, not 100 %.

A "generator" here is any callable ``(x_a, x_b) -> x_ab`` on normalised batches, so the measures apply to
DG-Net (:func:`swap_generator`), to its reconstruction, and to stubs in the tests (``lambda a, b: b`` follows
appearance perfectly and keeps no structure; ``lambda a, b: a`` the reverse).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from dgnet.checkpoints.format import load_checkpoint
from dgnet.checkpoints.runs import build_model, open_run
from dgnet.data.decoding import rgb8
from dgnet.data.synthetic import load_manifest, render, render_person
from dgnet.data.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize, resize_uint8
from dgnet.evaluation.protocol import embed
from dgnet.models.structure import gray
from dgnet.runtime import set_threads

Generator = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
IOU_TAU = 0.1  # RGB distance in [0, 1] units (sqrt(3) is the maximum); camera noise std is <= 0.04 per channel
MASK_DIFF = 10  # a pixel of the clean drawing belongs to the person when it moves by more than this (0..255)


@dataclass
class Probe:
    """Real test images with what the measures need, all at the model's size ``(H, W)`` on the CPU.

    - ``images``: ``(N, 3, H, W)`` float32, ImageNet-normalised (the model's input);
    - ``pids``: ``(N,)`` int64 identities;
    - ``masks``: ``(N, H, W)`` bool true silhouettes, or ``None`` when not computed;
    - ``backgrounds``: ``(N, 3, H, W)`` float32 RGB in [0, 1]: each image's scene without the person, or ``None``.
    """

    images: torch.Tensor
    pids: torch.Tensor
    masks: torch.Tensor | None = None
    backgrounds: torch.Tensor | None = None


def _decode(data: str | bytes) -> torch.Tensor:
    """A file (read as the input pipelines read it, ``dgnet.data.decoding.rgb8``) or the bytes of an image the
    synthetic generator rendered, as ``(3, H, W)`` uint8."""
    if isinstance(data, bytes):
        with Image.open(io.BytesIO(data)) as im:
            a = np.asarray(im.convert("RGB"), dtype=np.uint8)
    else:
        a = rgb8(data)
    return torch.from_numpy(a.copy()).permute(2, 0, 1)


def to_rgb01(x: torch.Tensor) -> torch.Tensor:
    """Normalised images ``(N, 3, H, W)`` -> RGB in [0, 1] (clamped), float32, same device."""
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return (x.float() * std + mean).clamp_(0, 1)


def load_probe(samples: Sequence, size: tuple[int, int], manifest: dict | None = None) -> Probe:
    """Read ``samples`` (``Sample`` with ``path``, ``pid``) at ``size`` = (H, W), resized as the test pipeline does
    (bicubic, antialiased). With the synthetic ``manifest`` (:func:`dgnet.data.synthetic.load_manifest`) each
    image's true silhouette and person-free scene are rendered too (at the set's size, then resized)."""

    if not samples:
        raise ValueError("load_probe: samples is empty; expected at least one image")
    imgs, masks, bgs = [], [], []
    for s in samples:
        raw = _decode(s.path)
        imgs.append(resize_uint8(raw, size))
        if manifest is None:
            continue
        name = Path(s.path).name
        if name not in manifest:
            raise ValueError(f"load_probe: {name} is not in the synthetic manifest; expected an image of that set")
        rec = manifest[name]
        if rec["identity"] is None:
            raise ValueError(f"load_probe: {name} has no identity (pid {rec['pid']}); expected a person image")
        h, w = raw.shape[-2:]
        bgs.append(resize_uint8(_decode(render(None, rec["factors"], rec["camera"], h, w)), size))
        on = np.asarray(render_person(rec["identity"], rec["factors"], rec["camera"], h, w, True), np.int16)
        off = np.asarray(render_person(rec["identity"], rec["factors"], rec["camera"], h, w, False), np.int16)
        m = torch.from_numpy((np.abs(on - off).max(axis=2) > MASK_DIFF).astype(np.float32))
        # area-average down to the model's size; a pixel is person when at least half of it is
        masks.append(F.interpolate(m[None, None], size=size, mode="area")[0, 0] >= 0.5)
    return Probe(
        images=normalize(torch.stack(imgs)),
        pids=torch.tensor([s.pid for s in samples], dtype=torch.int64),
        masks=torch.stack(masks) if masks else None,
        backgrounds=torch.stack(bgs).float() / 255 if bgs else None,
    )


def draw_pairs(pids: torch.Tensor, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` index pairs ``(ia, ib)`` (``(n,)`` int64 each) with ``pids[ia] != pids[ib]``, drawn uniformly with a
    seeded generator (pairs may repeat when ``n`` exceeds their number)."""
    pids = torch.as_tensor(pids)
    if n < 1:
        raise ValueError(f"pairs={n}: expected a positive number of pairs")
    if len(torch.unique(pids)) < 2:
        raise ValueError(f"draw_pairs: the images hold {len(torch.unique(pids))} identity; expected at least 2")
    g = torch.Generator().manual_seed(seed)
    ia, ib = [], []
    while len(ia) < n:
        a = torch.randint(len(pids), (2 * n,), generator=g)
        b = torch.randint(len(pids), (2 * n,), generator=g)
        ok = pids[a] != pids[b]
        ia += a[ok].tolist()
        ib += b[ok].tolist()
    return torch.tensor(ia[:n]), torch.tensor(ib[:n])


def swap_generator(model: torch.nn.Module) -> Generator:
    """DG-Net's swap as a generator: ``(x_a, x_b) -> G(Es(gray(x_a)), Ea(x_b).f)`` (run it under no_grad)."""

    return lambda xa, xb: model.decode(model.Es(gray(xa)), model.Ea(xb)[0])


def reconstruction_generator(model: torch.nn.Module) -> Generator:
    """DG-Net's self reconstruction ``G(s_a, f_a)`` (ignores ``x_b``): the generator's own structure ceiling."""
    return lambda xa, xb: model(xa)


@torch.no_grad()
def teacher_features(teacher: torch.nn.Module, images: torch.Tensor, batch_size: int = 64,
                     device: torch.device | str = "cpu") -> torch.Tensor:
    """The teacher's test-protocol features (image + flip, L2-normalised) ``(N, 512)`` float32 CPU."""

    teacher.eval()
    out = [embed(teacher, "teacher", images[i : i + batch_size].to(device)).cpu()
           for i in range(0, len(images), batch_size)]
    return torch.cat(out)


def identity_means(feats: torch.Tensor, pids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-identity mean of L2-normalised ``feats`` ``(N, D)``, re-normalised: ``(means (K, D), ids (K,))``,
    identities in increasing order."""
    ids, inv = torch.unique(torch.as_tensor(pids), return_inverse=True)
    f = F.normalize(feats.float(), dim=1)
    sums = torch.zeros(len(ids), f.shape[1]).index_add_(0, inv, f)
    return F.normalize(sums, dim=1), ids


def nearest_identity(feats: torch.Tensor, means: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """The identity of the nearest class mean (largest cosine) for each row of ``feats`` ``(N, D)``: ``(N,)``."""
    sim = F.normalize(feats.float(), dim=1) @ means.float().T
    return ids[sim.argmax(dim=1)]


@torch.no_grad()
def generate(generator: Generator, images: torch.Tensor, ia: torch.Tensor, ib: torch.Tensor,
             batch_size: int = 32, device: torch.device | str = "cpu") -> torch.Tensor:
    """``generator(images[ia], images[ib])`` in batches: ``(n, 3, H, W)`` normalised float32 on the CPU."""
    out = []
    for i in range(0, len(ia), batch_size):
        xa = images[ia[i : i + batch_size]].to(device)
        xb = images[ib[i : i + batch_size]].to(device)
        out.append(generator(xa, xb).float().cpu())
    return torch.cat(out)


def appearance_following(fakes_feats: torch.Tensor, pid_a: torch.Tensor, pid_b: torch.Tensor,
                         means: torch.Tensor, ids: torch.Tensor) -> dict[str, float]:
    """Shares of generated images whose nearest identity (:func:`nearest_identity`) is ``b`` / ``a`` / other.

    ``fakes_feats``: teacher features ``(n, D)`` of ``x_ab``; ``pid_a``, ``pid_b``: ``(n,)`` the structure and
    appearance providers' identities; ``means``, ``ids``: from :func:`identity_means`. Returns
    ``{"followed_b", "leaked_a", "other", "chance"}`` as fractions.
    """
    pred = nearest_identity(fakes_feats, means, ids)
    pid_a, pid_b = torch.as_tensor(pid_a), torch.as_tensor(pid_b)
    if bool((pid_a == pid_b).any()):
        raise ValueError("appearance_following: some pairs share an identity; expected pid_a != pid_b")
    b = (pred == pid_b).float().mean().item()
    a = (pred == pid_a).float().mean().item()
    return {"followed_b": b, "leaked_a": a, "other": 1.0 - a - b, "chance": 1.0 / len(ids)}


def silhouette_auc(dist: torch.Tensor, mask: torch.Tensor) -> float:
    """ROC AUC of per-pixel scores ``dist`` ``(H, W)`` for the pixels of ``mask`` ``(H, W)`` bool:
    P(score of a mask pixel > score of a non-mask pixel) + 0.5 P(equal), by average ranks (Mann-Whitney U).
    ``nan`` when the mask is empty or full."""
    d, m = dist.flatten().double(), mask.flatten().bool()
    pos, n = int(m.sum()), m.numel()
    if pos == 0 or pos == n:
        return float("nan")
    vals, inv, counts = torch.unique(d, return_inverse=True, return_counts=True)
    counts = counts.double()
    below = torch.cumsum(counts, 0) - counts  # values strictly smaller than each unique value
    ranks = (below + (counts + 1) / 2)[inv]  # 1-based average ranks, ties shared
    u = ranks[m].sum() - pos * (pos + 1) / 2.0
    return float(u / (pos * (n - pos)))


def structure_kept(fakes: torch.Tensor, masks_a: torch.Tensor, backgrounds_a: torch.Tensor,
                   tau: float = IOU_TAU) -> dict[str, float]:
    """How well ``fakes`` keep the silhouette of their structure provider (see the module docstring).

    ``fakes``: ``(n, 3, H, W)`` normalised; ``masks_a``: ``(n, H, W)`` bool true silhouettes of the ``a``
    images; ``backgrounds_a``: ``(n, 3, H, W)`` RGB [0, 1] scenes of ``a`` without the person. Returns
    ``{"silhouette_auc", "silhouette_iou"}``, means over the images (AUC over those with a non-trivial mask).
    """
    if not (fakes.shape[0] == masks_a.shape[0] == backgrounds_a.shape[0]) or fakes.shape[-2:] != masks_a.shape[-2:]:
        raise ValueError(f"structure_kept: fakes {tuple(fakes.shape)}, masks {tuple(masks_a.shape)} and backgrounds "
                         f"{tuple(backgrounds_a.shape)}; expected (n, 3, H, W), (n, H, W), (n, 3, H, W)")
    dist = (to_rgb01(fakes) - backgrounds_a.float()).norm(dim=1)  # (n, H, W)
    aucs = [silhouette_auc(dist[i], masks_a[i]) for i in range(len(dist))]
    fg = dist > tau
    inter = (fg & masks_a).flatten(1).sum(1).float()
    union = (fg | masks_a).flatten(1).sum(1).float()
    iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
    aucs = [a for a in aucs if a == a]
    return {"silhouette_auc": float(np.mean(aucs)) if aucs else float("nan"), "silhouette_iou": float(iou.mean())}


def render_ideal(samples: Sequence, manifest: dict, ia: torch.Tensor, ib: torch.Tensor,
                 size: tuple[int, int]) -> torch.Tensor:
    """The ideal ``x_ab`` by the synthetic generator itself: identity (appearance) of ``samples[ib]`` drawn with
    the pose, view, position, scene, occluder and camera of ``samples[ia]``, at the set's size, resized to
    ``size`` like real images. ``(n, 3, H, W)`` normalised float32. With ``ia == ib`` it is the real image."""

    out = []
    for a, b in zip(ia.tolist(), ib.tolist(), strict=True):
        ra, rb = manifest[Path(samples[a].path).name], manifest[Path(samples[b].path).name]
        with Image.open(samples[a].path) as im:
            w, h = im.size
        out.append(resize_uint8(_decode(render(rb["identity"], ra["factors"], ra["camera"], h, w)), size))
    return normalize(torch.stack(out))


def measure_fakes(fakes: torch.Tensor, teacher: torch.nn.Module, probe: Probe, means: torch.Tensor,
                  ids: torch.Tensor, ia: torch.Tensor, ib: torch.Tensor, device: torch.device | str = "cpu",
                  batch_size: int = 32) -> dict[str, float]:
    """Both measures for given ``x_ab`` images ``fakes`` ``(n, 3, H, W)`` (normalised) of the pairs ``(ia, ib)``
    of ``probe`` (which needs masks and backgrounds): :func:`appearance_following` and :func:`structure_kept`."""
    if probe.masks is None or probe.backgrounds is None:
        raise ValueError("measure: the probe has no silhouettes/backgrounds; load it with the synthetic manifest")
    feats = teacher_features(teacher, fakes, batch_size, device)
    out = appearance_following(feats, probe.pids[ia], probe.pids[ib], means, ids)
    out.update(structure_kept(fakes, probe.masks[ia], probe.backgrounds[ia]))
    return out


def measure(generator: Generator, teacher: torch.nn.Module, probe: Probe, means: torch.Tensor, ids: torch.Tensor,
            ia: torch.Tensor, ib: torch.Tensor, device: torch.device | str = "cpu",
            batch_size: int = 32) -> dict[str, float]:
    """:func:`measure_fakes` of ``generator(x_a, x_b)`` over the pairs ``(ia, ib)`` of ``probe``."""
    fakes = generate(generator, probe.images, ia, ib, batch_size, device)
    return measure_fakes(fakes, teacher, probe, means, ids, ia, ib, device, batch_size)


ROWS = (("real x_b", "appearance ceiling / structure floor"), ("real x_a", "structure ceiling"),
        ("ideal x_ab (rendered)", "what a perfect swap scores: b's identity drawn in a's pose, scene and camera"),
        ("recon G(s_a,f_a)", "the generator's own structure ceiling"), ("swap G(s_a,f_b)", "cross-identity images"))


def format_table(results: dict[str, dict[str, float]]) -> str:
    """A Markdown table (percentages, AUC as a fraction) of :func:`run`'s ``rows``."""
    lines = ["| images | nearest id = b (%) | nearest id = a (%) | silhouette AUC | silhouette IoU (%) |",
             "|---|---|---|---|---|"]
    for name, m in results.items():
        lines.append(f"| {name} | {100 * m['followed_b']:.1f} | {100 * m['leaked_a']:.1f} | "
                     f"{m['silhouette_auc']:.3f} | {100 * m['silhouette_iou']:.1f} |")
    return "\n".join(lines)


def run(model: torch.nn.Module, teacher: torch.nn.Module, query: Sequence, gallery: Sequence, manifest: dict,
        size: tuple[int, int], pairs: int = 200, seed: int = 0, device: torch.device | str = "cpu",
        batch_size: int = 32) -> dict:
    """The CLI's work: identity means from ``gallery`` (pid > 0), pairs from ``query`` (pid > 0), and the
    measures for real ``x_b``, real ``x_a``, DG-Net's reconstruction and its swap. Returns a JSON-able dict."""
    query = [s for s in query if s.pid > 0]
    gallery = [s for s in gallery if s.pid > 0]
    if not query or not gallery:
        raise ValueError(f"quality: {len(query)} query and {len(gallery)} gallery person images; expected some of each")
    model.eval()
    teacher.eval()
    gal = load_probe(gallery, size)
    means, ids = identity_means(teacher_features(teacher, gal.images, batch_size, device), gal.pids)
    probe = load_probe(query, size, manifest)
    ia, ib = draw_pairs(probe.pids, pairs, seed)
    gens: dict[str, Generator] = {"real x_b": lambda xa, xb: xb, "real x_a": lambda xa, xb: xa,
                                  "recon G(s_a,f_a)": reconstruction_generator(model),
                                  "swap G(s_a,f_b)": swap_generator(model)}
    rows = {name: measure(g, teacher, probe, means, ids, ia, ib, device, batch_size) for name, g in gens.items()}
    ideal = render_ideal(query, manifest, ia, ib, size)
    rows = {**{k: rows[k] for k in ("real x_b", "real x_a")},
            "ideal x_ab (rendered)": measure_fakes(ideal, teacher, probe, means, ids, ia, ib, device, batch_size),
            **{k: rows[k] for k in ("recon G(s_a,f_a)", "swap G(s_a,f_b)")}}
    return {"rows": rows, "pairs": len(ia), "seed": seed, "query_images": len(query),
            "identities": len(ids), "size": list(size), "iou_tau": IOU_TAU,
            "nearest_identity": "nearest class mean (cosine) of the teacher's features of the test gallery"}


def measure_checkpoint(checkpoint: str | Path, teacher: str | Path | None = None, data_root: str | None = None,
                       pairs: int = 200, seed: int = 0, device: str = "auto") -> dict:
    """What ``python -m dgnet.quality`` measures: :func:`run` on a synthetic run's checkpoint, with the teacher
    it holds (or the one in ``teacher``), on the synthetic set it trained on. Returns :func:`run`'s dict."""
    if pairs < 1:
        raise ValueError(f"--pairs {pairs}: expected a positive number")
    run_ = open_run(checkpoint, data_root, "torch", device)
    cfg = run_.cfg
    if cfg.data.dataset != "synthetic":
        raise ValueError(f"--checkpoint {checkpoint}: trained on {cfg.data.dataset!r}; the quality measures "
                         f"need the synthetic set's true factors (dataset 'synthetic')")
    model = run_.model("dgnet")
    teacher_model = build_model(load_checkpoint(teacher), "teacher", run_.device) if teacher else run_.model("teacher")
    ds = run_.dataset(preflight=False)
    manifest = load_manifest(cfg.data.root)
    set_threads(cfg.train.threads)  # the run's thread setting, as dgnet.train uses it
    res = run(model, teacher_model, ds.query, ds.gallery, manifest, (cfg.data.height, cfg.data.width),
              pairs, seed, run_.device, cfg.eval.batch_size)
    res["checkpoint"] = str(checkpoint)
    return res
