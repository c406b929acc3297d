"""Checkpoints: one self-contained file per save, written atomically, loaded without unpickling code.

A checkpoint is a plain dictionary of tensors and built-in types, so ``torch.load(weights_only=True)``
reads it (no arbitrary code runs on load). It holds everything an exact resume needs: the models,
optimisers, schedulers and grad scaler, every RNG state (Python, NumPy, torch CPU and each CUDA
device), the data streams' positions, the ramped weights, the stage and the iteration, plus the
resolved config and its fingerprint so a checkpoint from another config is refused by name.

Layout of the dictionary (``FORMAT``/``VERSION`` identify it)::

    format, version, stage ("teacher" | "dgnet"), iteration (iterations completed), num_ids,
    config (Config.to_dict()), fingerprint, models {name: state_dict}, arch {name: ModelConfig dict, for
    models built from their own config: the teacher}, optimizers {...},
    schedulers {...}, scaler (state_dict or None), rng {...}, streams {name: state_dict},
    ramps {name: float}, extra {...}
"""

from __future__ import annotations

import dataclasses
import random
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dgnet.config import Config, ModelConfig, config_from_dict, fingerprint, fingerprint_dict
from dgnet.distributed import all_gather_objects, world
from dgnet.fileio import human_bytes, load_weights_only, remove_stale_temporaries, replace_atomic
from dgnet.runtime import RANK_SEED_STRIDE, seed_everything

FORMAT = "dgnet-checkpoint"
VERSION = 1
_NAME = re.compile(r"^(?P<stage>teacher|dgnet)_(?P<it>\d{8})\.pt$")
STAGE_ORDER = {"teacher": 0, "dgnet": 1}
SET_ASIDE = ("torn", "nonfinite")  # the suffixes CheckpointManager.set_aside gives checkpoints never resumed from


# --------------------------------------------------------------------------- RNG state
def get_rng_state() -> dict:
    """Every RNG the training touches, as tensors and built-in types (``weights_only``-safe)."""
    py_version, py_state, py_gauss = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": {"version": py_version, "state": torch.tensor(py_state, dtype=torch.int64), "gauss": py_gauss},
        "numpy": {
            "kind": np_kind,
            "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "gauss": float(np_gauss),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def set_rng_state(state: dict) -> None:
    """Restore what ``get_rng_state`` captured. CUDA states are restored for the devices present."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])


# --------------------------------------------------------------------------- safe encoding
def to_safe(obj: Any) -> Any:
    """Encode NumPy arrays/scalars (which ``weights_only`` loading refuses) reversibly; see ``from_safe``."""
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": torch.from_numpy(np.ascontiguousarray(obj)), "dtype": str(obj.dtype)}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {k: to_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_safe(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(to_safe(v) for v in obj)
    return obj


def from_safe(obj: Any) -> Any:
    """Inverse of ``to_safe``."""
    if isinstance(obj, dict):
        if "__ndarray__" in obj and set(obj) == {"__ndarray__", "dtype"}:
            return obj["__ndarray__"].numpy().astype(obj["dtype"])
        return {k: from_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [from_safe(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(from_safe(v) for v in obj)
    return obj


# --------------------------------------------------------------------------- finiteness
class NonFiniteWeights(ValueError):
    """Tensors of a model (or its optimiser state) are NaN or infinite: never saved as good, never evaluated."""


def nonfinite_tensors(tensors: dict[str, Any], prefix: str = "") -> list[str]:
    """The names of the floating tensors in a (nested) mapping that hold a NaN or an infinity."""
    bad = []
    for k, v in tensors.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            bad += nonfinite_tensors(v, f"{name}.")
        elif isinstance(v, (list, tuple)):
            bad += nonfinite_tensors(dict(enumerate(v)), f"{name}.")
        elif torch.is_tensor(v) and v.is_floating_point() and v.numel() and not bool(torch.isfinite(v).all()):
            bad.append(name)
    return bad


def check_finite(state: dict, what: str, optimizers: bool = False) -> None:
    """Raise :class:`NonFiniteWeights` naming the tensors of ``state["models"]`` (and, with ``optimizers``, its
    optimiser states) that are not finite. ``what`` names the file or the run in the message."""
    bad = nonfinite_tensors(state.get("models", {}), "models.")
    if optimizers:
        bad += nonfinite_tensors({k: o.get("state", {}) for k, o in state.get("optimizers", {}).items()}, "optimizers.")
    if bad:
        shown = ", ".join(bad[:6]) + (f" and {len(bad) - 6} more" if len(bad) > 6 else "")
        raise NonFiniteWeights(f"{what}: {len(bad)} tensor(s) hold NaN or infinite values ({shown})")


def state_bytes(state: Any) -> int:
    """The bytes of every tensor in a (nested) checkpoint dictionary: about the size of its file."""
    if torch.is_tensor(state):
        return state.numel() * state.element_size()
    if isinstance(state, dict):
        return sum(state_bytes(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return sum(state_bytes(v) for v in state)
    return 0


# --------------------------------------------------------------------------- files
def save_atomic(state: dict, path: str | Path) -> Path:
    """``torch.save`` to a temporary file in the same folder, fsync, then ``os.replace`` onto ``path``.

    A crash at any point leaves either the old file or the new one, never a torn one. Models with a NaN or an
    infinity are refused (:class:`NonFiniteWeights`); a full disk stops with ``dgnet.fileio.DiskFull``.
    """
    check_finite(state, str(path))
    return replace_atomic(path, lambda fh: torch.save(state, fh), size_hint=state_bytes(state),
                          advice="Free some space and run again (--resume continues)")


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a dgnet checkpoint with ``torch.load(weights_only=True)``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not a dgnet checkpoint, is damaged, or holds pickled objects (never loaded).
    """
    path = Path(path)
    ckpt = load_weights_only(path, "checkpoint", map_location)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"checkpoint {str(path)!r} is not a dgnet checkpoint (expected format {FORMAT!r})")
    if ckpt.get("version") != VERSION:
        raise ValueError(f"checkpoint {str(path)!r} has format version {ckpt.get('version')}, expected {VERSION}")
    return ckpt


