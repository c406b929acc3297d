"""Checkpoints of the DG-Net reference implementation (NVlabs/DG-Net) and of the re-id baseline it takes its
teacher from (layumi/Person_reID_baseline_pytorch), imported as dgnet checkpoints.

dgnet's modules compute what the reference's compute on the same weights (docs/reference-compatibility.md), so
an import is a renaming of tensors, checked entry by entry. What the files hold (facts
about their format, read from the reference's module structure; none of its code is used here):

- DG-Net, a run's checkpoint folder: ``gen_%08d.pt`` (Es, G and its AdaIN MLPs), ``id_%08d.pt`` (Ea, the
  ``ft_netAB`` model) and ``dis_%08d.pt`` (D), numbered by iterations done; each is ``{'a': state_dict}``.
  In ``gen``, each conv block lists its norm's entries before its conv's, and the eight AdaIN layers carry
  ``running_mean``/``running_var`` buffers (16 in all) that the forward never reads. ``id`` keeps torchvision's
  ImageNet ``model.fc``, which the forward never uses. A ``dis`` saved from a multi-GPU run prefixes every key
  with ``module.``. The run's ``config.yaml`` sits in the folder above ``checkpoints/``.
- The baseline's ``ft_net`` (``net_last.pth``): a bare state dict, ``model.*`` (torchvision ResNet-50, ``fc``
  included) and ``classifier.*`` (the 512-d head), with the stride of layer4 in ``opts.yaml`` beside it (the
  reference reads ``stride`` there, 2 when absent). The reference builds its teacher with dropout 0.5, whatever
  the baseline was trained with.
- Files from before PyTorch 1.6 use the legacy (non-zip) serialisation; ``torch.load(weights_only=True)`` reads
  both. A file that would need to run code to unpickle is refused.

:func:`import_reference` and :func:`import_baseline` return a dgnet checkpoint dictionary
(:func:`dgnet.checkpoints.format.build_state`) that ``dgnet.test``, ``dgnet.visualize``, ``dgnet.load_model``,
``dgnet.FeatureExtractor``, ``dgnet.train --teacher`` and ``dgnet.train --init-from`` accept.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from dgnet.checkpoints.format import build_state
from dgnet.config import PRESETS, Config, resolve_config
from dgnet.fileio import load_weights_only
from dgnet.models import DGNet, ReidBaseline

KINDS = ("gen", "id", "dis")
_FILE = re.compile(r"^(?P<kind>gen|id|dis)_(?P<it>\d{8})\.pt$")
# Keys the reference's files may hold that no dgnet module has: read past, never loaded.
_UNUSED = re.compile(r"(^|\.)norm\.running_(mean|var)$|^model\.fc\.(weight|bias)$")

# The reference's settings (its configs/latest.yaml) that dgnet's modules implement. Another value makes the same
# tensors compute something else (or not fit), so an import with it is refused. Keys absent from a config.yaml
# are not checked (the reference itself fails on most of them).
REFERENCE_SETTINGS: dict[str, Any] = {
    "ID_style": "AB", "pool": "max", "norm_id": False, "single": "gray", "input_dim_a": 1,
    "gen.activ": "lrelu", "gen.dim": 16, "gen.n_downsample": 2, "gen.n_res": 4, "gen.mlp_dim": 512,
    "gen.id_dim": 2048, "gen.dec": "basic", "gen.non_local": 0, "gen.tanh": False, "gen.pad_type": "reflect",
    "gen.mlp_norm": "none", "gen.dropout": 0,
    "dis.activ": "lrelu", "dis.dim": 32, "dis.n_layer": 2, "dis.n_res": 4, "dis.num_scales": 3, "dis.norm": "none",
    "dis.non_local": 0, "dis.pad_type": "reflect", "dis.gan_type": "lsgan",
}
# Person_reID_baseline_pytorch options that build a model other than the ResNet-50 ft_net the reference loads.
_BASELINE_OTHER_MODELS = ("use_dense", "use_NAS", "use_swin", "use_swinv2", "use_efficient", "use_hr",
                          "use_convnext", "use_dino", "PCB", "ibn", "usam")
BASELINE_DROPOUT = 0.5  # the reference builds its teacher's head with ft_net's default dropout


@dataclass(frozen=True)
class Entry:
    """One tensor: its key in the reference's file and in dgnet's model state dict."""

    ref: str
    ours: str


# --------------------------------------------------------------------------------------------------- key layout
def _block(ref: str, ours: str, module: torch.nn.Module) -> list[Entry]:
    """A conv block (``dgnet.models.layers.ConvBlock``): the reference's ``Conv2dBlock`` names its parts ``norm``
    and ``conv`` as dgnet does, and lists the norm's entries first."""
    names = [k for k in module.state_dict() if k.startswith("norm.")] + ["conv.weight", "conv.bias"]
    return [Entry(f"{ref}.{k}", f"{ours}.{k}") for k in names]


