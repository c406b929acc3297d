"""dgnet.study: the statistics against hand-computed cases, the arms' loss weights, the offline arm's data set, and
a tiny study end to end that resumes after a failure without running a finished run again."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from dgnet.config import resolve_config
from dgnet.evaluation.stats import T975, paired_interval, summarize, t975
from dgnet.studies import runner as study_runner
from dgnet.studies.report import format_markdown, summary
from dgnet.training.step import ramp_weights
from tests._tiny_run import TINY_SET, make_tiny_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------------------------- statistics by hand


def test_summary_and_paired_interval_by_hand():
    # control mAP over seeds 0, 1, 2: 42, 43, 45; full: 45, 44, 49.
    # control: mean 130 / 3 = 43.3333; deviations -1.3333, -0.3333, 1.6667; squares 1.7778 + 0.1111 + 2.7778 =
    # 4.6667 = 14/3; sample variance 14/3 / 2 = 7/3; std sqrt(7/3) = 1.527525.
    s = summarize([42, 43, 45])
    assert (s["n"], s["min"], s["max"]) == (3, 42, 45)
    assert s["mean"] == pytest.approx(43.333333, abs=1e-6)
    assert s["std"] == pytest.approx(1.527525, abs=1e-6)
    # differences full - control: 3, 1, 4; mean 8/3 = 2.666667; deviations 0.3333, -1.6667, 1.3333; squares sum
    # 0.1111 + 2.7778 + 1.7778 = 14/3; sd sqrt(7/3) = 1.527525; standard error sd / sqrt(3) = sqrt(7/9) = 0.881917;
    # t(0.975, df 2) = 4.303; half width 4.303 * 0.881917 = 3.794889: the interval [-1.128222, 6.461556].
    d = paired_interval([45, 44, 49], [42, 43, 45])
    assert d["values"] == [3, 1, 4]
    assert d["mean"] == pytest.approx(2.666667, abs=1e-6)
    assert d["half_width"] == pytest.approx(3.794889, abs=1e-6)
    assert (d["lo"], d["hi"]) == (pytest.approx(-1.128222, abs=1e-6), pytest.approx(6.461556, abs=1e-6))
    # two seeds, differences 2 and 4: mean 3, sd sqrt(2) = 1.414214, se 1, t(0.975, 1) = 12.706: [-9.706, 15.706]
    d2 = paired_interval([12, 14], [10, 10])
    assert (d2["lo"], d2["hi"]) == (pytest.approx(-9.706), pytest.approx(15.706))
    one = paired_interval([5], [3])  # one seed: a difference, no interval
    assert one["mean"] == 2 and one["lo"] is None and summarize([7])["std"] is None
    with pytest.raises(ValueError, match="one pair per seed"):
        paired_interval([1, 2], [1])


def test_t_quantiles():
    # The table's entries against values known to more digits (Student's t, 0.975): df 1, 2, 10, 30.
    assert [T975[0], T975[1], T975[9], T975[29]] == [12.706, 4.303, 2.228, 2.042]
    assert all(a > b for a, b in zip(T975, T975[1:], strict=False))  # decreasing in df
    # Beyond the table, the expansion against the exact quantiles 2.0211 (df 40), 2.0003 (60), 1.9799 (120),
    # and it joins the table at df 30 (2.0423 exact).
    for df, exact in ((40, 2.0211), (60, 2.0003), (120, 1.9799)):
        assert t975(df) == pytest.approx(exact, abs=1e-3)
    assert t975(31) < t975(30) and t975(10**6) == pytest.approx(1.96, abs=1e-4)
    with pytest.raises(ValueError, match="df=0"):
        t975(0)


def _record(rank1: float, m_ap: float, followed_b: float | None = None) -> dict:
    rec = {"metrics": {"rank1": rank1, "mAP": m_ap}}
    if followed_b is not None:
        row = {"followed_b": followed_b, "leaked_a": 0.1, "silhouette_iou": 0.5, "silhouette_auc": 0.7}
        rec["quality"] = {k: row for k in ("swap G(s_a,f_b)", "recon G(s_a,f_a)", "ideal x_ab (rendered)")}
    return rec


def test_report_summary_pairs_by_seed():
    by_arm = {"control": {0: _record(0.50, 0.42, 0.1), 1: _record(0.52, 0.43, 0.2), 2: _record(0.55, 0.45, 0.3)},
              "full": {0: _record(0.50, 0.45, 0.4), 1: _record(0.51, 0.44, 0.5), 2: _record(0.60, 0.49, 0.6)},
              "baseline": {1: _record(0.40, 0.30)}}
    s = summary(by_arm)
    # percent; the same numbers as the hand-computed case above
    assert s["full"]["vs_control"]["mAP"]["lo"] == pytest.approx(-1.128222, abs=1e-5)
    assert s["full"]["vs_control"]["rank1"]["values"] == pytest.approx([0, -1, 5])
    assert s["baseline"]["vs_control"]["mAP"]["values"] == pytest.approx([-13])  # only seed 1 is shared
    assert "vs_control" not in s["control"]
    assert s["full"]["quality"]["swap G(s_a,f_b): followed_b"]["mean"] == pytest.approx(50)
    assert "quality" not in s["baseline"]
    md = format_markdown(s, {"full": "DG-Net"})
    assert "| full | 0, 1, 2 | 53.7 ± 5.5 [50.0, 60.0] | 50.0, 51.0, 60.0 |" in md
    assert "+2.7 [-1.1, +6.5]" in md and "(one seed: no interval)" in md


# ----------------------------------------------------------------------------------------------- the arms


def test_the_arms_switch_the_generated_data_terms():
    """At an iteration past the ramps, each arm's weights of loss_teacher (teacher_w) and loss_fine (fine_w)."""
    cfg = resolve_config("twocam")
    late = cfg.optim.iterations - 1
    on = {}
    for name in ("control", "primary", "fine", "full"):
        arm = study_runner.ARMS[name]
        w = ramp_weights(late, resolve_config("twocam", arm.overrides).loss)
        on[name] = (w["teacher_w"] > 0, w["fine_w"] > 0)
    assert on == {"control": (False, False), "primary": (True, False), "fine": (False, True), "full": (True, True)}
    full = ramp_weights(late, cfg.loss)
    fine = ramp_weights(late, resolve_config("twocam", study_runner.ARMS["fine"].overrides).loss)
    assert fine["fine_w"] == full["fine_w"] == pytest.approx(cfg.loss.teacher_w * cfg.loss.B_w)


