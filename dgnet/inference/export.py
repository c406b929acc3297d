"""Deployment: a trained model's re-id features or its generator as one self-contained graph, exported as ONNX,
TorchScript or a ``torch.export`` ExportedProgram.

Two parts, each a small module over the trained networks (:class:`ReidFeatures`, :class:`Generator`):

- ``reid``: ``images`` ``(N, 3, H, W)`` float32, as :meth:`dgnet.FeatureExtractor.preprocess` makes them ->
  ``features`` ``(N, D)`` float32: the whole test protocol (:func:`dgnet.evaluation.protocol.embed`: both heads' post-BN
  bottlenecks, image + horizontal flip, L2 normalisation, the fine half scaled by ``sqrt(alpha)``) in the graph,
  so the dot product of two exported features is the score ``python -m dgnet.test`` ranks by. D is 1024 for
  DG-Net, 512 for a teacher (its single head).
- ``generator``: ``structure`` and ``appearance`` ``(N, 3, H, W)`` (preprocessed the same way) -> ``image``
  ``(N, 3, H, W)`` = ``G(Es(gray(structure)), Ea(appearance)'s code)``, in the same normalised space (times std
  plus mean gives RGB in [0, 1], up to clipping).

The batch axis is dynamic in every format; H and W are the checkpoint's. Each file carries a JSON record
(:func:`read_metadata`): input size, mean and std, alpha, feature width, the checkpoint's identity, versions.

Fused kernels: a ``--fused`` run's decoder is built here on its plain paths (``adain_reference``, one linear
per AdaIN MLP, upsample then conv), the reference decomposition of ``dgnet::adain_forward``,
``grouped_mlp`` and ``upsample_conv5``, with the same weights. The fused ops are C++ and Triton kernels that
no ONNX runtime knows and a TorchScript or ExportedProgram file could run only with dgnet's extension
loaded; their values equal the plain paths' up to float rounding (``tests/test_adain.py``), and
``tests/test_export.py`` compares a fused model's own outputs with the exported graph's.
"""

from __future__ import annotations

import copy
import json
import time
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

import dgnet
from dgnet.checkpoints.format import load_checkpoint
from dgnet.checkpoints.runs import build_model
from dgnet.config import check_alpha, config_from_dict
from dgnet.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from dgnet.evaluation.protocol import KINDS, embed
from dgnet.fileio import replace_atomic
from dgnet.inference.extractor import checkpoint_identity
from dgnet.models import Decoder, DGNet, gray

FORMATS = ("onnx", "torchscript", "exported-program")
PARTS = ("reid", "generator")
# The metadata's name: the ONNX ``metadata_props`` key, and ``extra/dgnet.json`` in TorchScript and
# ExportedProgram archives.
METADATA_KEY = "dgnet"
METADATA_FILE = "dgnet.json"
METADATA_FORMAT = "dgnet-export"
METADATA_VERSION = 1
# Batch of the example inputs the graphs are traced with: 2, since torch.export specialises sizes 0 and 1.
_EXAMPLE_BATCH = 2


class ReidFeatures(nn.Module):
    """The test protocol's features as one module: ``images`` ``(N, 3, H, W)`` float32 -> ``(N, D)`` float32.

    Args:
        model: a :class:`dgnet.models.DGNet` (``kind="dgnet"``, D = 1024) or a
            :class:`dgnet.models.ReidBaseline` (``kind="teacher"``, D = 512). Copied: the module never shares
            or changes the caller's parameters.
        kind: ``"dgnet"`` or ``"teacher"``.
        alpha: the fine-grained head's weight (a checkpoint's ``eval.alpha``); ignored for a teacher.
        size: ``(H, W)`` of the inputs (the checkpoint's ``data.height``, ``data.width``).
    Inputs on the CPU (or wherever the module is moved); evaluation mode, no gradients.
    """

    input_names = ("images",)
    output_names = ("features",)

    def __init__(self, model: nn.Module, kind: str, alpha: float, size: tuple[int, int]) -> None:
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"kind={kind!r}: expected one of {KINDS}")
        check_alpha(alpha)
        self.kind, self.alpha, self.size = kind, float(alpha), (int(size[0]), int(size[1]))
        if kind == "dgnet":
            # Only Ea goes into the graph: embed() reads model.Ea, and this module stands in for the DGNet.
            self.Ea = copy.deepcopy(model.Ea)
        else:
            self.teacher = copy.deepcopy(model)
        self.requires_grad_(False)
        self.eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return embed(self if self.kind == "dgnet" else self.teacher, self.kind, images, self.alpha)


