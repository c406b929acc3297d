"""Configuration: small per-component dataclasses, presets, YAML and command-line overrides.

Every number of the DG-Net spec (``../shared/dgnet-spec.md``) lives here once. The reference's
names are kept (``gan_w``, ``recon_x_w``, ...) so users of the reference find them.

Layering (lowest to highest): a preset (``PRESETS``: demo, synthetic, twocam, market1501, dukemtmc,
msmt17), then a YAML file, then command-line flags. A YAML file is a nested mapping of the
sections below and may name its base preset with a top-level ``preset:`` key (default ``demo``).
An unknown section or key anywhere is an error that names it. ``resolve_config`` does the
layering; ``save_config`` writes the resolved result next to a run's outputs.

Deliberate deviations from the reference are switches, and parity is the default:
``ModelConfig.detach_appearance_code``, ``ModelConfig.bn_train_on_generated`` and, in the real-dataset presets
(market1501, dukemtmc, msmt17), ``ModelConfig.teacher_dropout`` on and ``TrainConfig.amp`` off (fp32), as the
reference trains.
The demo and synthetic presets scale the spec's schedule (ramps and decay milestones) to their
shorter runs with ``scale_schedule``, so the ramped-in terms do switch on within them.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dgnet.data.layouts import CUHK03_SUBSETS, DEFAULT_CAMERA_PATTERN, LOADERS
from dgnet.data.streams import BACKENDS, PK_INSTANCES
from dgnet.fileio import write_text_atomic
from dgnet.losses import GENERATOR_TERMS

# Choices of the string-valued options, defined once: the validation below and every command's flags use them.
DATASETS = tuple(LOADERS)  # the layouts dgnet.data.load_dataset reads
LOADER_CHOICES = BACKENDS  # data.loader: the input pipeline (auto: DALI where it imports)
AMP_CHOICES = ("auto", "bf16", "fp16", "off")  # train.amp
FOLD_CHOICES = ("auto", "on", "off")  # train.fold_upsample: where --fused folds the decoder's upsample + conv5x5
LAST_STRIDE_CHOICES = (1, 2)  # model.last_stride: layer4's first block (1: the spec; 2: torchvision's)


@dataclass
class DataConfig:
    dataset: str = "synthetic"  # market1501 | dukemtmc | cuhk03 | msmt17 | folder | synthetic (DATASETS)
    root: str = "data/synthetic"  # the embedded set is generated here when absent
    height: int = 256
    width: int = 128
    batch_size: int = 8  # per stream (a and b)
    loader: str = "auto"  # LOADER_CHOICES: dali | torch | auto (dali where it imports)
    workers: int = 2
    pad: int = 10
    erasing_p: float = 0.5
    skip_corrupt: bool = False
    teacher_batch_size: int = 32  # stage 1 (the baseline) trains on one stream of this size
    # The embedded set (dataset "synthetic"): generated at ``root`` with these parameters when absent.
    synthetic_ids: int = 400
    synthetic_cams: int = 6
    synthetic_height: int = 128
    synthetic_width: int = 64
    synthetic_seed: int = 0  # the set's own seed: train.seed changes the run, not the data
    # The two-camera regime (docs/study.md; dgnet.data.synthetic.plan): cameras per training identity (0: 2..cams at
    # random), images under each (0: 1..4 at random), the probability that an image shows its camera's view.
    synthetic_train_cams: int = 0
    synthetic_per_cam: int = 0
    synthetic_view_tie: float = 0.0
    # Layout options (LAYOUT_OPTIONS says which layout reads each; dgnet.data.load_dataset documents them).
    camera_pattern: str = DEFAULT_CAMERA_PATTERN  # folder: regex whose first group is the 1-based camera of a name
    camera_csv: str = ""  # folder: CSV path,camid (zero-based), relative to root; "": root/cameras.csv if present
    splits: tuple[str, str, str] = ("train", "query", "gallery")  # folder: the train, query and gallery folders
    train_lists: tuple[str, ...] = ("list_train.txt", "list_val.txt")  # msmt17: lists whose union is the train split
    query_list: str = "list_query.txt"  # msmt17
    gallery_list: str = "list_gallery.txt"  # msmt17
    cuhk03_subset: str = "detected"  # cuhk03: CUHK03-NP's detected or labeled boxes (CUHK03_SUBSETS)


# Which layout reads which DataConfig option; the options of other layouts must keep their defaults.
LAYOUT_OPTIONS: dict[str, tuple[str, ...]] = {
    "folder": ("camera_pattern", "camera_csv", "splits"),
    "msmt17": ("train_lists", "query_list", "gallery_list"),
    "cuhk03": ("cuhk03_subset",),
}
# A DataConfig option whose name is not the layout function's keyword.
_OPTION_KEYWORDS = {"cuhk03_subset": "subset"}


def layout_options(data: DataConfig) -> dict[str, Any]:
    """The keyword options ``dgnet.data.load_dataset`` takes for ``data.dataset``'s layout, from ``data``."""
    opts = {_OPTION_KEYWORDS.get(k, k): getattr(data, k) for k in LAYOUT_OPTIONS.get(data.dataset, ())}
    if "camera_csv" in opts:
        csv = opts["camera_csv"]
        opts["camera_csv"] = (Path(data.root) / csv) if csv else None  # an absolute path stays itself
    return opts