def _res_block(ref: str, ours: str, module: torch.nn.Module) -> list[Entry]:
    """A residual block: the reference's two conv blocks are ``model.0`` and ``model.1``."""
    return _block(f"{ref}.model.0", f"{ours}.block1", module.block1) + _block(f"{ref}.model.1", f"{ours}.block2",
                                                                              module.block2)


def gen_layout(model: torch.nn.Module) -> list[Entry]:
    """The used entries of a ``gen`` file for ``model`` (a ``DGNet``), in the file's order: Es
    (``enc_content``), G (``dec``), then the AdaIN MLPs ``mlp_w1..4`` (scales) and ``mlp_b1..4`` (biases)."""
    es, g = model.Es.model, model.G
    n_res = len(es) - 5  # 4 convs, the residual blocks, the ASPP
    out: list[Entry] = []
    for i in range(4):
        out += _block(f"enc_content.model.{i}", f"Es.model.{i}", es[i])
    for k in range(n_res):
        out += _res_block(f"enc_content.model.4.model.{k}", f"Es.model.{4 + k}", es[4 + k])
    aspp, ref = es[4 + n_res], "enc_content.model.5"
    out += _block(f"{ref}.conv1", f"Es.model.{4 + n_res}.branch1", aspp.branch1)
    # the reference names its dilated branches after dilations 6, 12, 18 and builds them with 3, 6, 9 (the spec's)
    for b, name in enumerate(("conv6", "conv12", "conv18")):
        for j in range(2):
            out += _block(f"{ref}.{name}.{j}", f"Es.model.{4 + n_res}.branches.{b}.{j}", aspp.branches[b][j])
    out += _block(f"{ref}.fuse", f"Es.model.{4 + n_res}.fuse", aspp.fuse)
    # dec.model: 0 dropout (p 0), 1 the AdaIN residual blocks, then G.up's modules in order from index 2
    for k in range(len(g.blocks)):
        for j, conv in enumerate(("conv1", "conv2")):
            out += [Entry(f"dec.model.1.model.{k}.model.{j}.conv.{p}", f"G.blocks.{k}.{conv}.{p}")
                    for p in ("weight", "bias")]
    for i, m in enumerate(g.up):
        if isinstance(m, torch.nn.Upsample):
            continue
        out += _block(f"dec.model.{2 + i}", f"G.up.{i}", m)
    for kind in ("w", "b"):
        for k in range(len(g.blocks)):
            out += [Entry(f"mlp_{kind}{k + 1}.model.{j}.fc.{p}", f"G.mlp_{kind}.{k}.fc{j + 1}.{p}")
                    for j in range(3) for p in ("weight", "bias")]
    return out


def _head(ref: str, ours: str) -> list[Entry]:
    """A re-id head: the reference's ``ClassBlock`` is ``add_block`` (Linear, BatchNorm1d[, Dropout]) then
    ``classifier`` (Linear); dgnet's is ``bottleneck``, ``bn``, ``dropout``, ``classifier``."""
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    return ([Entry(f"{ref}.add_block.0.{p}", f"{ours}.bottleneck.{p}") for p in ("weight", "bias")]
            + [Entry(f"{ref}.add_block.1.{p}", f"{ours}.bn.{p}") for p in bn]
            + [Entry(f"{ref}.classifier.0.{p}", f"{ours}.classifier.{p}") for p in ("weight", "bias")])


def id_layout(model: torch.nn.Module) -> list[Entry]:
    """The used entries of an ``id`` file for ``model`` (a ``DGNet``): the trunk ``model.*`` (torchvision's names,
    as dgnet's backbone), then ``classifier1`` (primary head) and ``classifier2`` (fine-grained head)."""
    trunk = [Entry(f"model.{k}", f"Ea.backbone.{k}") for k in model.Ea.backbone.state_dict()]
    return trunk + _head("classifier1", "Ea.head_primary") + _head("classifier2", "Ea.head_fine")