class Generator(nn.Module):
    """DG-Net's generation as one module: ``structure``, ``appearance`` ``(N, 3, H, W)`` float32 -> ``image``
    ``(N, 3, H, W)`` float32 = ``G(Es(gray(structure)), code of Ea(appearance))``; row i pairs the two inputs'
    row i. Images are normalised as :meth:`dgnet.FeatureExtractor.preprocess` makes them, the output too.

    ``model``'s Ea and Es are copied; G is rebuilt with its plain paths (the fused kernels' reference
    decomposition: see the module docstring) and the same weights, whatever ``model.fused`` is.
    """

    input_names = ("structure", "appearance")
    output_names = ("image",)

    def __init__(self, model: DGNet, size: tuple[int, int]) -> None:
        super().__init__()
        if not isinstance(model, DGNet):
            raise ValueError(f"the generator part needs a DGNet (Ea, Es, G), got {type(model).__name__}")
        self.size = (int(size[0]), int(size[1]))
        self.Ea = copy.deepcopy(model.Ea)
        self.Es = copy.deepcopy(model.Es)
        # Built on the meta device: no initialisation draws from the caller's random stream, and the weights
        # are then the trained ones (copies, so the caller's model is never shared).
        with torch.device("meta"):
            self.G = Decoder(model.cfg, model.Ea.code_dim, fused=False, fold_upsample=model.G.fold_upsample)
        self.G.load_state_dict({k: v.detach().clone() for k, v in model.G.state_dict().items()}, assign=True)
        self.requires_grad_(False)
        self.eval()

    def forward(self, structure: torch.Tensor, appearance: torch.Tensor) -> torch.Tensor:
        code = self.Ea.code(self.Ea.backbone(appearance))  # Ea's appearance code alone: the heads are unused
        return self.G(self.Es(gray(structure)), code)


def part_module(ckpt: dict, part: str, which: str | None = None, path: str | Path = "<checkpoint>") -> nn.Module:
    """The module of ``part`` (``"reid"`` or ``"generator"``) for a loaded dgnet checkpoint, on the CPU.

    ``which`` (``reid`` only): ``"dgnet"`` or ``"teacher"``; default DG-Net when the checkpoint holds it, else
    its teacher. ``path`` names the checkpoint in errors.

    Raises:
        ValueError: an unknown part or model, or one the checkpoint does not hold (named, with what it holds).
    """
    held = sorted(ckpt["models"])
    if part not in PARTS:
        raise ValueError(f"part={part!r}: expected one of {PARTS}")
    if part == "generator":
        if which not in (None, "dgnet"):
            raise ValueError(f"--model {which}: the generator is DG-Net's (Es and G); only --model dgnet has one")
        if "dgnet" not in held:
            raise ValueError(f"checkpoint {str(path)!r} holds no DG-Net generator (it has {held}): --part generator "
                             "needs a DG-Net checkpoint (dgnet.pt or dgnet_*.pt); a teacher exports --part reid only")
        which = "dgnet"
    if which is None:
        which = "dgnet" if "dgnet" in held else "teacher"
    if which not in KINDS:
        raise ValueError(f"model={which!r}: expected one of {KINDS}")
    if which not in held:
        raise ValueError(f"checkpoint {str(path)!r} holds no {which} model (it has {held})")
    cfg = config_from_dict(ckpt["config"])
    size = (cfg.data.height, cfg.data.width)
    # Plain paths: the fused kernels have no exported form (module docstring); the values are the same.
    model = build_model(ckpt, which, "cpu", fused=False)
    if part == "generator":
        return Generator(model, size)
    return ReidFeatures(model, which, cfg.eval.alpha, size)


def example_inputs(module: ReidFeatures | Generator, batch: int = _EXAMPLE_BATCH, seed: int = 0
                   ) -> tuple[torch.Tensor, ...]:
    """Seeded normal ``(batch, 3, H, W)`` float32 CPU tensors, one per input of ``module``."""
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(batch, 3, *module.size, generator=g) for _ in module.input_names)