def check_compatible(ckpt: dict, cfg: Config, path: str | Path) -> None:
    """Refuse a checkpoint whose config fingerprint differs from ``cfg``'s, naming the keys that differ.

    A checkpoint written before a config key existed stores no value for it; rebuilt from the stored
    config, it takes the key's default, so it stays compatible while the run keeps that default.
    """
    if ckpt.get("fingerprint") == fingerprint(cfg):
        return
    mine = fingerprint_dict(cfg)
    try:
        theirs = fingerprint_dict(config_from_dict(ckpt["config"]))
    except (KeyError, ValueError):
        theirs = {}
    diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
    if theirs and not diff:
        return
    shown = ", ".join(f"{k}: checkpoint {theirs.get(k)!r} vs now {mine.get(k)!r}" for k in diff[:8])
    raise ValueError(
        f"checkpoint {str(path)!r} was written by another config (fingerprint {ckpt.get('fingerprint')} "
        f"vs {fingerprint(cfg)}); differing keys: {shown or 'unknown'}. "
        "Resume with the same config, or start a new output folder."
    )


class CheckpointManager:
    """Numbered checkpoints ``<folder>/<stage>_<iteration:08d>.pt``, keeping the last ``keep`` per stage.

    ``latest()`` is the newest by (stage order, iteration): a finished teacher stage is older than
    any DG-Net checkpoint.
    """

    def __init__(self, folder: str | Path, keep: int = 3) -> None:
        if keep < 1:
            raise ValueError(f"keep={keep}: expected at least 1 checkpoint to keep")
        self.folder = Path(folder)
        self.keep = keep

    def sweep(self) -> list[Path]:
        """Remove the temporaries that killed writes left in the folder (each up to a checkpoint's size): at the
        start of a run, before anything is written, so they cannot fill the disk a resume needs."""
        return remove_stale_temporaries(self.folder)

    def path(self, stage: str, iteration: int) -> Path:
        if stage not in STAGE_ORDER:
            raise ValueError(f"stage={stage!r}: expected one of {sorted(STAGE_ORDER)}")
        return self.folder / f"{stage}_{iteration:08d}.pt"

    def list(self, stage: str | None = None) -> list[Path]:
        """Checkpoints present, oldest first."""
        if not self.folder.is_dir():
            return []
        found = []
        for p in self.folder.iterdir():
            m = _NAME.match(p.name)
            if m and (stage is None or m["stage"] == stage):
                found.append((STAGE_ORDER[m["stage"]], int(m["it"]), p))
        return [p for _, _, p in sorted(found)]

    def latest(self, stage: str | None = None) -> Path | None:
        items = self.list(stage)
        return items[-1] if items else None

    def latest_iteration(self, stage: str) -> int | None:
        """The iteration of ``stage``'s newest checkpoint (from its file name), or ``None`` without one."""
        last = self.latest(stage)
        return int(_NAME.match(last.name)["it"]) if last is not None else None

    def save(self, state: dict, stage: str, iteration: int) -> Path:
        """Write ``state`` atomically, then delete this stage's checkpoints beyond the newest ``keep`` (and the
        temporaries of killed writes).

        Refused, before anything is written, when a model or optimiser tensor is not finite
        (:class:`NonFiniteWeights`). Warns when the folder's free space would not hold two more checkpoints.
        """
        path = self.path(stage, iteration)
        check_finite(state, f"{stage} iteration {iteration}", optimizers=True)
        need = state_bytes(state)
        self.folder.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(self.folder).free
        if free < 2 * need:
            warnings.warn(f"{self.folder}: {human_bytes(free)} free, and a checkpoint takes about "
                          f"{human_bytes(need)}: the next saves may not fit", stacklevel=2)
        path = save_atomic(state, path)
        for old in self.list(stage)[: -self.keep]:
            old.unlink(missing_ok=True)
        self.sweep()  # and any temporary a killed write left since the run started
        self.prune_set_aside()
        return path

    def set_aside_files(self, why: str) -> list[Path]:
        """Checkpoints set aside as ``<name>.<why>`` (``torn`` or ``nonfinite``), oldest first."""
        if not self.folder.is_dir():
            return []
        found = []
        for p in self.folder.iterdir():
            m = _NAME.match(p.name[: -len(why) - 1]) if p.name.endswith(f".pt.{why}") else None
            if m:
                found.append((STAGE_ORDER[m["stage"]], int(m["it"]), p))
        return [p for _, _, p in sorted(found)]

    def prune_set_aside(self) -> list[Path]:
        """Once a good checkpoint has been written after them, keep only the newest ``.torn`` and the newest
        ``.nonfinite`` file (for a look at what went wrong) and delete older ones: each is a checkpoint's size,
        and none is ever resumed from. Returns what was removed."""
        removed = []
        for why in SET_ASIDE:
            for p in self.set_aside_files(why)[:-1]:
                p.unlink(missing_ok=True)
                removed.append(p)
        return removed

    def newest_intact(self, map_location: str | torch.device = "cpu", before: int | None = None,
                      stage: str | None = None) -> tuple[Path, dict] | tuple[None, None]:
        """The newest checkpoint that loads and holds only finite tensors, with its contents (optionally of
        ``stage`` only, and only below ``before`` iterations of that stage). A torn or damaged one is renamed
        ``<name>.torn`` and one with non-finite tensors ``<name>.nonfinite`` (kept for a look, never resumed
        from), each with a warning naming it."""
        for p in reversed(self.list(stage)):
            m = _NAME.match(p.name)
            if before is not None and int(m["it"]) >= before:
                continue
            try:
                ckpt = load_checkpoint(p, map_location)
                check_finite(ckpt, str(p))
            except NonFiniteWeights as exc:
                self.set_aside(p, "nonfinite", str(exc))
                continue
            except ValueError as exc:
                self.set_aside(p, "torn", str(exc))
                continue
            return p, ckpt
        return None, None

    def set_aside(self, path: Path, why: str, detail: str) -> Path:
        """Rename a checkpoint out of the resume order (``<name>.<why>``), with a warning naming it."""
        aside = path.with_name(f"{path.name}.{why}")
        path.replace(aside)
        warnings.warn(f"{path} set aside as {aside.name}: {detail}", stacklevel=3)
        return aside