@dataclass
class ModelConfig:
    backbone: str = "resnet50"  # Ea's trunk; the demo preset may use a lighter one
    backbone_weights: str = "imagenet"  # imagenet | none | PATH | teacher (Ea from the stage-1 trunk; dgnet.train)
    num_ids: int = 751  # train identities; checked against the dataset
    app_pool_h: int = 4  # appearance code: adaptive max-pool to (4, 1) of 2048 channels
    head_dim: int = 512
    dropout_primary: float = 0.5
    dropout_fine: float = 0.75
    structure_dim: int = 128  # Es output channels
    decoder_res_blocks: int = 4
    mlp_dim: int = 512
    dis_dim: int = 32
    dis_scales: int = 3
    dis_res_blocks: int = 4
    # Stride of layer4's first block (LAST_STRIDE_CHOICES): 1 in the spec (Ea and dgnet's own teacher). A teacher
    # imported from Person_reID_baseline_pytorch keeps the stride it was trained with (its default is 2).
    last_stride: int = 1
    # Deliberate-deviation switches; the defaults are parity with the reference.
    detach_appearance_code: bool = True  # reference detaches f inside Ea
    bn_train_on_generated: bool = True  # reference keeps teacher/Ea-copy BN in train mode on fakes
    # The teacher's dropout (0.5, in its head) stays on while it labels the fakes: the reference puts its whole
    # trainer, teacher included, in train mode after its first image grid (iteration 5,000), so every soft label
    # of its teacher phase passed through dropout. The real-dataset presets turn it on (parity); the default
    # off is what runs before this switch did, and what the demo/synthetic figures in docs/records.md were
    # measured with.
    teacher_dropout: bool = False
    # Start DG-Net (stage 2) from the "dgnet" weights of this dgnet checkpoint (e.g. one made by dgnet.convert),
    # with fresh optimisers and schedule: fine-tuning. Empty: ImageNet / backbone_weights as usual. Only read
    # when stage 2 starts afresh (a resume takes the run's own weights), so it is not part of the fingerprint.
    init_from: str = ""


@dataclass
class _LossSchedule:
    B_w: float = 0.2  # fine-grained weight relative to teacher_w (fine_w = teacher_w * B_w)
    warm_iter: int = 30_000  # ramps start here
    warm_step: float = 0.0005  # per iteration, up to each cap
    r1_w: float = 0.01  # R1 penalty in the D step
    structure_live_p: float = 0.5  # p that the live Es sees the detached x_ab
    # The paper's ablation of primary feature learning: off sets loss_teacher's weight to 0 while the fine-grained
    # term keeps its ramp (fine_w = ramped teacher_w * B_w), which the weights alone cannot express (teacher_w 0
    # turns both off). dgnet.study's arm "fine" uses it.
    primary_on: bool = True


# The loss weights: one key per generator term of dgnet.losses.GENERATOR_TERMS (its spec value as the default; a
# ramped term's value is its cap), then the schedule keys above. The reference's names are kept.
LossConfig = dataclasses.make_dataclass(
    "LossConfig",
    [(t.weight, float, field(default=t.default)) for t in GENERATOR_TERMS if t.default is not None],
    bases=(_LossSchedule,),
    namespace={"__doc__": "Loss weights (from dgnet.losses.GENERATOR_TERMS) and their schedule.",
               "__module__": __name__},
)