def test_the_preset_fits_the_regime():
    cfg = resolve_config("twocam")
    assert (cfg.data.synthetic_train_cams, cfg.data.synthetic_per_cam) == (2, 2)
    assert cfg.data.root != resolve_config("demo").data.root  # another set: ensure_dataset refuses a mismatch
    assert 0 < cfg.loss.warm_iter < cfg.optim.iterations


def test_study_file_errors_name_the_problem(tmp_path):
    bad = tmp_path / "s.yaml"
    for text, needle in (("arms: [control, nonsense]", "arm 'nonsense'"), ("seeds: [1, 1]", "seeds=[1, 1]"),
                         ("arms: [offline]", "add 'full'"), ("colour: 1", "unknown key"),
                         ("set: {loss: {nope: 1}}", "loss.nope")):
        bad.write_text(text)
        with pytest.raises(ValueError, match=needle.replace("[", r"\[").replace("]", r"\]")):
            study_runner.load_study(bad)


# ----------------------------------------------------------------------------------------------- the offline arm's set


def test_offline_dataset_is_real_plus_generated(tmp_path):
    from dgnet.data import load_dataset

    ckpt, ds, _ = make_tiny_checkpoint(tmp_path)
    out = study_runner.offline_dataset(ckpt, tmp_path / "offline", 0, seed=3)
    both = load_dataset("folder", out, verbose=False)
    assert len(both.train) == 2 * len(ds.train)  # 0: as many generated images as real ones
    names = lambda samples: sorted(Path(s.path).name for s in samples)  # noqa: E731
    assert names(both.query) == names(ds.query) and names(both.gallery) == names(ds.gallery)
    assert both.num_train_pids == ds.num_train_pids  # generated images keep the train identities
    # the cameras and identities of the real images survive the move to the folder layout
    real = {Path(s.path).name: (s.pid, s.camid) for s in ds.query + ds.gallery}
    assert all(real[Path(s.path).name] == (s.pid, s.camid) for s in both.query + both.gallery)
    (out / "train").rename(out / "moved")  # a finished build is kept: not rebuilt, even if damaged since
    assert study_runner.offline_dataset(ckpt, out, 0, seed=3) == out and not (out / "train").exists()


# ----------------------------------------------------------------------------------------------- end to end


def _tiny_study(tmp_path: Path) -> Path:
    from tests._tiny_run import make_tiny_set

    root = make_tiny_set(tmp_path / "syn")
    data = {**TINY_SET, "root": str(root), "height": 64, "width": 32, "pad": 2, "batch_size": 2,
            "teacher_batch_size": 8, "workers": 0, "loader": "torch"}
    spec = {"config": "demo", "seeds": [0, 1], "arms": ["baseline", "control"], "quality_pairs": 8,
            "set": {"data": data,
                    "optim": {"iterations": 3, "teacher_iterations": 2},
                    "train": {"threads": 1, "deterministic": True, "checkpoint_every": 1, "image_every": 100,
                              "log_every": 1,
                              "device": "cpu"},
                    "eval": {"batch_size": 32, "k1": 4, "k2": 2, "rerank": False}}}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.slow
