"""Running a study: arms x seeds from a YAML file, each run in its own folder, resumable.

A study file::

    config: twocam            # a preset or a config YAML (relative to the study file) for every run
    seeds: [0, 1, 2]
    arms: [baseline, control, primary, fine, full, offline]   # built-in names (ARMS) or {name, kind, set}
    set: {train: {threads: 0}} # overrides for every run (the config's sections)
    offline_images: 0         # generated images for the offline arm (0: as many as the real training images)
    quality_pairs: 200        # pairs of dgnet.quality for every DG-Net run

Layout under the study folder::

    runs/teacher/seed<k>/     stage 1 alone: the baseline arm, and the teacher every DG-Net arm of seed k starts from
    runs/<arm>/seed<k>/       one run (a dgnet.train output folder), plus for the offline arm data/ (real + generated)
    runs/.../run.json         the completion marker (written atomically, last): the run's results and measures

A run with a marker is never run again. A run without one resumes from its newest checkpoint (the training's
auto-resume), so a killed study continues where it stopped; with a ``stop`` request (``python -m dgnet.study`` turns
SIGINT and SIGTERM into one) the run in progress saves its iteration and the study stops, to continue from
there. Sharing the teacher across the DG-Net arms of a seed
makes the arms differ only in their loss terms, and their differences paired by seed.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dgnet.checkpoints.runs import open_run
from dgnet.config import Config, resolve_config
from dgnet.fileio import write_text_atomic
from dgnet.generative.dataset import generate_dataset
from dgnet.generative.disentanglement import measure_checkpoint
from dgnet.studies.report import write_report
from dgnet.training.loop import train
from dgnet.training.preemption import Stopped, StopRequest

MARKER = "run.json"
KINDS = ("teacher", "dgnet", "offline")  # stage 1 alone; teacher then DG-Net; stage 1 on real + generated images


@dataclass(frozen=True)
class Arm:
    name: str
    kind: str  # KINDS
    overrides: dict = field(default_factory=dict)  # config overrides of this arm's runs
    about: str = ""


# The paper's arms (RQ1: full against control; RQ3: full against offline; RQ4: primary, fine against full). The
# generated-data terms are loss_teacher (primary feature learning, weight teacher_w) and loss_fine (fine-grained
# mining, fine_w = teacher_w * B_w); the other terms train the generator and stay in every DG-Net arm.
ARMS: dict[str, Arm] = {a.name: a for a in (
    Arm("baseline", "teacher", {}, "the re-id baseline alone (stage 1, the teacher)"),
    Arm("control", "dgnet", {"loss": {"teacher_w": 0.0, "B_w": 0.0}},
        "DG-Net without generated-data terms (no teacher term, no fine-grained term)"),
    Arm("primary", "dgnet", {"loss": {"B_w": 0.0}}, "primary feature learning only (no fine-grained term)"),
    Arm("fine", "dgnet", {"loss": {"primary_on": False}}, "fine-grained feature mining only (no teacher term)"),
    Arm("full", "dgnet", {}, "DG-Net, both generated-data terms"),
    Arm("offline", "offline", {}, "the baseline trained on the real images plus images generated offline by the "
        "full arm's DG-Net of the same seed"),
)}
CONTROL = "control"
BASELINE = "baseline"  # reported from runs/teacher/seed<k>: the stage 1 every DG-Net arm of that seed starts from
STUDY_KEYS = ("config", "seeds", "arms", "set", "offline_images", "quality_pairs")


@dataclass
class Study:
    config: str  # preset name or a config YAML path (resolved)
    seeds: list[int]
    arms: list[Arm]
    overrides: dict
    offline_images: int = 0
    quality_pairs: int = 200
    source: str = "study"

    def to_dict(self) -> dict:
        return {"config": self.config, "seeds": self.seeds, "arms": [vars(a) for a in self.arms],
                "set": self.overrides, "offline_images": self.offline_images, "quality_pairs": self.quality_pairs}


def merge(base: dict, extra: dict) -> dict:
    """``base`` with ``extra``'s nested keys laid over it (neither is changed)."""
    out = copy.deepcopy(base)
    for k, v in extra.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def load_study(path: str | Path) -> Study:
    """Read a study file; every error names the file, the key and what was expected."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"study file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping with keys {STUDY_KEYS}")
    unknown = sorted(set(data) - set(STUDY_KEYS))
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {unknown}; expected some of {STUDY_KEYS}")
    config = str(data.get("config", "twocam"))
    if not (path.parent / config).is_file() and not Path(config).is_file():
        resolved = config  # a preset name; resolve_config names the choices if it is not one
    else:
        resolved = str(path.parent / config) if (path.parent / config).is_file() else config
    seeds = data.get("seeds", [0, 1, 2])
    if not (isinstance(seeds, list) and seeds and all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
            and len(set(seeds)) == len(seeds)):
        raise ValueError(f"{path}: seeds={seeds!r}: expected a list of distinct integers")
    arms = []
    for entry in data.get("arms", list(ARMS)):
        if isinstance(entry, str):
            if entry not in ARMS:
                raise ValueError(f"{path}: arm {entry!r}: expected one of the built-in arms {list(ARMS)} or a "
                                 "mapping {name, kind, set}")
            arms.append(ARMS[entry])
        elif isinstance(entry, dict) and set(entry) <= {"name", "kind", "set", "about"} and "name" in entry:
            kind = entry.get("kind", "dgnet")
            if kind not in KINDS:
                raise ValueError(f"{path}: arm {entry['name']!r}: kind={kind!r}: expected one of {KINDS}")
            arms.append(Arm(str(entry["name"]), kind, entry.get("set") or {}, str(entry.get("about", ""))))
        else:
            raise ValueError(f"{path}: arm {entry!r}: expected a built-in name or a mapping with keys name, kind, "
                             "set, about")
    names = [a.name for a in arms]
    if len(set(names)) != len(names) or "teacher" in names:
        raise ValueError(f"{path}: arms {names}: expected distinct names, none called 'teacher' (the runs/teacher "
                         "folder holds each seed's stage 1)")
    if any(a.kind == "offline" for a in arms) and "full" not in names:
        raise ValueError(f"{path}: the offline arm generates its images with the full arm's DG-Net; add 'full'")
    overrides = data.get("set") or {}
    if not isinstance(overrides, dict):
        raise ValueError(f"{path}: set={overrides!r}: expected a mapping of config sections")
    for key in ("offline_images", "quality_pairs"):
        v = data.get(key, 0 if key == "offline_images" else 200)
        if not isinstance(v, int) or isinstance(v, bool) or v < (0 if key == "offline_images" else 1):
            raise ValueError(f"{path}: {key}={v!r}: expected an integer >= {0 if key == 'offline_images' else 1}")
    study = Study(resolved, list(seeds), arms, overrides, data.get("offline_images", 0),
                  data.get("quality_pairs", 200), str(path))
    for arm in arms:  # every arm's config resolves before anything runs
        run_config(study, arm, seeds[0], Path("."))
    return study


def run_config(study: Study, arm: Arm, seed: int, out: Path, extra: dict | None = None) -> Config:
    """The resolved config of ``arm``'s run for ``seed`` writing to ``out``."""
    overrides = merge(merge(study.overrides, arm.overrides), {"train": {"seed": seed, "output": str(out)}})
    overrides = merge(overrides, extra or {})
    try:
        return resolve_config(study.config, overrides)
    except (ValueError, FileNotFoundError) as exc:
        raise type(exc)(f"{study.source}, arm {arm.name}: {exc}") from None