def metadata(module: ReidFeatures | Generator, ckpt: dict | None = None, checkpoint: str | Path | None = None
             ) -> dict[str, Any]:
    """The record an exported file carries: what a deployer needs to feed it and to trust its outputs.

    Keys: format, version, dgnet_version, torch_version, part, model, inputs and outputs (name -> shape, "N"
    for the batch axis), input_size ``[H, W]``, mean and std (RGB, of pixels scaled to [0, 1]), preprocess
    (the recipe in words), alpha and feature_dim (reid), output_space (generator), and with ``ckpt`` the
    checkpoint's file name, identity (``dgnet.inference.extractor.checkpoint_identity``), stage, iteration and
    identity count.
    """
    h, w = module.size
    with torch.no_grad():
        out = module(*example_inputs(module))  # the graph's own output shape: one source for the width
    meta: dict[str, Any] = {
        "format": METADATA_FORMAT, "version": METADATA_VERSION, "dgnet_version": dgnet.__version__,
        "torch_version": torch.__version__, "part": "generator" if isinstance(module, Generator) else "reid",
        "model": "dgnet" if isinstance(module, Generator) else module.kind,
        "inputs": {name: ["N", 3, h, w] for name in module.input_names},
        "outputs": {module.output_names[0]: ["N", *out.shape[1:]]},
        "input_size": [h, w], "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
        "preprocess": f"RGB uint8 (H, W, 3) -> bicubic antialiased resize to {h}x{w} -> float / 255 -> "
                      "(x - mean) / std per channel -> (N, 3, H, W) float32 (dgnet.FeatureExtractor.preprocess)",
    }
    if isinstance(module, Generator):
        meta["output_space"] = "normalised like the inputs: image * std + mean is RGB in [0, 1] (clip to it)"
    else:
        meta["alpha"] = module.alpha if module.kind == "dgnet" else None
        meta["feature_dim"] = int(out.shape[1])
        meta["score"] = ("dot product of two features (primary . primary' + alpha * fine . fine'); each feature's "
                         "norm is sqrt(1 + alpha) (DG-Net) or 1 (teacher)")
    if ckpt is not None:
        meta["checkpoint"] = {"file": Path(checkpoint).name if checkpoint is not None else None,
                              "identity": checkpoint_identity(ckpt), "stage": ckpt.get("stage"),
                              "iteration": ckpt.get("iteration"), "num_ids": ckpt.get("num_ids")}
    return meta


def _dynamic_batch(module: ReidFeatures | Generator) -> dict[str, dict[int, Any]]:
    batch = torch.export.Dim("batch", min=1)  # one symbol: the generator's two inputs share their batch
    return {name: {0: batch} for name in module.input_names}


def _check_out(fmt: str, out: str | Path) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"format={fmt!r}: expected one of {FORMATS}")
    if fmt == "exported-program" and Path(out).suffix != ".pt2":
        # torch.export.load reads other names only through a fallback that warns on every load
        raise ValueError(f"--out {str(out)!r}: an exported-program file must end in .pt2 (torch.export.load expects "
                         "that name)")


