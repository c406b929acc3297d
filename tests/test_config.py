"""Config presets, YAML and command-line layering, unknown keys, schedule scaling, fingerprint."""

import dataclasses

import pytest
import yaml

from dgnet.config import (
    PRESETS,
    Config,
    config_from_dict,
    fingerprint,
    parse_set,
    resolve_config,
    save_config,
    scale_schedule,
)


def test_presets_spec_numbers():
    # The real-dataset presets carry the spec's identity counts, schedules and ImageNet backbone.
    expect = {"market1501": (751, 100_000), "dukemtmc": (702, 100_000), "msmt17": (1041, 150_000)}
    for name, (ids, iters) in expect.items():
        cfg = resolve_config(name)
        assert cfg.model.num_ids == ids
        assert cfg.optim.iterations == iters
        assert cfg.model.backbone_weights == "imagenet"
        assert cfg.model.backbone == "resnet50"
        assert (cfg.data.height, cfg.data.width) == (256, 128)
        assert cfg.loss.warm_iter == 30_000 and cfg.loss.warm_step == 0.0005
        assert cfg.optim.milestones == (60_000, 90_000, 105_000)
        # parity with the reference is the default: its fp32 training, its teacher's dropout on the fakes
        assert cfg.model.detach_appearance_code and cfg.model.bn_train_on_generated
        assert cfg.train.amp == "off" and cfg.model.teacher_dropout and cfg.model.last_stride == 1
    # the CPU-sized presets keep what their figures in docs/records.md were measured with (amp auto is off on a CPU)
    for name in ("demo", "synthetic"):
        cfg = resolve_config(name)
        assert cfg.train.amp == "auto" and not cfg.model.teacher_dropout
    # each deviation is one switch away
    cfg = resolve_config("market1501", parse_set(["train.amp=bf16", "model.teacher_dropout=false"]))
    assert cfg.train.amp == "bf16" and not cfg.model.teacher_dropout


def test_demo_preset_scales_schedule():
    cfg = resolve_config()  # no argument: the demo
    assert cfg.name == "demo"
    assert cfg.data.dataset == "synthetic" and cfg.model.backbone_weights == "teacher"
    n = cfg.optim.iterations
    f = n / 100_000
    # the ramps and the decay points sit at the spec's fractions of the run
    assert cfg.loss.warm_iter == round(30_000 * f)
    assert cfg.loss.warm_step == pytest.approx(0.0005 / f)
    assert cfg.optim.milestones == tuple(round(m * f) for m in (60_000, 90_000, 105_000))
    # the teacher weight (cap 2) reaches its cap inside the run, as it does in the spec (at 34%)
    reach = cfg.loss.warm_iter + cfg.loss.teacher_w / cfg.loss.warm_step
    assert reach == pytest.approx(0.34 * n)
    assert reach < n


def test_shipped_yaml_configs_resolve_with_scaled_schedules():
    # Every file under configs/ names a preset, resolves, and carries the spec's schedule scaled to its own length
    # (a hand-edited milestone or ramp that drifted from scale_schedule would fail here).
    from pathlib import Path

    files = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
    assert files
    for f in files:
        cfg = resolve_config(str(f))
        want = scale_schedule(resolve_config(str(f)), cfg.optim.iterations, cfg.optim.teacher_iterations)
        assert (cfg.optim.milestones, cfg.optim.teacher_milestones) == (want.optim.milestones,
                                                                        want.optim.teacher_milestones), f.name
        assert cfg.loss.warm_iter == want.loss.warm_iter and cfg.loss.warm_step == pytest.approx(want.loss.warm_step)


def test_scale_schedule_identity_at_full_length():
    cfg = scale_schedule(Config(), 100_000, 20_000)
    assert cfg == Config()


def test_yaml_overrides_preset_and_cli_overrides_yaml(tmp_path):
    f = tmp_path / "my.yaml"
    f.write_text(yaml.safe_dump({"preset": "market1501", "optim": {"gen_lr": "2e-4", "milestones": [10, 20]},
                                 "data": {"batch_size": 4}, "train": {"deterministic": "true"}}))
    cfg = resolve_config(str(f), parse_set(["data.batch_size=6"]))
    assert cfg.model.num_ids == 751  # from the base preset
    assert cfg.optim.gen_lr == 2e-4  # YAML's "2e-4" string converted to float
    assert cfg.optim.milestones == (10, 20)
    assert cfg.train.deterministic is True
    assert cfg.data.batch_size == 6  # flag beats file


@pytest.mark.parametrize(
    "data,needle",
    [
        ({"optim": {"gen_lrr": 1}}, "optim.gen_lrr"),
        ({"optimizer": {"gen_lr": 1}}, "'optimizer'"),
        ({"data": {"batch_size": "eight"}}, "data.batch_size"),
        ({"data": {"batch_size": 2.5}}, "data.batch_size"),
        ({"optim": {"adam_betas": [0.1]}}, "optim.adam_betas"),
    ],
)
def test_bad_yaml_key_or_value_named(tmp_path, data, needle):
    f = tmp_path / "bad.yaml"
    f.write_text(yaml.safe_dump(data))
    with pytest.raises(ValueError, match=r".*") as e:
        resolve_config(str(f))
    assert needle in str(e.value) and "bad.yaml" in str(e.value)