@dataclass
class OptimConfig:
    gen_lr: float = 1e-4  # G (Es, decoder, MLPs) and D: Adam
    dis_lr: float = 1e-4
    adam_betas: tuple[float, float] = (0.0, 0.999)
    weight_decay: float = 5e-4
    id_lr_backbone: float = 0.002  # Ea: SGD, Nesterov momentum
    id_lr_heads: float = 0.02
    momentum: float = 0.9
    milestones: tuple[int, ...] = (60_000, 90_000, 105_000)
    gamma: float = 0.1
    iterations: int = 100_000
    # Stage 1: the re-id baseline / teacher.
    teacher_iterations: int = 20_000
    teacher_lr_backbone: float = 0.01
    teacher_lr_heads: float = 0.1
    teacher_milestones: tuple[int, ...] = (14_000,)


@dataclass
class TrainConfig:
    device: str = "auto"  # cpu | cuda | auto
    # bf16 | fp16 | off | auto (bf16 where supported on GPU, off on CPU). The real-dataset presets set off: the
    # reference trains in fp32, and the GAN step is sensitive to precision.
    amp: str = "auto"
    # the fast paths: fused AdaIN kernels (Triton on CUDA, C++ on CPU), the AdaIN MLPs batched, fused optimisers,
    # BatchNorm counters added once per step (dgnet.training.step.deferred_bn_counts)
    fused: bool = False
    # --fused also folds the decoder's upsample + conv5x5 (FOLD_CHOICES): auto (CPU only), on, off
    # (dgnet.models.decoder.fold_applies)
    fold_upsample: str = "auto"
    # --compile: torch.compile Ea's trunk, Es and G (dgnet.training.step.compile_models); CUDA graphs on a GPU. D
    # stays eager: its R1 penalty differentiates twice, which compiled graphs do not support. Values equal eager's
    # to rounding (tests/test_compile.py). On a 2-core CPU it gains nothing and compiles for minutes
    # (docs/training-speed.md).
    compile: bool = False
    seed: int = 0
    deterministic: bool = False
    log_every: int = 20
    image_every: int = 1000
    checkpoint_every: int = 5000
    keep_checkpoints: int = 3
    output: str = "outputs/run"
    max_iterations: int = 0  # --iterations N: caps both stages at N (0: no cap); not part of the fingerprint
    teacher: str = ""  # --teacher PATH: a trained teacher checkpoint; skips stage 1
    grid_samples: int = 4  # fixed images in the training-time PNG grids
    # torch's CPU compute threads (0: torch's default, one per core). On a CPU that other jobs also use, 1: OpenMP
    # threads spin at every barrier while another process holds one of their cores (docs/training-speed.md).
    threads: int = 0
    # Multi-process training (torchrun; dgnet.distributed). World size W = number of processes. Rule: the
    # per-process batch stays data.batch_size (data.teacher_batch_size in stage 1), so the global batch is
    # W x batch; gradients are averaged over processes. With scale_lr every learning rate is multiplied by
    # W (the linear scaling rule; keep it off to train with the spec's rates at a W-times larger batch).
    # sync_bn: Ea's and its heads' BatchNorm normalise with the statistics of the global batch
    # (SyncBatchNorm), which a single process on the combined batch would compute. Both only act when W > 1.
    sync_bn: bool = False
    scale_lr: bool = False


@dataclass
class EvalConfig:
    alpha: float = 0.5  # weight of the fine-grained head in the score p.p' + alpha * f.f' (dgnet.test)
    rerank: bool = True
    k1: int = 20
    k2: int = 6
    lambda_value: float = 0.3
    batch_size: int = 64


@dataclass
class Config:
    name: str = "market1501"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


SECTIONS = ("data", "model", "loss", "optim", "train", "eval")

# Keys that do not change what a run computes (where it writes, how often it logs, how many
# iterations this invocation may run, which loader decodes the same images) are left out of the
# fingerprint, so a run can be resumed with a different cap, output folder or loader.
_UNFINGERPRINTED = {
    "data": {"root", "loader", "workers", "skip_corrupt"},  # the synthetic_* keys do count: they define the data
    "train": {"device", "amp", "fused", "fold_upsample", "compile", "log_every", "image_every", "checkpoint_every",
              "keep_checkpoints", "output", "max_iterations", "teacher", "grid_samples", "threads",
              # act only when W > 1; a resume on another world size says what cannot be exact instead
              "sync_bn", "scale_lr"},
    "model": {"init_from"},  # only where stage 2 starts; its weights are in every checkpoint after that
    "eval": None,  # evaluation settings never affect training
}