def load_state_checked(module: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """``module.load_state_dict(state)`` (strict), refusing first with a ``ValueError`` that names ``source``, the
    first missing or unexpected key, or the first key whose shape differs, with both shapes.

    PyTorch's own error lists every mismatch of every key at once; this names the one to look at first.
    """
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        what = (f"has no {missing[0]!r} ({len(missing)} missing)" if missing
                else f"holds {unexpected[0]!r}, which the model has not ({len(unexpected)} unexpected)")
        raise ValueError(f"{source}: {what}; expected the state of a {type(module).__name__}")
    for k, v in own.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise ValueError(f"{source}: {k!r} has shape {tuple(state[k].shape)}, expected {tuple(v.shape)}")
    module.load_state_dict(state)


def arch_only(model_cfg: ModelConfig) -> ModelConfig:
    """``model_cfg`` with ``backbone_weights="none"``: for models whose weights come from a checkpoint
    (no ImageNet download or file read just to be overwritten)."""
    return dataclasses.replace(model_cfg, backbone_weights="none")


def model_config_of(ckpt: dict, name: str) -> ModelConfig:
    """The ``ModelConfig`` that model ``name`` of ``ckpt`` was built with, as :func:`arch_only` (its weights
    are in the checkpoint): its own record (``arch``) when the checkpoint has one, else the run's."""
    arch = ckpt.get("arch", {}).get(name)
    return arch_only(ModelConfig(**arch) if arch is not None else config_from_dict(ckpt["config"]).model)


def build_state(
    *,
    stage: str,
    iteration: int,
    cfg: Config,
    num_ids: int,
    models: dict[str, torch.nn.Module],
    optimizers: dict[str, torch.optim.Optimizer] | None = None,
    schedulers: dict[str, Any] | None = None,
    scaler: Any = None,
    streams: dict[str, Any] | None = None,
    ramps: dict[str, float] | None = None,
    extra: dict | None = None,
    rng_ranks: list[dict] | None = None,
) -> dict:
    """Assemble the checkpoint dictionary (see module docstring) from live training objects.

    ``rng_ranks``: every rank's RNG state (:func:`gather_rng`), stored with the world size so that a resume on the
    same number of processes restores each rank's own streams (:func:`restore_rank`).
    """
    state = {
        "format": FORMAT,
        "version": VERSION,
        "stage": stage,
        "iteration": int(iteration),
        "num_ids": int(num_ids),
        "config": cfg.to_dict(),
        "fingerprint": fingerprint(cfg),
        "models": {k: m.state_dict() for k, m in models.items()},
        # the architecture of models built from their own ModelConfig (the teacher may come from another run)
        "arch": {k: dataclasses.asdict(m.model_cfg) for k, m in models.items()
                 if isinstance(getattr(m, "model_cfg", None), ModelConfig)},
        "optimizers": {k: o.state_dict() for k, o in (optimizers or {}).items()},
        "schedulers": {k: s.state_dict() for k, s in (schedulers or {}).items()},
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": get_rng_state(),
        "streams": {k: to_safe(s.state_dict()) for k, s in (streams or {}).items()},
        "ramps": {k: float(v) for k, v in (ramps or {}).items()},
        "extra": to_safe(extra or {}),
    }
    if rng_ranks is not None:
        state["world_size"] = len(rng_ranks)
        state["rng_ranks"] = rng_ranks
    return state


_IMPL_KEYS = ("foreach", "fused", "capturable")


def load_optimizer_state(opt: torch.optim.Optimizer, state: dict) -> None:
    """``opt.load_state_dict(state)``, keeping ``opt``'s own implementation (fused, foreach or the loop).

    PyTorch restores those flags from the saved groups, so a run saved without ``--fused`` and resumed with
    it would silently keep the old implementation (and the reverse). The flags are put back after loading,
    and the per-parameter ``step`` counts moved to where that implementation keeps them: on the parameter's
    device for fused/capturable, a CPU scalar otherwise.
    """
    impl = [{k: g[k] for k in _IMPL_KEYS if k in g} for g in opt.param_groups]
    opt.load_state_dict(state)
    for group, keep in zip(opt.param_groups, impl, strict=True):
        group.update(keep)
        on_device = bool(group.get("fused") or group.get("capturable"))
        for p in group["params"]:
            st = opt.state.get(p, {})
            step = st.get("step")
            if torch.is_tensor(step):
                st["step"] = step.to(device=p.device, dtype=torch.float32) if on_device else step.cpu()


def restore_state(
    ckpt: dict,
    *,
    models: dict[str, torch.nn.Module],
    optimizers: dict[str, torch.optim.Optimizer] | None = None,
    schedulers: dict[str, Any] | None = None,
    scaler: Any = None,
    streams: dict[str, Any] | None = None,
    rng: bool = True,
) -> None:
    """Load what ``build_state`` saved back into live objects (strict: every named part must be present)."""

    def need(section: str, name: str) -> Any:
        try:
            return ckpt[section][name]
        except KeyError:
            raise ValueError(f"checkpoint has no {section}[{name!r}] (holds {sorted(ckpt.get(section, {}))})") from None

    for k, m in models.items():
        m.load_state_dict(need("models", k))
    for k, o in (optimizers or {}).items():
        load_optimizer_state(o, need("optimizers", k))
    for k, s in (schedulers or {}).items():
        s.load_state_dict(need("schedulers", k))
    if scaler is not None and ckpt.get("scaler") is not None:
        scaler.load_state_dict(ckpt["scaler"])
    elif scaler is not None:  # train.amp changed to fp16 since the checkpoint
        warnings.warn("resume: the checkpoint was written without fp16 gradient scaling and this run uses it; the "
                      "loss scale starts afresh (train.amp differs from the run that wrote it)", stacklevel=2)
    elif ckpt.get("scaler") is not None:  # train.amp changed from fp16
        warnings.warn("resume: the checkpoint was written with fp16 gradient scaling and this run does not use it; "
                      "its loss scale is dropped (train.amp differs from the run that wrote it)", stacklevel=2)
    for k, s in (streams or {}).items():
        s.load_state_dict(from_safe(need("streams", k)))
    if rng:
        set_rng_state(ckpt["rng"])


# --------------------------------------------------------------------------- resume across processes
def gather_rng() -> list[dict]:
    """Every rank's RNG state in rank order (a collective under torchrun: every rank calls it)."""

    return all_gather_objects(get_rng_state())


def restore_rank(ckpt: dict, what: str, streams: dict[str, Any] | None, scale_lr: bool = False, **parts: Any) -> None:
    """:func:`restore_state` for this rank of the current process group (one process: rank 0 of 1).

    On the saved world size the resume is exact: this rank's RNG state, and the streams' positions (rank 0
    saved its streams; every rank has consumed as many batches of its own shard, as the sampler gives every
    rank the same number per epoch, so each continues at that position of its shard). On another world size
    models, optimisers and schedulers are restored, the streams start the saved epoch afresh on the new
    shards, every rank reseeds, and rank 0 says what is not exact. ``what`` names the stage in that message.
    """
    rank, size = world()
    saved = int(ckpt.get("world_size", 1))
    if saved == size:
        restore_state(ckpt, streams=None, **parts)
        for name, st in (streams or {}).items():
            state = from_safe(ckpt["streams"][name]) if name in ckpt.get("streams", {}) else None
            if state is None:
                raise ValueError(f"checkpoint has no streams[{name!r}] (holds {sorted(ckpt.get('streams', {}))})")
            st.load_state_dict({**state, "rank": rank})
        if size > 1 and "rng_ranks" in ckpt:
            set_rng_state(ckpt["rng_ranks"][rank])
        return
    restore_state(ckpt, streams=None, rng=False, **parts)
    for name, st in (streams or {}).items():
        epoch = int(from_safe(ckpt.get("streams", {}).get(name, {"epoch": 0}))["epoch"])
        st.load_state_dict({"epoch": epoch, "position": 0})
    seed_everything(int(ckpt["iteration"]) * 7919 + rank * RANK_SEED_STRIDE + 1)
    if rank == 0:
        print(f"dgnet: {what}: the checkpoint was written by {saved} process(es), this run has {size}: models, "
              "optimisers, schedulers and the ramps are restored, but the resume is not exact: the data shards, "
              "the position within the epoch (the saved epoch restarts) and the RNG streams differ"
              + ("; train.scale_lr: the learning rates stay those of the saved world size" if scale_lr else ""))