def dis_layout(model: torch.nn.Module) -> list[Entry]:
    """The entries of a ``dis`` file for ``model`` (a ``DGNet``): per scale ``cnns.s``, five conv blocks, the
    residual blocks, and the final 1x1 conv."""
    out: list[Entry] = []
    for s, net in enumerate(model.D.nets):
        for i, m in enumerate(net):
            ref, ours = f"cnns.{s}.{i}", f"D.nets.{s}.{i}"
            if isinstance(m, torch.nn.Conv2d):
                out += [Entry(f"{ref}.{p}", f"{ours}.{p}") for p in ("weight", "bias")]
            elif hasattr(m, "block1"):
                out += _res_block(ref, ours, m)
            else:
                out += _block(ref, ours, m)
    return out


def baseline_layout(teacher: torch.nn.Module) -> list[Entry]:
    """The used entries of a baseline ``ft_net`` state dict for ``teacher`` (a ``ReidBaseline``)."""
    trunk = [Entry(f"model.{k}", f"backbone.{k}") for k in teacher.backbone.state_dict()]
    return trunk + _head("classifier", "head")


LAYOUTS = {"gen": gen_layout, "id": id_layout, "dis": dis_layout}


# --------------------------------------------------------------------------------------------------- reading
def _state_dict(obj: Any, path: Path, wrapped: bool) -> dict[str, torch.Tensor]:
    """The state dict of a loaded file: ``obj['a']`` when ``wrapped`` (the reference's format), else ``obj``."""
    if wrapped:
        if not (isinstance(obj, Mapping) and list(obj) == ["a"]):
            got = sorted(map(str, obj)) if isinstance(obj, Mapping) else type(obj).__name__
            raise ValueError(f"{path}: expected the reference's {{'a': state_dict}}, got {got}")
        obj = obj["a"]
    elif isinstance(obj, Mapping) and list(obj) == ["a"] and isinstance(obj["a"], Mapping):
        raise ValueError(f"{path}: a DG-Net reference file ({{'a': state_dict}}); expected a bare state dict "
                         "(Person_reID_baseline_pytorch's net_last.pth). Import reference runs with "
                         "'dgnet.convert reference'")
    if not isinstance(obj, Mapping) or not obj:
        raise ValueError(f"{path}: expected a state dict (key -> tensor), got {type(obj).__name__}")
    bad = next((k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)), None)
    if bad is not None:
        raise ValueError(f"{path}: entry {bad!r} is a {type(obj[bad]).__name__}, expected a tensor (a state dict)")
    state = dict(obj)
    if all(k.startswith("module.") for k in state):  # saved from DataParallel
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def map_state(state: dict[str, torch.Tensor], layout: list[Entry], own: dict[str, torch.Tensor],
              source: str) -> dict[str, torch.Tensor]:
    """``state`` (reference keys) renamed to dgnet's keys along ``layout``, checked against ``own`` (the dgnet
    module's state dict): every used entry present with ``own``'s shape; entries no dgnet module has (the AdaIN
    buffers, ImageNet fc) read past; anything else refused. Tensors take ``own``'s dtype; BatchNorm counters
    absent from old files start at 0 (as BatchNorm's own loader does).

    Raises:
        ValueError: naming ``source``, the first missing, unexpected, mis-shaped (with both shapes) or non-finite
            key.
    """
    known = {e.ref for e in layout}
    extra = [k for k in state if k not in known and not _UNUSED.search(k)]
    if extra:
        raise ValueError(f"{source}: unexpected entry {extra[0]!r} ({len(extra)} in all); expected the layout of "
                         f"the reference's model (first expected entry {layout[0].ref!r})")
    out = {}
    for e in layout:
        mine = own[e.ours]
        if e.ref not in state:
            if e.ref.endswith(".num_batches_tracked"):
                out[e.ours] = torch.zeros_like(mine)
                continue
            missing = sum(x.ref not in state and not x.ref.endswith("num_batches_tracked") for x in layout)
            raise ValueError(f"{source}: no entry {e.ref!r} ({missing} missing); expected the layout of the "
                             "reference's model")
        t = state[e.ref]
        if tuple(t.shape) != tuple(mine.shape):
            raise ValueError(f"{source}: {e.ref!r} has shape {tuple(t.shape)}, expected {tuple(mine.shape)} "
                             f"(dgnet's {e.ours}){_shape_hint(e, t, mine)}")
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ValueError(f"{source}: {e.ref!r} holds NaN or infinite values (a diverged run, or an fp16 "
                             "overflow?); an earlier checkpoint of the run may be intact")
        out[e.ours] = t.detach().to(mine.dtype).clone()
    return out