def run_dir(folder: Path, arm: str, seed: int) -> Path:
    return folder / "runs" / arm / f"seed{seed}"


def read_marker(run: Path) -> dict | None:
    """The completion record of a run, or ``None`` while it is not finished."""
    path = run / MARKER
    return json.loads(path.read_text()) if path.is_file() else None


def _metrics(results: dict, model: str) -> dict:
    plain = results[model]["plain"]
    return {"rank1": plain["rank1"], "mAP": plain["mAP"], "mAP_trapz": plain.get("mAP_trapz")}


def _finish(run: Path, record: dict) -> dict:
    """Mark ``run`` finished, then drop its resumable checkpoints: a finished run is never resumed, and its final
    weights (``teacher.pt``, ``dgnet.pt``) stay for the arms that need them and for dgnet.test / visualize."""
    write_text_atomic(run / MARKER, json.dumps(record, indent=2))  # its presence marks a finished run
    shutil.rmtree(run / "checkpoints", ignore_errors=True)
    return record


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def offline_dataset(dgnet_checkpoint: Path, out: Path, count: int, seed: int) -> Path:
    """A ``folder``-layout set at ``out``: the synthetic set's real train images plus ``count`` (0: as many)
    images generated by ``dgnet_checkpoint`` (``dgnet.generate``'s library call), with its query and gallery.

    Rebuilt from scratch unless a previous build completed (``out/.complete``)."""
    if (out / ".complete").is_file():
        return out
    shutil.rmtree(out, ignore_errors=True)
    run = open_run(dgnet_checkpoint, loader="torch")
    ds = run.dataset(preflight=False)
    generate_dataset(run.model("dgnet"), ds, (run.cfg.data.height, run.cfg.data.width), out,
                     count or len(ds.train), seed, run.device, run.backend)
    for split, samples in (("train", ds.train), ("query", ds.query), ("gallery", ds.gallery)):
        for s in samples:
            src = Path(s.path)
            label = src.name.split("_", 1)[0]  # the Market-layout name's identity: 0001, 0000 (distractor), -1 (junk)
            _link_or_copy(src, out / split / label / src.name)
    write_text_atomic(out / ".complete", "")
    return out