def scale_schedule(cfg: Config, iterations: int, teacher_iterations: int) -> Config:
    """Shrink the spec's 100k-iteration schedule to ``iterations`` (in place; returns ``cfg``).

    Warm-up start, decay milestones scale by ``iterations / 100_000``; the ramp step grows by the
    inverse, so every ramped weight reaches its cap at the same fraction of the run as in the spec
    (the teacher weight, cap 2, is at its cap after 34% of the run). Teacher milestones scale by
    ``teacher_iterations / 20_000``.
    """
    spec_optim, spec_loss = OptimConfig(), LossConfig()
    f = iterations / spec_optim.iterations
    ft = teacher_iterations / spec_optim.teacher_iterations
    cfg.optim.iterations = iterations
    cfg.optim.teacher_iterations = teacher_iterations
    cfg.optim.milestones = tuple(max(1, round(m * f)) for m in spec_optim.milestones)
    cfg.optim.teacher_milestones = tuple(max(1, round(m * ft)) for m in spec_optim.teacher_milestones)
    cfg.loss.warm_iter = round(spec_loss.warm_iter * f)
    cfg.loss.warm_step = spec_loss.warm_step / f
    return cfg


def _real(name: str, dataset: str, num_ids: int, iterations: int = 100_000) -> Config:
    cfg = Config(name=name)
    cfg.data.dataset = dataset
    cfg.data.root = f"data/{dataset}"
    cfg.model.num_ids = num_ids
    cfg.model.backbone_weights = "imagenet"
    cfg.model.teacher_dropout = True  # the reference's teacher labels the fakes in train mode (ModelConfig)
    cfg.optim.iterations = iterations
    cfg.train.amp = "off"  # fp32, as the reference trains (apex: false); --amp bf16 trades parity for speed
    cfg.train.output = f"outputs/{name}"
    return cfg


def preset_market1501() -> Config:
    """Market-1501, the spec's schedule: 100k iterations, 751 train identities, ImageNet backbone."""
    return _real("market1501", "market1501", 751)


def preset_dukemtmc() -> Config:
    """DukeMTMC-reID: the Market schedule, 702 train identities."""
    return _real("dukemtmc", "dukemtmc", 702)


def preset_cuhk03() -> Config:
    """CUHK03-NP (``data.cuhk03_subset``: detected, or labeled): the Market schedule, 767 train identities."""
    return _real("cuhk03", "cuhk03", 767)


def preset_msmt17() -> Config:
    """MSMT17: 150k iterations, 1041 train identities (milestones as for Market, per the spec)."""
    return _real("msmt17", "msmt17", 1041, iterations=150_000)


def _synthetic_base(name: str) -> Config:
    cfg = Config(name=name)
    cfg.data.dataset = "synthetic"
    cfg.data.root = "data/synthetic"
    cfg.data.height, cfg.data.width = 128, 64
    cfg.data.pad = 5  # the spec's 10 px at 256x128, scaled with the image
    cfg.data.workers = 1
    cfg.model.backbone = "resnet18"
    # Nothing is downloaded: the teacher trains from scratch, and Ea's trunk starts from the teacher's (a
    # deviation from the paper's ImageNet start, where no ImageNet weights exist; see
    # dgnet.checkpoints.runs.TEACHER_WEIGHTS).
    cfg.model.backbone_weights = "teacher"
    cfg.model.num_ids = 0  # 0: taken from the generated set
    # The teacher from scratch: no ImageNet features for a 10x lower trunk rate to protect, and a head rate of
    # 0.1 drove the loss above chance early on, so trunk and head share 0.02. Ea keeps the spec's trunk rate: 0.02
    # made Ea's activations overflow within two DG-Net iterations. (The measurements: docs/records.md.)
    cfg.optim.teacher_lr_backbone = cfg.optim.teacher_lr_heads = 0.02
    # Ea's heads at the trunk's rate (spec: heads 0.02). The from-scratch trunk's max-pooled features are large
    # (about ten times the squared norm of the teacher's average-pooled ones), and the bottleneck Linear feeds a
    # BatchNorm, so its step relative to its weights grows with that norm: at 0.02 the heads never learned and
    # their gradients wrecked the trunk the teacher handed over. ImageNet-initialised trunks (the real presets)
    # keep the spec. (The measurements: docs/records.md.)
    cfg.optim.id_lr_heads = cfg.optim.id_lr_backbone
    cfg.train.output = f"outputs/{name}"
    cfg.eval.batch_size = 32
    return cfg