def test_unknown_cli_key_and_values():
    with pytest.raises(ValueError, match="model.no_such_key"):
        resolve_config("demo", parse_set(["model.no_such_key=1"]))
    with pytest.raises(ValueError, match="SECTION.KEY=VALUE"):
        parse_set(["gen_lr=1"])
    with pytest.raises(ValueError, match="train.amp"):
        resolve_config("demo", {"train": {"amp": "fp8"}})
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        resolve_config("nope.yaml")


@pytest.mark.parametrize(
    "item,needle",
    [
        ("train.log_every=0", "train.log_every=0: expected a positive integer"),
        ("train.checkpoint_every=-2", "train.checkpoint_every=-2"),
        ("train.keep_checkpoints=0", "train.keep_checkpoints=0"),
        ("optim.teacher_iterations=0", "optim.teacher_iterations=0"),
        ("data.height=62", "62x32: expected multiples of 4"),
        ("data.width=8", "64x8: expected multiples of 4"),
        ("optim.gen_lr=-1e-4", "optim.gen_lr=-0.0001: expected a value > 0"),
        ("optim.gamma=0", "optim.gamma=0.0"),
        ("optim.adam_betas=[1.5,0.999]", "optim.adam_betas=[1.5, 0.999]: expected two values in [0, 1)"),
        ("optim.milestones=[90,60]", "optim.milestones=[90, 60]: expected increasing"),
        ("loss.warm_step=-1", "loss.warm_step=-1.0: expected a value >= 0"),
        ("loss.gan_w=-1", "loss.gan_w=-1.0"),
        ("loss.structure_live_p=2", "loss.structure_live_p=2.0: expected a probability"),
        ("model.dropout_fine=1", "model.dropout_fine=1.0: expected a value in [0, 1)"),
        ("data.workers=-1", "data.workers=-1"),
        ("train.device=cuda:x", "train.device='cuda:x'"),
        ("optim.milestones=[1,", "--set 'optim.milestones=[1,': the value is not valid YAML"),
        ("eval.alpha=-1", "eval.alpha=-1.0"),
        ("model.last_stride=3", "model.last_stride=3: expected one of (1, 2)"),
    ],
)
def test_bad_values_fail_at_start_naming_the_key(item, needle):
    with pytest.raises(ValueError) as e:
        resolve_config("demo", parse_set([item]))
    assert needle in str(e.value)


def test_valid_edges_are_accepted(tmp_path):
    cfg = resolve_config("demo", parse_set(["train.device=cuda:1", "data.height=32", "data.width=16",
                                            "loss.warm_step=0", "model.dropout_fine=0", "data.workers=0"]))
    assert (cfg.train.device, cfg.data.height, cfg.data.width) == ("cuda:1", 32, 16)
    f = tmp_path / "broken.yaml"
    f.write_text("optim: {gen_lr: [1,\n")
    with pytest.raises(ValueError, match="broken.yaml: not valid YAML"):
        resolve_config(str(f))


def test_saved_config_round_trips(tmp_path):
    cfg = resolve_config("synthetic", {"optim": {"gen_lr": 3e-4}, "train": {"output": "x"}})
    path = save_config(cfg, tmp_path / "run" / "config.yaml")
    again = resolve_config(str(path))
    assert again == cfg
    assert config_from_dict(cfg.to_dict()) == cfg


def test_fingerprint_tracks_what_a_run_computes():
    a = resolve_config("demo")
    b = resolve_config("demo", {"train": {"output": "elsewhere", "max_iterations": 5, "log_every": 1},
                                "data": {"loader": "torch"}, "eval": {"alpha": 1.0}})
    assert fingerprint(a) == fingerprint(b)
    for override in ({"optim": {"gen_lr": 1e-3}}, {"model": {"backbone": "resnet50"}}, {"data": {"height": 48}},
                     {"loss": {"warm_iter": 1}}, {"train": {"seed": 3}}, {"model": {"teacher_dropout": True}},
                     {"model": {"last_stride": 2}}):
        assert fingerprint(resolve_config("demo", override)) != fingerprint(a), override
    # where DG-Net's weights started is in every checkpoint after the start: a resume may name another file
    assert fingerprint(resolve_config("demo", {"model": {"init_from": "elsewhere.pt"}})) == fingerprint(a)


def test_every_preset_is_fresh():
    for make in PRESETS.values():
        a, b = make(), make()
        a.optim.gen_lr = 123.0
        assert b.optim.gen_lr != 123.0
        assert dataclasses.asdict(b)  # plain data


def test_a_key_given_twice_is_an_error_naming_file_key_and_lines(tmp_path):
    """PyYAML keeps the last of two equal keys silently; a config must not drop a value without a word."""
    f = tmp_path / "dup.yaml"
    f.write_text("preset: demo\noptim:\n  gen_lr: 1e-4\n  dis_lr: 1e-4\n  gen_lr: 2e-4\n")
    with pytest.raises(ValueError, match=r"dup.yaml, line 5: key 'gen_lr' given twice \(first at line 3"):
        resolve_config(str(f))
    f.write_text("preset: demo\noptim: {gen_lr: 1e-4}\noptim: {dis_lr: 1e-4}\n")  # a whole section twice
    with pytest.raises(ValueError, match=r"line 3: key 'optim' given twice \(first at line 2"):
        resolve_config(str(f))
    # the loader stays safe: a tag that would build a Python object is refused, not run
    f.write_text("preset: demo\noptim: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        resolve_config(str(f))
