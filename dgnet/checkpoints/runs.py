"""Opening a run: its dataset, and its models rebuilt from a checkpoint.

Everything a command needs before it does its own work: :func:`prepare_dataset` (generate the synthetic set
when absent, read the layout with the config's options, pre-flight the images), :func:`with_data_ids` (the
identity count a config takes from its data), and :class:`Run`, a trained run opened from one of its
checkpoints (its config, device and loader, its models, its dataset).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from dgnet.checkpoints.format import check_finite, load_checkpoint, load_state_checked, model_config_of
from dgnet.config import Config, ModelConfig, config_from_dict, layout_options
from dgnet.data import ReidDataset, load_dataset, resolve_backend, singleton_identities
from dgnet.data.check import preflight
from dgnet.data.synthetic import ensure_dataset
from dgnet.models import DGNet, ReidBaseline
from dgnet.runtime import resolve_device

# ``model.backbone_weights: teacher`` starts Ea's trunk from the trained teacher's (stage 1) instead of ImageNet.
# The synthetic presets use it: without ImageNet weights, the teacher is the only pre-trained trunk there is,
# and Ea trained from scratch at the spec's trunk rate (0.002) stayed at chance level through the demo.
TEACHER_WEIGHTS = "teacher"
MODEL_KINDS = ("dgnet", "teacher")


def prepare_dataset(cfg: Config, verbose: bool = True, generate: bool = True) -> ReidDataset:
    """Read ``cfg.data``'s dataset: the layout with its options, the images pre-flighted (``data.skip_corrupt``).

    ``generate``: create the embedded synthetic set at ``data.root`` when it is absent (training does; a command
    opening a trained run does not, and names the folder instead).
    """

    root = Path(cfg.data.root)
    if cfg.data.dataset == "synthetic" and generate:
        ensure_dataset(root, verbose=verbose, ids=cfg.data.synthetic_ids, cams=cfg.data.synthetic_cams,
                       height=cfg.data.synthetic_height, width=cfg.data.synthetic_width, seed=cfg.data.synthetic_seed,
                       train_cams=cfg.data.synthetic_train_cams, per_cam=cfg.data.synthetic_per_cam,
                       view_tie=cfg.data.synthetic_view_tie)
    elif not root.exists():
        raise FileNotFoundError(
            f"dataset folder {str(root)!r} (data.root, --data-root) does not exist; expected the "
            f"{cfg.data.dataset} layout there (no dataset is downloaded"
            + (", and a trained run's synthetic set is not drawn again elsewhere: pass --data-root" if
               cfg.data.dataset == "synthetic" else "") + ")"
        )
    ds = load_dataset(cfg.data.dataset, root, verbose=verbose, **layout_options(cfg.data))
    for split in ("train", "query", "gallery"):
        samples, skipped = preflight(getattr(ds, split), cfg.data.skip_corrupt)
        if skipped and verbose:
            print(f"dgnet: skipped {skipped} unreadable {split} images (--skip-corrupt)")
        setattr(ds, split, samples)
    if verbose:
        single = singleton_identities(ds.train)
        if single:
            print(f"dgnet: {len(single)} train identities with one image get no DG-Net pairs (the classifier keeps "
                  "their classes)")
    return ds


def with_data_ids(cfg: Config, ds: ReidDataset) -> Config:
    """``cfg`` with ``model.num_ids`` taken from ``ds`` when it is 0 (the synthetic presets); a count that
    disagrees with the data is an error naming both."""
    n = ds.num_train_pids
    if cfg.model.num_ids == 0:
        return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, num_ids=n))
    if cfg.model.num_ids != n:
        raise ValueError(
            f"model.num_ids={cfg.model.num_ids} but {ds.root!r} ({cfg.data.dataset}) has {n} train identities; "
            f"set model.num_ids: {n} (or 0 to take it from the data)"
        )
    return cfg


def build_model(ckpt: dict, name: str, device: torch.device | str = "cpu", fused: bool | None = None,
                fold_upsample: str | None = None, source: str = "the checkpoint") -> torch.nn.Module:
    """Model ``name`` (``"dgnet"`` or ``"teacher"``) of ``ckpt``, built from its own architecture record, its
    weights loaded, in eval mode on ``device``.

    ``fused``/``fold_upsample``: the fast paths (default: the run's ``train.fused`` and
    ``train.fold_upsample``); they change no value, only which kernels run. ``source`` names the file in errors.

    Raises:
        ValueError: no such model, or weights with NaN or infinite values (named): evaluating, visualising or
            exporting them would give plausible-looking garbage.
    """

    if name not in ckpt["models"]:
        raise ValueError(f"{source} holds no {name} model (it has {sorted(ckpt['models'])})")
    check_finite({"models": {name: ckpt["models"][name]}}, f"{source}, model {name}")
    arch = model_config_of(ckpt, name)
    train = config_from_dict(ckpt["config"]).train
    fused = train.fused if fused is None else fused
    if name == "dgnet":
        model = DGNet(arch, ckpt["num_ids"], fused=fused,
                      fold_upsample=train.fold_upsample if fold_upsample is None else fold_upsample)
    elif name == "teacher":
        model = ReidBaseline(arch, ckpt["num_ids"], fused=fused)
    else:
        raise ValueError(f"model {name!r}: expected one of {MODEL_KINDS}")
    model.load_state_dict(ckpt["models"][name])
    return model.to(device).eval()


def build_models(ckpt: dict, device: torch.device | str = "cpu", which: str = "all", fused: bool | None = None,
                 source: str = "the checkpoint") -> dict[str, torch.nn.Module]:
    """The models ``ckpt`` holds (``which``: ``"all"``, ``"dgnet"`` or ``"teacher"``), by :func:`build_model`."""
    if which not in ("all", *MODEL_KINDS):
        raise ValueError(f"which={which!r}: expected all, dgnet or teacher")
    names = [n for n in MODEL_KINDS if n in ckpt["models"] and which in ("all", n)]
    if not names:
        raise ValueError(f"the checkpoint holds no {which} model (it has {sorted(ckpt['models'])})")
    return {n: build_model(ckpt, n, device, fused, source=source) for n in names}


def teacher_from(ckpt: dict, num_ids: int, device: torch.device) -> torch.nn.Module:
    """The frozen teacher a checkpoint holds, built from its own architecture record, in eval mode."""
    if ckpt["num_ids"] != num_ids:
        raise ValueError(f"the checkpoint's teacher has {ckpt['num_ids']} identities, expected {num_ids}")
    return build_model(ckpt, "teacher", device)


def load_teacher(path: str | Path, num_ids: int, device: torch.device) -> tuple[torch.nn.Module, dict]:
    """A frozen teacher from ``teacher.pt`` or any dgnet checkpoint holding one; checks the identity count."""
    ckpt = load_checkpoint(path)
    if "teacher" not in ckpt["models"]:
        raise ValueError(f"--teacher {str(path)!r}: the checkpoint holds no teacher (it has {sorted(ckpt['models'])})")
    if ckpt["num_ids"] != num_ids:
        raise ValueError(
            f"--teacher {str(path)!r} was trained on {ckpt['num_ids']} identities, but the dataset has {num_ids} "
            "train identities; train a teacher on this dataset (omit --teacher)"
        )
    return build_model(ckpt, "teacher", device, source=f"--teacher {str(path)!r}"), ckpt


# ModelConfig keys that change what a weight means without changing its shape: a fine-tune must keep them.
_SAME_MEANING = ("backbone", "last_stride", "app_pool_h")


def require_init_from(path: str | Path) -> None:
    """``model.init_from`` must name a file: checked by ``init_dgnet_from``, and by training before stage 1."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"model.init_from {str(path)!r} does not exist; expected a dgnet checkpoint (e.g. "
                                "from dgnet.convert)")