def export_module(module: ReidFeatures | Generator, fmt: str, out: str | Path, meta: dict[str, Any]) -> Path:
    """Write ``module`` to ``out`` in ``fmt`` (``"onnx"``, ``"torchscript"``, ``"exported-program"``), with
    ``meta`` (JSON-serialisable) inside the file; atomically (a failed export leaves no file). Returns ``out``.

    - ``onnx``: ``torch.onnx.export`` (the dynamo exporter, default opset), weights inside the one file; inputs
      and outputs by the module's names; batch axis ``batch``; ``meta`` as JSON under ``metadata_props``'s
      ``dgnet``. Runs in onnxruntime.
    - ``torchscript``: ``torch.jit.trace`` (``torch.jit.load``); ``meta`` as the extra file ``dgnet.json``.
    - ``exported-program``: ``torch.export.export`` with a dynamic batch, ``torch.export.save``
      (``torch.export.load(...).module()``); ``meta`` as the extra file ``dgnet.json``.
    """
    _check_out(fmt, out)
    module = module.eval()
    args = example_inputs(module)
    text = json.dumps(meta, sort_keys=True)
    if fmt == "onnx":
        try:
            import onnx  # noqa: F401  (the exporter needs both; a clear message beats its own)
            import onnxscript  # noqa: F401
        except ImportError as exc:
            raise ImportError(f"--format onnx needs the onnx and onnxscript packages ({exc}); they are pinned in "
                              "requirements.txt, which `bash scripts/setup.sh` installs") from exc
        with warnings.catch_warnings():
            # The generator's two inputs share one batch axis; the exporter warns that it names it only once.
            warnings.filterwarnings("ignore", message=r".*axis name: batch will not be used", category=UserWarning)
            program = torch.onnx.export(module, args, dynamo=True, input_names=list(module.input_names),
                                        output_names=list(module.output_names),
                                        dynamic_shapes=_dynamic_batch(module), external_data=False, verbose=False)
        program.model.metadata_props[METADATA_KEY] = text
        blob = program.model_proto.SerializeToString()
        return replace_atomic(out, lambda fh: fh.write(blob))
    if fmt == "torchscript":
        with warnings.catch_warnings():
            # PyTorch deprecates TorchScript; the format is still asked for (C++ runtimes, older stacks), and the
            # command says once that exported-program and onnx are the maintained ones.
            warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated", category=FutureWarning)
            warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated", category=DeprecationWarning)
            # The tracer warns at every Python branch on a size. H and W are fixed by the checkpoint, and the batch
            # size only reaches argument checks that hold for any batch (tests/test_export.py runs batch sizes
            # other than the traced one); a warning per branch would only bury real messages.
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            with torch.no_grad():
                # check_trace reruns the same inputs; the tests check other batch sizes against eager PyTorch.
                traced = torch.jit.trace(module, args, check_trace=False)
            return replace_atomic(out, lambda fh: torch.jit.save(traced, fh, _extra_files={METADATA_FILE: text}))
    program = torch.export.export(module, args, dynamic_shapes=_dynamic_batch(module))
    return replace_atomic(out, lambda fh: torch.export.save(program, fh, extra_files={METADATA_FILE: text}))


@dataclass
class Exported:
    """What :func:`export_checkpoint` wrote: the file, its metadata, and the export's wall time in seconds."""

    path: Path
    metadata: dict[str, Any]
    seconds: float


def export_checkpoint(checkpoint: str | Path, fmt: str, out: str | Path, part: str = "reid",
                      which: str | None = None) -> Exported:
    """Export ``part`` of a dgnet checkpoint to ``out`` in ``fmt``: :func:`part_module`, then
    :func:`export_module` with :func:`metadata`. On the CPU; the file runs on any device its runtime supports.

    Raises:
        FileNotFoundError: ``checkpoint`` does not exist.
        ValueError: not a dgnet checkpoint, or an unknown format, part or model, or one it lacks (named).
        ImportError: ``fmt="onnx"`` without the onnx packages.
    """

    _check_out(fmt, out)  # before the checkpoint is read: a wrong name fails at once
    if part not in PARTS:
        raise ValueError(f"part={part!r}: expected one of {PARTS}")
    start = time.perf_counter()
    ckpt = load_checkpoint(checkpoint)
    module = part_module(ckpt, part, which, checkpoint)
    meta = metadata(module, ckpt, checkpoint)
    meta["export_format"] = fmt
    path = export_module(module, fmt, out, meta)
    return Exported(path, meta, time.perf_counter() - start)


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The record :func:`export_module` put in an exported file of any of the three formats, without loading
    its graph.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file carries no dgnet record (not exported by dgnet, or not one of the formats).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"exported model {str(path)!r} does not exist")
    if zipfile.is_zipfile(path):  # TorchScript and ExportedProgram archives: <name>/extra/dgnet.json
        with zipfile.ZipFile(path) as z:
            names = [n for n in z.namelist() if n.endswith(f"/extra/{METADATA_FILE}")]
            if names:
                return json.loads(z.read(names[0]))
    else:
        import onnx

        try:
            proto = onnx.load(str(path), load_external_data=False)
        except Exception as exc:  # noqa: BLE001 - any parse failure means "not an ONNX file"
            raise ValueError(f"{str(path)!r} is neither an ONNX file nor a TorchScript/ExportedProgram archive "
                             f"({exc})") from exc
        props = {p.key: p.value for p in proto.metadata_props}
        if METADATA_KEY in props:
            return json.loads(props[METADATA_KEY])
    raise ValueError(f"{str(path)!r} carries no dgnet metadata (expected {METADATA_FILE} or ONNX metadata_props "
                     f"{METADATA_KEY!r}): was it written by python -m dgnet.export?")