class StudyRunner:
    """Runs ``study`` under ``folder``: :meth:`plan` lists the runs in order, :meth:`run` does the unfinished ones."""

    def __init__(self, study: Study, folder: str | Path, device: str | None = None, log=print,
                 stop: StopRequest | None = None) -> None:
        self.study, self.folder, self.log = study, Path(folder), log
        self.device, self.stop = device, stop

    def _extra(self) -> dict:
        return {"train": {"device": self.device}} if self.device else {}

    def plan(self) -> list[tuple[str, int]]:
        """``(arm, seed)`` in running order: per seed, the teacher first, DG-Net arms, offline last."""
        order = {"teacher": 0, "dgnet": 1, "offline": 2}
        out = []
        for seed in self.study.seeds:
            out.append(("teacher", seed))
            out += [(a.name, seed) for a in sorted(self.study.arms, key=lambda a: order[a.kind])
                    if a.name != BASELINE]  # the baseline arm is the seed's teacher run
        return out

    def arm(self, name: str) -> Arm:
        if name == "teacher":
            return Arm("teacher", "teacher", {}, "stage 1")
        return next(a for a in self.study.arms if a.name == name)

    def check_spec(self) -> None:
        """Record the study's spec in the folder; refuse one whose runs were made with another config."""
        path = self.folder / "study.yaml"
        mine = self.study.to_dict()
        if path.is_file():
            theirs = yaml.safe_load(path.read_text()) or {}
            for key in ("config", "set", "offline_images", "quality_pairs"):
                if theirs.get(key) != mine[key]:
                    raise ValueError(f"{self.folder} holds a study made with {key}={theirs.get(key)!r}, not "
                                     f"{mine[key]!r} ({self.study.source}); use another --out, or the same study "
                                     "(arms and seeds may be added)")
            old = {a["name"]: a for a in theirs.get("arms", [])}
            for a in mine["arms"]:
                if a["name"] in old and old[a["name"]] != a:
                    raise ValueError(f"{self.folder}: arm {a['name']!r} was run as {old[a['name']]}, the study now "
                                     f"defines it as {a}; rename the arm or use another --out")
            mine["arms"] = list({**old, **{a["name"]: a for a in mine["arms"]}}.values())
            mine["seeds"] = sorted(set(theirs.get("seeds", [])) | set(mine["seeds"]))
        write_text_atomic(path, yaml.safe_dump(mine, sort_keys=False))

    def run(self) -> dict[tuple[str, int], dict]:
        """Run every unfinished run; returns the records of the finished ones. A run that fails is reported and
        left unfinished (the next call resumes it), and the runs that need it are skipped."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self.check_spec()
        plan = self.plan()
        records: dict[tuple[str, int], dict] = {}
        failed: set[tuple[str, int]] = set()
        for i, (name, seed) in enumerate(plan, 1):
            run = run_dir(self.folder, name, seed)
            head = f"dgnet.study: [{i}/{len(plan)}] {name} seed {seed}"
            done = read_marker(run)
            if done is not None:
                self.log(f"{head}: finished earlier, kept")
                records[name, seed] = done
                continue
            needs = [("teacher", seed)] if name != "teacher" else []
            if self.arm(name).kind == "offline":
                needs.append(("full", seed))
            missing = [n for n in needs if n not in records]
            if missing:
                self.log(f"{head}: skipped, it needs {', '.join(f'{a} seed {s}' for a, s in missing)}, which did "
                         "not finish")
                failed.add((name, seed))
                continue
            resumed = (run / "checkpoints").is_dir() and any((run / "checkpoints").glob("*.pt"))
            self.log(f"{head}: {'resuming' if resumed else 'starting'} ({run})")
            t0 = time.perf_counter()
            try:
                records[name, seed] = self._run_one(name, seed, run)
            except Stopped:  # a signal: the run saved its iteration; the whole study stops (the next call resumes)
                self.log(f"{head}: stopped by a signal; the next call resumes it")
                raise
            except Exception:  # one run's failure is reported; the study goes on with the runs that do not need it
                failed.add((name, seed))
                run.mkdir(parents=True, exist_ok=True)
                write_text_atomic(run / "failed.txt", traceback.format_exc())
                self.log(f"{head}: failed, see {run / 'failed.txt'}; the next call resumes it")
                continue
            self.log(f"{head}: done in {(time.perf_counter() - t0) / 60:.1f} min")
        self.failed = sorted(failed)
        return records

    def _run_one(self, name: str, seed: int, run: Path) -> dict:
        arm = self.arm(name)
        record: dict[str, Any] = {"arm": name, "seed": seed, "kind": arm.kind}
        t0 = time.perf_counter()
        if arm.kind == "teacher":
            cfg = run_config(self.study, arm, seed, run, self._extra())
            res = train(cfg, resume="auto", stage="teacher", stop=self.stop)
            record["metrics"] = _metrics(res["results"], "teacher")
        elif arm.kind == "dgnet":
            teacher = run_dir(self.folder, "teacher", seed) / "teacher.pt"
            cfg = run_config(self.study, arm, seed, run, merge(self._extra(), {"train": {"teacher": str(teacher)}}))
            res = train(cfg, resume="auto", stage="all", stop=self.stop)
            record["metrics"] = _metrics(res["results"], "dgnet")
            quality = measure_checkpoint(run / "dgnet.pt", None, None, self.study.quality_pairs, 0,
                                         cfg.train.device)
            record["quality"] = quality["rows"]
        else:
            data = offline_dataset(run_dir(self.folder, "full", seed) / "dgnet.pt", run / "data",
                                   self.study.offline_images, seed)
            extra = merge(self._extra(), {"data": {"dataset": "folder", "root": str(data)}})
            cfg = run_config(self.study, arm, seed, run, extra)
            res = train(cfg, resume="auto", stage="teacher", stop=self.stop)
            record["metrics"] = _metrics(res["results"], "teacher")
            record["train_images"] = sum(1 for _ in (data / "train").rglob("*.jpg"))
        record["seconds"] = time.perf_counter() - t0
        return _finish(run, record)


def collect(folder: str | Path, study: Study) -> dict[tuple[str, int], dict]:
    """The finished runs' records of ``study`` in ``folder`` (for a report without running)."""
    folder = Path(folder)
    out = {}
    for name in ["teacher", *[a.name for a in study.arms]]:
        for seed in study.seeds:
            rec = read_marker(run_dir(folder, name, seed))
            if rec is not None:
                out[name, seed] = rec
    return out