def _shape_hint(e: Entry, got: torch.Tensor, want: torch.Tensor) -> str:
    if e.ours.endswith("classifier.weight") and got.dim() == 2 and got.shape[1] == want.shape[1]:
        return (f": the file's classifier has {got.shape[0]} identities and {want.shape[0]} were asked for "
                "(--num-ids, or ID_class in the run's config.yaml)")
    return ""


# --------------------------------------------------------------------------------------------------- DG-Net runs
def find_reference_checkpoints(folder: str | Path) -> tuple[int, dict[str, Path]]:
    """The newest iteration with both a ``gen`` and an ``id`` file in ``folder`` (or its ``checkpoints/``), and
    ``{kind: path}`` of that iteration's files (``dis`` only when present).

    Raises:
        FileNotFoundError: no such folder, or no ``gen_N.pt`` with an ``id_N.pt`` of the same N in it.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"--checkpoints {str(folder)!r}: no such folder")
    found: dict[str, dict[int, Path]] = {k: {} for k in KINDS}
    for where in (folder, folder / "checkpoints"):
        if where.is_dir():
            for p in where.iterdir():
                m = _FILE.match(p.name)
                if m:
                    found[m["kind"]].setdefault(int(m["it"]), p)
        if found["gen"] or found["id"]:
            break
    both = sorted(set(found["gen"]) & set(found["id"]))
    if not both:
        seen = {k: sorted(v) for k, v in found.items() if v}
        raise FileNotFoundError(f"--checkpoints {str(folder)!r}: no gen_XXXXXXXX.pt with an id_XXXXXXXX.pt of the "
                                f"same iteration (found {seen or 'no reference checkpoints'})")
    it = both[-1]
    paths = {k: found[k][it] for k in KINDS if it in found[k]}
    return it, paths


def reference_config(path: str | Path) -> dict[str, Any]:
    """The reference run's ``config.yaml``, checked against :data:`REFERENCE_SETTINGS`.

    Raises:
        ValueError: naming the file, the key, its value and the value dgnet implements.
    """
    path = Path(path)
    try:
        conf = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: not a readable YAML file ({exc})") from None
    if not isinstance(conf, dict):
        raise ValueError(f"{path}: expected the reference's config mapping, got {type(conf).__name__}")
    for key, want in REFERENCE_SETTINGS.items():
        node: Any = conf
        for part in key.split("."):
            node = node.get(part, None) if isinstance(node, dict) else None
        if node is not None and node != want:
            raise ValueError(f"{path}: {key}: {node!r}; dgnet implements the reference's model with {key}: {want!r} "
                             "(its configs/latest.yaml), so these weights would compute something else in dgnet")
    return conf


def _find_reference_config(folder: Path, checkpoint: Path) -> Path | None:
    for p in (folder / "config.yaml", checkpoint.parent / "config.yaml", checkpoint.parent.parent / "config.yaml"):
        if p.is_file():
            return p
    return None


def preset_for(num_ids: int) -> str:
    """The real-dataset preset with ``num_ids`` train identities (market1501 751, dukemtmc 702, msmt17 1041)."""
    real = {PRESETS[n]().model.num_ids: n for n in ("market1501", "dukemtmc", "msmt17")}
    if num_ids not in real:
        known = ", ".join(f"{name}: {n}" for n, name in real.items())
        raise ValueError(f"{num_ids} identities match no real-dataset preset ({known}); pass --config PRESET_OR_YAML "
                         "for the dataset")
    return real[num_ids]


def _config(spec: str | None, overrides: dict | None, num_ids: int) -> Config:
    cfg = resolve_config(spec or preset_for(num_ids), overrides)
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, num_ids=num_ids, init_from=""))


def import_reference(checkpoints: str | Path, num_ids: int | None = None, teacher: str | Path | None = None,
                     config: str | None = None, overrides: dict | None = None,
                     log: Any = print) -> dict:
    """The newest DG-Net checkpoint of a reference run folder as a dgnet checkpoint dictionary (stage ``dgnet``,
    the reference's iteration), with the baseline teacher ``teacher`` (``net_last.pth``) when given.

    Args:
        checkpoints: the run's ``checkpoints/`` folder (or the run folder above it).
        num_ids: train identities (the classifier rows); default ``ID_class`` of the run's ``config.yaml``.
        teacher: a Person_reID_baseline_pytorch ``net_last.pth`` (see :func:`import_baseline`).
        config: the dgnet preset or YAML the result is evaluated and fine-tuned with (dataset layout, schedule);
            default the real-dataset preset with ``num_ids`` identities.
        overrides: ``{section: {key: value}}`` over ``config`` (``--set``).
        log: where progress lines go.

    The reference's ``config.yaml`` (beside or above the folder) is checked when present: its model settings must be
    the ones dgnet implements, ``ID_class`` must equal ``num_ids``; ``ID_stride`` becomes ``model.last_stride`` (2
    when absent, the reference's default) and the crop size ``data.height``/``width``. Without it the reference's
    published config is assumed (stride 1, 256x128). Without a ``dis`` file of the same iteration D keeps a
    fresh, seeded initialisation, which evaluation and visualisation never use.

    Raises:
        FileNotFoundError, ValueError: naming the file and what was expected.
    """

    folder = Path(checkpoints)
    if teacher is not None and not Path(teacher).is_file():  # before reading hundreds of MB
        raise FileNotFoundError(f"--teacher {str(teacher)!r}: no such file")
    it, paths = find_reference_checkpoints(folder)
    conf_path = _find_reference_config(folder, paths["gen"])
    model_over: dict[str, Any] = {}
    data_over: dict[str, Any] = {}
    if conf_path is not None:
        conf = reference_config(conf_path)
        ref_ids = int(conf["ID_class"]) if "ID_class" in conf else None
        if num_ids is not None and ref_ids is not None and int(ref_ids) != num_ids:
            raise ValueError(f"{conf_path}: ID_class: {ref_ids}, but --num-ids is {num_ids}")
        num_ids = num_ids if num_ids is not None else ref_ids
        model_over["last_stride"] = int(conf.get("ID_stride", 2))
        for ours, theirs in (("height", "crop_image_height"), ("width", "crop_image_width")):
            if theirs in conf:
                data_over[ours] = int(conf[theirs])
        log(f"reference config: {conf_path} (ID_class {ref_ids}, ID_stride {model_over['last_stride']})")
    else:
        log(f"no config.yaml beside {folder}: assuming the reference's published settings (configs/latest.yaml)")
    if num_ids is None:
        raise ValueError(f"--num-ids is needed: no config.yaml with ID_class beside {str(folder)!r}")
    if isinstance(num_ids, bool) or not isinstance(num_ids, int) or num_ids < 1:
        raise ValueError(f"--num-ids {num_ids!r}: expected a positive identity count")
    merged = {k: dict(v) for k, v in (overrides or {}).items()}
    for section, values in (("model", model_over), ("data", data_over)):
        for k, v in values.items():
            merged.setdefault(section, {}).setdefault(k, v)  # --set wins over the reference's config.yaml
    cfg = _config(config, merged, num_ids)

    torch.manual_seed(cfg.train.seed)  # D's initialisation, when no dis file is imported
    model = DGNet(dataclasses.replace(cfg.model, backbone_weights="none"), num_ids)
    own = model.state_dict()
    state: dict[str, torch.Tensor] = {}
    for kind in KINDS:
        if kind not in paths:
            log(f"no dis_{it:08d}.pt: D keeps a fresh initialisation (not used by evaluation or visualisation; a "
                "fine-tune trains it from there)")
            continue
        raw = _state_dict(load_weights_only(paths[kind], f"DG-Net {kind} file"), paths[kind], wrapped=True)
        state.update(map_state(raw, LAYOUTS[kind](model), own, str(paths[kind])))
        log(f"read {paths[kind]}")
    model.load_state_dict({**own, **state})
    models: dict[str, torch.nn.Module] = {"dgnet": model}
    sources = {k: str(p) for k, p in paths.items()}
    if teacher is not None:
        t = baseline_teacher(teacher, cfg, log)
        if t.num_ids != num_ids:
            raise ValueError(f"{teacher}: the teacher has {t.num_ids} identities, the DG-Net run {num_ids}; the "
                             "reference needs both trained on the same identities")
        models["teacher"] = t
        sources["teacher"] = str(teacher)
    extra = {"imported": {"from": "NVlabs/DG-Net", "iteration": it, "files": sources,
                          "config": str(conf_path) if conf_path else ""}}
    return build_state(stage="dgnet", iteration=it, cfg=cfg, num_ids=num_ids, models=models, extra=extra)


# --------------------------------------------------------------------------------------------------- the teacher
def baseline_opts(weights: Path) -> dict[str, Any]:
    """``opts.yaml`` beside ``weights`` (``{}`` when absent), checked to describe a ResNet-50 ``ft_net``."""
    path = weights.parent / "opts.yaml"
    if not path.is_file():
        return {}
    try:
        opts = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: not a readable YAML file ({exc})") from None
    if not isinstance(opts, dict):
        raise ValueError(f"{path}: expected the baseline's options mapping, got {type(opts).__name__}")
    other = [k for k in _BASELINE_OTHER_MODELS if opts.get(k)]
    if other:
        raise ValueError(f"{path}: {other[0]}: {opts[other[0]]!r}; the reference's teacher (and dgnet's) is the "
                         "ResNet-50 ft_net, trained without that option")
    return opts


def baseline_state(weights: str | Path, what: str = "--weights") -> dict[str, torch.Tensor]:
    """The state dict of a Person_reID_baseline_pytorch ``ft_net`` file (a bare state dict), with its head's
    matrices checked to be there (they give the identity count and bottleneck width). ``what`` names the file's
    role in errors."""
    weights = Path(weights)
    state = _state_dict(load_weights_only(weights, what), weights, wrapped=False)
    for key in ("classifier.add_block.0.weight", "classifier.classifier.0.weight"):
        if key not in state or state[key].dim() != 2:
            raise ValueError(f"{weights}: no {key!r} matrix; expected a Person_reID_baseline_pytorch ft_net state "
                             "dict (net_last.pth)")
    return state


def baseline_teacher(weights: str | Path, cfg: Config, log: Any = print,
                     state: dict[str, torch.Tensor] | None = None) -> torch.nn.Module:
    """A Person_reID_baseline_pytorch ``ft_net`` file as a dgnet ``ReidBaseline`` (eval mode, CPU), built as the
    reference builds its teacher: layer4's stride from ``opts.yaml`` beside the file (2 when absent), dropout 0.5;
    its identity count and bottleneck width from the file; the rest of its ``ModelConfig`` from ``cfg.model``.
    ``state``: the file's :func:`baseline_state` when already read.
    """

    weights = Path(weights)
    state = baseline_state(weights, "--teacher") if state is None else state
    opts = baseline_opts(weights)
    stride = opts.get("stride", 2)
    if stride not in (1, 2):
        raise ValueError(f"{weights.parent / 'opts.yaml'}: stride: {stride!r}; expected 1 or 2")
    head_dim = int(state["classifier.add_block.0.weight"].shape[0])
    arch = dataclasses.replace(cfg.model, backbone="resnet50", backbone_weights="none", last_stride=int(stride),
                               head_dim=head_dim, dropout_primary=BASELINE_DROPOUT, init_from="")
    teacher = ReidBaseline(arch, int(state["classifier.classifier.0.weight"].shape[0]))
    own = teacher.state_dict()
    teacher.load_state_dict({**own, **map_state(state, baseline_layout(teacher), own, str(weights))})
    where = "from opts.yaml" if "stride" in opts else "the reference's default: no stride in an opts.yaml beside it"
    log(f"read {weights}: ResNet-50 ft_net, {teacher.num_ids} identities, stride {stride} ({where})")
    return teacher.eval()


def import_baseline(weights: str | Path, config: str | None = None, overrides: dict | None = None,
                    log: Any = print) -> dict:
    """A Person_reID_baseline_pytorch ``net_last.pth`` as a dgnet teacher checkpoint (stage ``teacher``), which
    ``dgnet.train --teacher`` and ``dgnet.test`` accept. ``config``/``overrides`` as in :func:`import_reference`
    (default: the real-dataset preset with the file's identity count).

    Raises:
        FileNotFoundError, ValueError: naming the file and what was expected.
    """
    state = baseline_state(weights)
    cfg = _config(config, overrides, int(state["classifier.classifier.0.weight"].shape[0]))
    teacher = baseline_teacher(weights, cfg, log, state)
    extra = {"imported": {"from": "layumi/Person_reID_baseline_pytorch", "files": {"teacher": str(weights)},
                          "stride": teacher.model_cfg.last_stride}}
    return build_state(stage="teacher", iteration=0, cfg=cfg, num_ids=teacher.num_ids, models={"teacher": teacher},
                       extra=extra)