def preset_demo() -> Config:
    """The first run: the embedded synthetic set at 64x32, ResNet-18 trained from scratch, a short schedule.

    Sized for a 2-core CPU (its time there: docs/training-speed.md, with the machine): one DG-Net iteration
    runs eight generator passes, three discriminator scales with R1 and twelve Ea passes, and 128x64 at batch 8
    has eight times the pixels of 64x32 at batch 4. The schedule is the spec's scaled down by
    ``scale_schedule`` (ramps and decay points at the same fractions of the run), so every loss term,
    the teacher and fine-grained ones included, is active before the end. It shows the whole pipeline
    working, not the paper's quality: use ``synthetic`` (on a GPU) for that.
    """
    cfg = _synthetic_base("demo")
    cfg.data.height, cfg.data.width = 64, 32
    cfg.data.pad = 3  # the spec's 10 px at 256x128, scaled with the image
    cfg.data.batch_size = 4
    scale_schedule(cfg, iterations=240, teacher_iterations=300)
    cfg.train.log_every = 10
    cfg.train.image_every = 60
    cfg.train.checkpoint_every = 60
    # train.threads stays 0, every core: the loader's decoding is a few milliseconds an iteration, so it does not
    # contend with the compute threads (docs/training-speed.md, for a CPU that other jobs share).
    cfg.eval.k1 = 10  # the synthetic gallery holds few images per identity
    cfg.eval.k2 = 3
    return cfg


def preset_synthetic() -> Config:
    """The embedded set at its native 128x64 with a schedule long enough for the quality comparisons.

    Meant for a GPU (minutes there); on a 2-core CPU a DG-Net iteration at this size takes tens of
    seconds, so the run takes days: ``configs/synthetic_cpu.yaml`` is its cut to 64x32 and 2,400 iterations,
    about 1.5 hours there. The spec's schedule scaled as in the demo.
    """
    cfg = _synthetic_base("synthetic")
    scale_schedule(cfg, iterations=8_000, teacher_iterations=4_000)
    cfg.train.log_every = 50
    cfg.train.image_every = 1_000
    cfg.train.checkpoint_every = 1_000
    cfg.eval.k1 = 10
    cfg.eval.k2 = 3
    return cfg


def preset_twocam() -> Config:
    """The study's regime (docs/study.md): each training identity seen by exactly two of six cameras, two images
    under each, 80% of images showing their camera's view; the demo's 64x32 images and batch 4.

    Sized for one run (teacher, DG-Net, evaluation) within about 15 minutes on two idle cores, from the demo's
    per-iteration cost (docs/training-speed.md): 600 teacher and 600 DG-Net iterations. The generator's
    settings are the study's hypothesis for a G that learns visibly in that budget (docs/study.md): Adam rates
    5e-4 for G and D (five times the spec's, whose 1e-4 is meant for 100k iterations), the first decay at 75% of
    the run instead of 60%, and the generated-data terms starting at 40% of the run instead of 30%, so that Ea
    learns from images G has had time to form. The same for every arm of the study, the control included.
    """
    cfg = _synthetic_base("twocam")
    cfg.data.root = "data/synthetic_twocam"  # another set than the default one at data/synthetic
    cfg.data.synthetic_train_cams = 2
    cfg.data.synthetic_per_cam = 2
    cfg.data.synthetic_view_tie = 0.8
    cfg.data.height, cfg.data.width = 64, 32
    cfg.data.pad = 3
    cfg.data.batch_size = 4
    scale_schedule(cfg, iterations=600, teacher_iterations=600)
    cfg.loss.warm_iter = 240
    cfg.optim.gen_lr = cfg.optim.dis_lr = 5e-4
    cfg.optim.milestones = (450, 570, 630)  # the first decay at 75% instead of 60%: G keeps its rate longer
    cfg.train.log_every = 20
    cfg.train.image_every = 200
    cfg.train.checkpoint_every = 100  # a killed study loses at most 100 iterations of a run
    cfg.train.keep_checkpoints = 1  # a study holds many runs: one resumable checkpoint each
    cfg.eval.k1 = 10
    cfg.eval.k2 = 3
    return cfg


PRESETS: dict[str, typing.Callable[[], Config]] = {
    "demo": preset_demo,
    "synthetic": preset_synthetic,
    "twocam": preset_twocam,
    "market1501": preset_market1501,
    "dukemtmc": preset_dukemtmc,
    "cuhk03": preset_cuhk03,
    "msmt17": preset_msmt17,
}


def _field_types(obj: Any) -> dict[str, Any]:
    return typing.get_type_hints(type(obj))