def test_tiny_study_resumes_without_rerunning(tmp_path, monkeypatch):
    import dgnet.training.loop as loop

    path, out = _tiny_study(tmp_path), tmp_path / "study"
    calls: list[str] = []
    real_train, real_step = study_runner.train, loop.dgnet_step

    def counted(cfg, **kw):
        calls.append(Path(cfg.train.output).relative_to(out / "runs").as_posix())
        return real_train(cfg, **kw)

    steps = {"n": 0}

    def dies_in_control_seed_1(*args, **kw):  # the study "killed" in its last run, after a checkpoint
        if "control/seed1" in calls[-1]:
            steps["n"] += 1
            if steps["n"] == 2:
                raise RuntimeError("injected: the process dies here")
        return real_step(*args, **kw)

    monkeypatch.setattr(study_runner, "train", counted)
    monkeypatch.setattr(loop, "dgnet_step", dies_in_control_seed_1)
    log: list[str] = []
    res = study_runner.run_study(path, out, log=log.append)
    assert calls == ["teacher/seed0", "control/seed0", "teacher/seed1", "control/seed1"]
    assert res["failed"] == [("control", 1)]
    assert "injected" in (out / "runs/control/seed1/failed.txt").read_text()
    assert not (out / "runs/control/seed1/run.json").exists()
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/*/run.json")}
    assert len(stamps) == 3
    # finished runs keep their final weights, not their resumable checkpoints; the unfinished one keeps its own
    assert (out / "runs/teacher/seed1/teacher.pt").is_file() and not (out / "runs/teacher/seed1/checkpoints").exists()
    assert sorted(p.name for p in (out / "runs/control/seed1/checkpoints").glob("*.pt"))[-1] == "dgnet_00000001.pt"

    # The second call runs only the unfinished run, resuming it from its checkpoint.
    calls.clear()
    log.clear()
    res = study_runner.run_study(path, out, log=log.append)
    assert calls == ["control/seed1"] and res["failed"] == []
    assert sum("finished earlier, kept" in line for line in log) == 3
    assert any("control seed 1: resuming" in line for line in log)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # the finished runs' markers untouched
    # resumed, not restarted: DG-Net's iteration 1 was logged once (before the failure), then 2 and 3
    lines = [json.loads(x) for x in (out / "runs/control/seed1/metrics.jsonl").read_text().splitlines()]
    assert [x["iteration"] for x in lines if x["stage"] == "dgnet"] == [1, 2, 3]

    # The report: both arms over both seeds, the paired difference of the baseline against the control equal to
    # the difference of the runs' own results, and the generation measures of the DG-Net runs.
    report = json.loads((out / "study.json").read_text())
    runs = {arm: {int(s): r for s, r in v.items()} for arm, v in report["runs"].items()}
    assert sorted(runs["baseline"]) == sorted(runs["control"]) == [0, 1]
    for s in (0, 1):
        teacher = json.loads((out / f"runs/teacher/seed{s}/results.json").read_text())["teacher"]["plain"]
        assert runs["baseline"][s]["metrics"]["mAP"] == teacher["mAP"]
    diff = report["summary"]["baseline"]["vs_control"]["mAP"]["values"]
    expect = [100 * (runs["baseline"][s]["metrics"]["mAP"] - runs["control"][s]["metrics"]["mAP"]) for s in (0, 1)]
    assert diff == pytest.approx(expect)
    q = report["summary"]["control"]["quality"]["swap G(s_a,f_b): followed_b"]
    assert q["n"] == 2 and all(0 <= v <= 100 for v in q["values"])
    assert (out / "study.png").stat().st_size > 0 and "| control | 0, 1 |" in (out / "study.md").read_text()

    # --report-only runs nothing and writes the same summary.
    calls.clear()
    again = study_runner.run_study(path, out, report_only=True, log=log.append)
    assert calls == [] and again["summary"]["control"]["mAP"] == report["summary"]["control"]["mAP"]
    assert math.isfinite(again["summary"]["control"]["mAP"]["mean"])


@pytest.mark.slow
def test_a_signal_saves_the_run_in_progress_and_stops_the_study(tmp_path, monkeypatch):
    """SIGTERM / SIGINT (a StopRequest, as ``python -m dgnet.study`` makes them): the run in progress saves the
    iteration it is in and the study stops, neither marking that run failed nor going on to the next; the next call
    resumes it from that iteration. (Without it, a signal killed the study and lost up to checkpoint_every
    iterations; a Stopped taken as a failure would have moved on to the next run.)"""
    import signal

    import dgnet.training.loop as loop
    from dgnet.training.preemption import Stopped, StopRequest

    path, out = _tiny_study(tmp_path), tmp_path / "study"
    spec = yaml.safe_load(path.read_text())
    spec["set"]["train"]["checkpoint_every"] = 100  # only the signal's save can leave a checkpoint
    path.write_text(yaml.safe_dump(spec))
    stop, real_step, steps = StopRequest(), loop.dgnet_step, {"n": 0}

    def signalled_at_step_2(*args, **kw):
        steps["n"] += 1
        if steps["n"] == 2:
            stop.request(signal.SIGTERM)
        return real_step(*args, **kw)

    monkeypatch.setattr(loop, "dgnet_step", signalled_at_step_2)
    log: list[str] = []
    with pytest.raises(Stopped) as info:
        study_runner.run_study(path, out, log=log.append, stop=stop)
    assert info.value.exit_status == 143
    run = out / "runs/control/seed0"
    assert [p.name for p in (run / "checkpoints").glob("dgnet_*.pt")] == ["dgnet_00000002.pt"]
    assert not (run / "failed.txt").exists() and not (run / "run.json").exists()
    assert not (out / "runs/teacher/seed1").exists()  # the study stopped; it did not go on to seed 1
    assert any("control seed 0: stopped by a signal" in line for line in log)

    monkeypatch.setattr(loop, "dgnet_step", real_step)
    res = study_runner.run_study(path, out, log=log.append)
    assert res["failed"] == [] and (run / "run.json").is_file()
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["iteration"] for x in lines if x["stage"] == "dgnet"] == [1, 2, 3]


def test_a_changed_study_is_refused(tmp_path):
    path, out = _tiny_study(tmp_path), tmp_path / "study"
    runner = study_runner.StudyRunner(study_runner.load_study(path), out)
    out.mkdir()
    runner.check_spec()
    spec = yaml.safe_load(path.read_text())
    spec["set"]["optim"]["iterations"] = 4
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(ValueError, match="holds a study made with set="):
        study_runner.StudyRunner(study_runner.load_study(path), out).check_spec()
    spec["set"]["optim"]["iterations"] = 3
    spec["seeds"] = [0, 1, 2]  # more seeds (or arms) continue the same study
    path.write_text(yaml.safe_dump(spec))
    study_runner.StudyRunner(study_runner.load_study(path), out).check_spec()
    assert yaml.safe_load((out / "study.yaml").read_text())["seeds"] == [0, 1, 2]


def test_shipped_study_files_load():
    """configs/studies/*.yaml: every arm's config resolves; the regime's file runs every built-in arm on 3 seeds."""
    files = sorted((Path(__file__).resolve().parents[1] / "configs" / "studies").glob("*.yaml"))
    assert [f.name for f in files] == ["default.yaml", "default_rq1.yaml", "twocam.yaml", "twocam_rq1.yaml"]
    # <name>_rq1.yaml runs RQ1's arms first; the same config and overrides, so <name>.yaml adds the other arms to
    # its folder (check_spec refuses a folder made with another config or other overrides)
    for full_file, rq1_file in (files[0:2], files[2:4]):
        rq1, full = study_runner.load_study(rq1_file), study_runner.load_study(full_file)
        assert [a.name for a in rq1.arms] == ["baseline", "control", "full"] and rq1.seeds == full.seeds
        for key in ("config", "set", "offline_images", "quality_pairs"):
            assert rq1.to_dict()[key] == full.to_dict()[key], (rq1_file.name, key)
    files = [files[0], files[2]]
    for f in files:
        study = study_runner.load_study(f)
        assert [a.name for a in study.arms] == list(study_runner.ARMS) and len(study.seeds) >= 3
        plan = study_runner.StudyRunner(study, "unused").plan()
        assert len(plan) == len(study.seeds) * len(study.arms)  # the baseline arm is each seed's teacher run
        assert plan[0] == ("teacher", 0) and plan[5] == ("offline", 0)
    default = study_runner.load_study(files[0])
    cfg = study_runner.run_config(default, study_runner.ARMS["full"], 0, Path("x"))
    assert (cfg.data.root, cfg.data.synthetic_train_cams, cfg.data.synthetic_view_tie) == ("data/synthetic", 0, 0.0)