def arm_records(records: dict[tuple[str, int], dict], study: Study) -> dict[str, dict[int, dict]]:
    """``{arm: {seed: record}}`` of the finished runs, the baseline arm read from the seeds' teacher runs."""
    out: dict[str, dict[int, dict]] = {}
    for arm in study.arms:
        source = "teacher" if arm.name == BASELINE else arm.name
        out[arm.name] = {seed: records[source, seed] for seed in study.seeds if (source, seed) in records}
    return out


def run_study(path: str | Path, out: str | Path, device: str | None = None, report_only: bool = False,
              log=print, stop: StopRequest | None = None) -> dict:
    """``python -m dgnet.study``: run the unfinished runs of the study file ``path`` under ``out`` (none with
    ``report_only``), then write its report there. Returns ``{"summary", "failed", "report"}``. Raises
    :class:`~dgnet.training.preemption.Stopped` once ``stop`` is set, after the run in progress saved."""
    study = load_study(path)
    runner = StudyRunner(study, out, device, log, stop)
    if report_only:
        records, failed = collect(out, study), []
    else:
        records = runner.run()
        failed = runner.failed
    summ = write_report(arm_records(records, study), {a.name: a.about for a in study.arms}, out, study.to_dict())
    log(f"dgnet.study: report in {Path(out) / 'study.md'}"
        + (f"; unfinished: {', '.join(f'{a} seed {s}' for a, s in failed)}" if failed else ""))
    return {"summary": summ, "failed": failed, "report": str(Path(out) / "study.md")}