def _coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    """Convert a YAML/CLI value to the field's declared type, or raise naming the key."""
    origin = typing.get_origin(tp)
    bad = ValueError(f"{source}: {key}={value!r}: expected {getattr(tp, '__name__', tp)}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0", "on", "off"):
            return value.lower() in ("true", "yes", "1", "on")
        raise bad
    if tp is int:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int):
            return value
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise bad from None
        if not f.is_integer():
            raise bad
        return int(f)
    if tp is float:
        if isinstance(value, bool):
            raise bad
        try:
            return float(value)  # YAML reads 1e-4 (no dot) as a string
        except (TypeError, ValueError):
            raise bad from None
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise bad
    if origin is tuple:
        args = typing.get_args(tp)
        if isinstance(value, str):
            try:
                value = yaml.safe_load(value) if value.strip().startswith("[") else value.split(",")
            except yaml.YAMLError:
                raise bad from None
        if not isinstance(value, (list, tuple)):
            raise bad
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], key, source) for v in value)
        if len(value) != len(args):
            raise ValueError(f"{source}: {key}={value!r}: expected {len(args)} values")
        return tuple(_coerce(v, a, key, source) for v, a in zip(value, args, strict=True))
    return value


def apply_overrides(cfg: Config, overrides: dict, source: str) -> Config:
    """Apply a nested mapping ``{section: {key: value}}`` to ``cfg`` in place and return it.

    ``name`` may be set at the top level. Values are converted to each field's type.

    Raises:
        ValueError: an unknown section or key (named, with the valid ones listed), or a value
            that does not convert to the field's type. ``source`` names the file or flag.
    """
    if not isinstance(overrides, dict):
        raise ValueError(f"{source}: expected a mapping of sections {SECTIONS}, got {type(overrides).__name__}")
    for section, values in overrides.items():
        if section == "name":
            cfg.name = str(values)
            continue
        if section not in SECTIONS:
            raise ValueError(f"{source}: unknown config section {section!r}; expected one of {SECTIONS} or 'name'")
        if not isinstance(values, dict):
            raise ValueError(f"{source}: section {section!r} must be a mapping of keys, got {values!r}")
        sub = getattr(cfg, section)
        types = _field_types(sub)
        for key, value in values.items():
            if key not in types:
                raise ValueError(
                    f"{source}: unknown config key {section}.{key}; valid keys of {section!r}: {sorted(types)}"
                )
            setattr(sub, key, _coerce(value, types[key], f"{section}.{key}", source))
    return cfg


class DuplicateKey(yaml.constructor.ConstructorError):
    """A mapping names the same key twice (YAML says keys are unique; PyYAML would keep the last silently)."""


class StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` (no tags that run code) that refuses a key given twice in one mapping, naming the key and
    the lines of both: in a config, the first value would be dropped without a word."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: SafeLoader's own error says so
                break
            if first is not None:
                raise DuplicateKey(None, None, f"key {key!r} given twice (first at line {first.line + 1}; each key "
                                   "may appear once per section)", key_node.start_mark)
            seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, StrictLoader.construct_mapping)


def load_yaml(path: str | Path) -> tuple[str, dict]:
    """Read a YAML config file; returns ``(base preset name, overrides)``. A key given twice is an error naming
    the file, the key and its lines (:class:`StrictLoader`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {str(path)!r} does not exist (and is not a preset: {sorted(PRESETS)})")
    with path.open() as fh:
        try:
            data = yaml.load(fh, Loader=StrictLoader) or {}  # noqa: S506 - a SafeLoader subclass
        except DuplicateKey as exc:
            mark = exc.problem_mark
            raise ValueError(f"{path}, line {mark.line + 1}: {exc.problem}") from None
        except yaml.YAMLError as exc:
            raise ValueError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    base = data.pop("preset", "demo")
    if base not in PRESETS:
        raise ValueError(f"{path}: preset={base!r}: expected one of {sorted(PRESETS)}")
    return base, data


def parse_set(items: list[str]) -> dict:
    """Turn ``["optim.gen_lr=2e-4", ...]`` (the ``--set`` flag) into a nested override mapping."""
    out: dict = {}
    for item in items:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ValueError(f"--set {item!r}: expected SECTION.KEY=VALUE, e.g. optim.gen_lr=2e-4")
        key, value = item.split("=", 1)
        section, name = key.split(".", 1)
        try:
            out.setdefault(section, {})[name] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ValueError(f"--set {item!r}: the value is not valid YAML ({exc.__class__.__name__})") from None
    return out


def resolve_config(spec: str | None = None, overrides: dict | None = None) -> Config:
    """Preset or YAML file ``spec`` (default ``demo``), then ``overrides`` (e.g. from flags)."""
    spec = spec or "demo"
    if spec in PRESETS:
        cfg = PRESETS[spec]()
    else:
        base, data = load_yaml(spec)
        cfg = apply_overrides(PRESETS[base](), data, source=str(spec))
    if overrides:
        apply_overrides(cfg, overrides, source="command line")
    validate(cfg)
    return cfg


# Range rules of validate(), checked at start-up so a bad value fails with its name instead of deep inside a
# stage. Keys not listed take any value of their type (model.num_ids 0: taken from the data).
_POSITIVE_INTS = [("data", k) for k in ("height", "width", "batch_size", "teacher_batch_size")] + [
    ("model", k) for k in ("app_pool_h", "head_dim", "structure_dim", "mlp_dim", "dis_dim", "dis_scales")
] + [("optim", "iterations"), ("optim", "teacher_iterations")] + [
    ("train", k) for k in ("log_every", "image_every", "checkpoint_every", "keep_checkpoints", "grid_samples")
] + [("eval", k) for k in ("batch_size", "k1", "k2")]
_NON_NEGATIVE = [("model", "num_ids"), ("model", "decoder_res_blocks"), ("model", "dis_res_blocks"),
                 ("data", "workers"), ("data", "pad"), ("train", "threads"), ("train", "max_iterations"),
                 ("loss", "warm_iter"), ("loss", "warm_step"), ("optim", "weight_decay")] + [
    ("loss", f.name) for f in dataclasses.fields(LossConfig) if f.name.endswith("_w")
]
_POSITIVE_FLOATS = [("optim", k) for k in ("gen_lr", "dis_lr", "id_lr_backbone", "id_lr_heads", "gamma",
                                           "teacher_lr_backbone", "teacher_lr_heads")]
_UNIT_CLOSED = [("data", "erasing_p"), ("loss", "structure_live_p"), ("eval", "lambda_value")]  # in [0, 1]
_UNIT_OPEN = [("model", "dropout_primary"), ("model", "dropout_fine"), ("optim", "momentum")]  # in [0, 1)
# Es halves the image twice and G doubles it twice, so sizes must be multiples of 4; 32x16 is the smallest
# size every module accepts (D's third scale and Ea's stride-16 map still have a pixel).
_MIN_SIZE = (32, 16)


def _check_device(value: str) -> None:
    allowed = ("auto", "cpu", "cuda")
    if value in allowed:
        return
    index = value.removeprefix("cuda:")
    if value.startswith("cuda:") and index.isdigit():
        return
    raise ValueError(f"train.device={value!r}: expected one of {allowed} or 'cuda:N'")


def positive_int(text: str) -> int:
    """argparse ``type`` for counts and sizes: an integer >= 1, else argparse's usage error naming the flag."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: expected an integer >= 1")
    return value


def check_alpha(alpha: float) -> None:
    """``alpha`` weights the fine-grained head's score term; a negative weight would reward dissimilarity."""
    if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha >= 0):
        raise ValueError(f"eval.alpha={alpha!r}: expected a finite weight >= 0 (0.5 in the spec; 0: primary only)")


def validate(cfg: Config) -> None:
    """Check every value that would otherwise fail (or silently misbehave) deep inside training.

    Raises:
        ValueError: naming the key, its value and what is expected.
    """
    choices = {
        ("train", "amp"): AMP_CHOICES,
        ("train", "fold_upsample"): FOLD_CHOICES,
        ("model", "last_stride"): LAST_STRIDE_CHOICES,
        ("data", "loader"): LOADER_CHOICES,
        ("data", "dataset"): DATASETS,
        ("data", "cuhk03_subset"): CUHK03_SUBSETS,
    }
    for (section, key), allowed in choices.items():
        value = getattr(getattr(cfg, section), key)
        if value not in allowed:
            raise ValueError(f"{section}.{key}={value!r}: expected one of {allowed}")
    _check_device(cfg.train.device)
    defaults = DataConfig()
    for layout, keys in LAYOUT_OPTIONS.items():
        for key in keys:
            value = getattr(cfg.data, key)
            if layout != cfg.data.dataset and value != getattr(defaults, key):
                raise ValueError(f"data.{key}={value!r} is an option of the {layout} layout, but data.dataset is "
                                 f"{cfg.data.dataset!r}; remove it or set data.dataset: {layout}")
    if len(set(cfg.data.splits)) != 3 or not all(cfg.data.splits):
        raise ValueError(f"data.splits={list(cfg.data.splits)!r}: expected three different folder names (train, "
                         "query, gallery)")

    def check(rules, test, expected):
        for section, key in rules:
            value = getattr(getattr(cfg, section), key)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and test(value)):
                raise ValueError(f"{section}.{key}={value!r}: expected {expected}")

    check(_POSITIVE_INTS, lambda v: v > 0, "a positive integer")
    check(_NON_NEGATIVE, lambda v: v >= 0, "a value >= 0")
    check(_POSITIVE_FLOATS, lambda v: v > 0, "a value > 0")
    check(_UNIT_CLOSED, lambda v: 0 <= v <= 1, "a probability in [0, 1]")
    check(_UNIT_OPEN, lambda v: 0 <= v < 1, "a value in [0, 1)")
    betas = cfg.optim.adam_betas
    if not all(math.isfinite(b) and 0 <= b < 1 for b in betas):
        raise ValueError(f"optim.adam_betas={list(betas)!r}: expected two values in [0, 1)")
    for key in ("milestones", "teacher_milestones"):
        ms = getattr(cfg.optim, key)
        if any(m <= 0 for m in ms) or list(ms) != sorted(set(ms)):
            raise ValueError(f"optim.{key}={list(ms)!r}: expected increasing positive iteration numbers")
    h, w = cfg.data.height, cfg.data.width
    if h % 4 or w % 4 or h < _MIN_SIZE[0] or w < _MIN_SIZE[1]:
        raise ValueError(f"data.height x data.width = {h}x{w}: expected multiples of 4 (Es halves the image twice, "
                         f"G doubles it twice), at least {_MIN_SIZE[0]}x{_MIN_SIZE[1]}")
    check_alpha(cfg.eval.alpha)
    # BatchNorm in train mode needs two samples per channel; the teacher's batches hold identities of PK_INSTANCES
    if cfg.data.batch_size < 2:
        raise ValueError(f"data.batch_size={cfg.data.batch_size}: expected at least 2 (Ea's BatchNorm trains on "
                         "batch statistics)")
    if cfg.data.teacher_batch_size % PK_INSTANCES:
        raise ValueError(f"data.teacher_batch_size={cfg.data.teacher_batch_size}: expected a multiple of "
                         f"{PK_INSTANCES} (the teacher's batches hold {PK_INSTANCES} images of each identity)")


def config_from_dict(d: dict) -> Config:
    """Rebuild a ``Config`` from ``Config.to_dict()`` output (e.g. one stored in a checkpoint)."""
    d = dict(d)
    name = d.pop("name", "run")
    return apply_overrides(Config(name=name), d, source="stored config")


# Keys added after runs were saved, left out while they hold their default: a run made before a key existed computed
# what the default computes, and keeps its fingerprint (it can be resumed).
_ADDED_LATER = {"data": {"cuhk03_subset": DataConfig().cuhk03_subset}}


def fingerprint_dict(cfg: Config) -> dict:
    """The part of the config that decides what a run computes (see ``_UNFINGERPRINTED``, ``_ADDED_LATER``)."""
    out = {}
    for section in SECTIONS:
        skip = _UNFINGERPRINTED.get(section, set())
        if skip is None:
            continue
        added = _ADDED_LATER.get(section, {})
        for key, value in dataclasses.asdict(getattr(cfg, section)).items():
            if key in added and value == added[key]:
                continue
            if key not in skip:
                out[f"{section}.{key}"] = list(value) if isinstance(value, tuple) else value
    return out


def fingerprint(cfg: Config) -> str:
    """A short stable hash of ``fingerprint_dict(cfg)``; stored in every checkpoint."""
    blob = json.dumps(fingerprint_dict(cfg), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def save_config(cfg: Config, path: str | Path) -> Path:
    """Write the resolved config as YAML (loadable again with ``--config``) to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    d = cfg.to_dict()

    def plain(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: plain(v) for k, v in x.items()}
        if isinstance(x, (tuple, list)):
            return [plain(v) for v in x]
        return x

    # ``preset`` is the base the overrides apply to; every key is present, so the base hardly matters.
    body = {"preset": cfg.name if cfg.name in PRESETS else "demo", **plain(d)}
    write_text_atomic(path, yaml.safe_dump(body, sort_keys=False))
    return path