def init_dgnet_from(model: torch.nn.Module, path: str | Path, model_cfg: ModelConfig, num_ids: int) -> None:
    """Load the ``dgnet`` weights of checkpoint ``path`` into ``model`` (a fresh ``DGNet`` built from ``model_cfg``
    with ``num_ids`` identities): ``model.init_from``, the start of a fine-tune.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: not a dgnet checkpoint, no DG-Net in it, another identity count, another trunk or stride,
            or a tensor of another shape (the first one named, with both shapes).
    """
    source = f"model.init_from {str(path)!r}"
    require_init_from(path)
    ckpt = load_checkpoint(path)
    if "dgnet" not in ckpt["models"]:
        raise ValueError(f"{source}: the checkpoint holds no dgnet model (it has {sorted(ckpt['models'])})")
    if ckpt["num_ids"] != num_ids:
        raise ValueError(f"{source} has {ckpt['num_ids']} identities, but this run has {num_ids} (model.num_ids / "
                         "the dataset's train identities)")
    theirs = model_config_of(ckpt, "dgnet")
    for key in _SAME_MEANING:
        if getattr(theirs, key) != getattr(model_cfg, key):
            raise ValueError(f"{source} was built with model.{key}={getattr(theirs, key)!r}, this run has "
                             f"{getattr(model_cfg, key)!r}; set --set model.{key}={getattr(theirs, key)}")
    check_finite({"models": {"dgnet": ckpt["models"]["dgnet"]}}, f"{source}, model dgnet")
    load_state_checked(model, ckpt["models"]["dgnet"], source)


@dataclass
class Run:
    """A trained run opened from one of its checkpoints: what ``dgnet.test``, ``dgnet.visualize``,
    ``dgnet.quality``, ``dgnet.generate`` and the deployment commands start from.

    ``cfg`` is the config the run trained with, with the data root and loader a command line gave.
    """

    checkpoint: Path
    ckpt: dict
    cfg: Config
    device: torch.device

    @property
    def backend(self) -> str:
        """The input pipeline (``dali`` or ``torch``) for ``cfg.data.loader`` on this device."""

        return resolve_backend(self.cfg.data.loader, self.device)

    def model(self, name: str = "dgnet") -> torch.nn.Module:
        """Model ``name`` of the checkpoint, in eval mode on the run's device."""
        return build_model(self.ckpt, name, self.device, source=str(self.checkpoint))

    def models(self, which: str = "all") -> dict[str, torch.nn.Module]:
        return build_models(self.ckpt, self.device, which, source=str(self.checkpoint))

    def dataset(self, verbose: bool = False, preflight: bool = True) -> ReidDataset:
        """The run's dataset (never generated here: a missing folder is named, with ``--data-root`` to fix it)."""
        if not preflight:
            return load_dataset(self.cfg.data.dataset, self.cfg.data.root, verbose=verbose,
                                **layout_options(self.cfg.data))
        return prepare_dataset(self.cfg, verbose=verbose, generate=False)


def open_run(checkpoint: str | Path, data_root: str | None = None, loader: str | None = None,
             device: str = "auto") -> Run:
    """Load ``checkpoint`` and the config it was trained with, with the data root, loader and device a command
    line overrides."""
    ckpt = load_checkpoint(checkpoint)
    cfg = config_from_dict(ckpt["config"])
    data = dataclasses.replace(cfg.data, root=data_root or cfg.data.root, loader=loader or cfg.data.loader)
    return Run(Path(checkpoint), ckpt, dataclasses.replace(cfg, data=data), resolve_device(device))
