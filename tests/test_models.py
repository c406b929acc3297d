"""Shapes, wiring and initialisation of Ea, Es, G, D and the re-id baseline, per the spec."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import dgnet.models.decoder as decoder_mod
from dgnet.config import ModelConfig
from dgnet.models import DGNet, ReidBaseline, build_backbone, frozen, gray
from dgnet.models.layers import LayerNorm, reflect_pad

pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(backbone: str) -> ModelConfig:
    return ModelConfig(backbone=backbone, backbone_weights="none")


@pytest.fixture(scope="module")
def net50() -> DGNet:
    torch.manual_seed(0)
    return DGNet(_cfg("resnet50"), num_ids=7).eval()


@pytest.fixture(scope="module")
def net18() -> DGNet:
    torch.manual_seed(0)
    return DGNet(_cfg("resnet18"), num_ids=5).eval()


@torch.no_grad()
def test_shapes_spec_size_resnet50(net50):
    x = torch.randn(2, 3, 256, 128)
    fmap = net50.Ea.backbone(x)
    assert fmap.shape == (2, 2048, 16, 8)  # layer4 at stride 1
    f, s, p1, p2 = net50.encode(x)
    assert f.shape == (2, 8192) and s.shape == (2, 128, 64, 32)
    assert p1.shape == p2.shape == (2, 7)
    # channel-major flattening of the (4, 1) max-pool: index c * 4 + stripe
    pooled = F.adaptive_max_pool2d(fmap, (4, 1))
    torch.testing.assert_close(f.view(2, 2048, 4), pooled[..., 0])
    y = net50.decode(s, f)
    assert y.shape == (2, 3, 256, 128)
    assert [tuple(o.shape) for o in net50.D(y)] == [(2, 1, 64, 32), (2, 1, 32, 16), (2, 1, 16, 8)]
    e1, e2 = net50.Ea.features(x)
    assert e1.shape == e2.shape == (2, 512)


@pytest.mark.parametrize("hw", [(128, 64), (64, 32)])
@torch.no_grad()
def test_shapes_demo_sizes_resnet18(net18, hw):
    h, w = hw
    x = torch.randn(2, 3, h, w)
    f, s, p1, p2 = net18.encode(x)
    assert f.shape == (2, 4 * 512)  # demo-only: 512 trunk channels
    assert s.shape == (2, 128, h // 4, w // 4)
    assert p1.shape == p2.shape == (2, 5)
    y = net18.decode(s, f)
    assert y.shape == (2, 3, h, w) and torch.isfinite(y).all()
    assert [tuple(o.shape[2:]) for o in net18.D(y)] == [(h // 4, w // 4), (h // 8, w // 8), (h // 16, w // 16)]
    assert net18.G.slice_dim == 512


@torch.no_grad()
def test_baseline_shapes():
    torch.manual_seed(0)
    t = ReidBaseline(_cfg("resnet18"), num_ids=9).eval()
    x = torch.randn(3, 3, 128, 64)
    assert t(x).shape == (3, 9)
    feat = t.features(x)
    assert feat.shape == (3, 512)
    # features are the post-BN bottleneck of the average-pooled map
    v = t.backbone(x).mean(dim=(2, 3))
    torch.testing.assert_close(feat, t.head.bn(t.head.bottleneck(v)))
    # eval: logits = classifier(feature) (dropout off)
    torch.testing.assert_close(t(x), t.head.classifier(feat))


def test_layer4_stride_one():
    for name in ("resnet18", "resnet50"):
        b = build_backbone(name, "none")
        strides = [m.stride for m in b.layer4.modules() if isinstance(m, nn.Conv2d)]
        assert all(s == (1, 1) for s in strides), (name, strides)


def test_gray_is_rgb_mean():
    x = torch.randn(2, 3, 8, 4)
    torch.testing.assert_close(gray(x), (x[:, 0:1] + x[:, 1:2] + x[:, 2:3]) / 3)


@torch.no_grad()
def test_adain_params_slice_k_drives_block_k(net18):
    G = net18.G
    f = torch.randn(2, G.slice_dim * 4)
    w0, b0 = G.adain_params(f)
    assert w0.shape == b0.shape == (2, 8 * 128)
    for k in range(4):
        f2 = f.clone()
        f2[:, k * G.slice_dim : (k + 1) * G.slice_dim] += 1.0
        w1, b1 = G.adain_params(f2)
        for j in range(8):  # AdaIN layer j reads columns [128 j, 128 (j + 1))
            cols = slice(128 * j, 128 * (j + 1))
            changed = not torch.equal(w0[:, cols], w1[:, cols]) and not torch.equal(b0[:, cols], b1[:, cols])
            unchanged = torch.equal(w0[:, cols], w1[:, cols]) and torch.equal(b0[:, cols], b1[:, cols])
            assert changed if j // 2 == k else unchanged, (k, j)


@torch.no_grad()
def test_decoder_hands_params_in_module_order(net18, monkeypatch):
    """Each AdaIN call, in execution order, receives the next 128 columns of scales and biases."""
    G = net18.G
    calls = []
    real = decoder_mod.adain

    def spy(x, scale, bias, *args, **kwargs):
        calls.append((scale, bias, kwargs.get("activation"), kwargs.get("residual") is not None))
        return real(x, scale, bias, *args, **kwargs)

    monkeypatch.setattr(decoder_mod, "adain", spy)
    s = torch.randn(2, 128, 8, 4)
    f = torch.randn(2, G.slice_dim * 4)
    G(s, f)
    w, b = G.adain_params(f)
    assert len(calls) == 8
    for j, (scale, bias, act, res) in enumerate(calls):
        torch.testing.assert_close(scale, w[:, 128 * j : 128 * (j + 1)])
        torch.testing.assert_close(bias, b[:, 128 * j : 128 * (j + 1)])
        # first AdaIN of a block: activation; second: residual add (MUNIT)
        assert (act, res) == (("lrelu", False) if j % 2 == 0 else (None, True))


def test_layernorm_init_and_formula():
    torch.manual_seed(0)
    ln = LayerNorm(64)
    g = ln.gamma.detach()
    assert (g >= 0).all() and (g < 1).all() and g.std() > 0.1  # uniform(0, 1)
    assert torch.equal(ln.beta.detach(), torch.zeros(64))
    x = torch.randn(3, 64, 5, 4)
    flat = x.reshape(3, -1)
    mean = flat.mean(1).view(3, 1, 1, 1)
    std = flat.std(1).view(3, 1, 1, 1)  # unbiased, as the reference
    ref = (x - mean) / (std + 1e-5) * g.view(1, -1, 1, 1)
    torch.testing.assert_close(ln(x), ref)
    decoder_lns = [m for m in DGNet(_cfg("resnet18"), 3).G.modules() if isinstance(m, LayerNorm)]
    assert len(decoder_lns) == 2


def test_discriminator_init_normal_002(net18):
    ws = torch.cat([m.weight.detach().flatten() for m in net18.D.modules() if isinstance(m, nn.Conv2d)])
    bs = torch.cat([m.bias.detach().flatten() for m in net18.D.modules() if isinstance(m, nn.Conv2d)])
    assert ws.numel() > 500_000
    assert abs(ws.mean().item()) < 1e-3 and abs(ws.std().item() - 0.02) < 5e-4
    assert torch.equal(bs, torch.zeros_like(bs))


def test_discriminator_no_norm_three_scales(net18):
    D = net18.D
    assert len(D.nets) == 3
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d, LayerNorm)) for m in D.modules())
    # samples do not interact: per-sample outputs equal batched outputs
    x = torch.randn(3, 3, 64, 32)
    with torch.no_grad():
        full = D(x)
        one = D(x[1:2])
    for a, b in zip(full, one, strict=True):
        torch.testing.assert_close(a[1:2], b, rtol=1e-4, atol=1e-5)


def test_heads_init():
    torch.manual_seed(0)
    Ea = DGNet(_cfg("resnet18"), num_ids=300).Ea
    for head in (Ea.head_primary, Ea.head_fine):
        w = head.bottleneck.weight.detach()  # (512, 512): kaiming normal, fan_out = 512
        assert abs(w.std().item() - (2 / 512) ** 0.5) < 0.003
        assert torch.equal(head.bottleneck.bias.detach(), torch.zeros(512))
        c = head.classifier.weight.detach()
        assert abs(c.std().item() - 0.001) < 5e-5 and torch.equal(head.classifier.bias.detach(), torch.zeros(300))
        assert not any(isinstance(m, nn.ReLU) for m in head.modules())
        # PyTorch's BatchNorm1d init, as the reference leaves it
        assert torch.equal(head.bn.weight.detach(), torch.ones(512))
        assert torch.equal(head.bn.bias.detach(), torch.zeros(512))
    assert Ea.head_primary.dropout.p == 0.5 and Ea.head_fine.dropout.p == 0.75


def test_structure_encoder_layout(net18):
    Es = net18.Es
    convs = [m for m in Es.modules() if isinstance(m, nn.Conv2d)]
    assert (convs[0].in_channels, convs[0].out_channels, convs[0].stride) == (1, 16, (2, 2))
    assert (convs[3].in_channels, convs[3].out_channels, convs[3].stride) == (32, 64, (2, 2))
    dil = sorted(m.dilation[0] for m in convs if m.dilation[0] > 1)
    assert dil == [3, 6, 9]
    norms = [m for m in Es.modules() if isinstance(m, nn.InstanceNorm2d)]
    assert norms and not any(m.affine for m in norms)
    # kaiming fan_in on the generator side: the 64-channel 3x3 convs have std sqrt(2 / 576)
    w = torch.cat([m.weight.detach().flatten() for m in convs if m.weight.shape[1:] == (64, 3, 3)])
    assert abs(w.std().item() - (2 / 576) ** 0.5) < 0.003


def test_aspp_activations_follow_the_reference(net18):
    """Only the leading 1x1 conv of each dilated branch has a LeakyReLU; every branch output is linear, so it
    takes negative values, and the whole ASPP equals a plain re-statement of its layers."""
    aspp = net18.Es.model[-1]
    assert not aspp.branch1.act and not aspp.fuse.act
    assert [(b[0].act, b[1].act) for b in aspp.branches] == [(True, False)] * 3

    def block(cb, x, act):
        y = F.instance_norm(cb.conv(F.pad(x, (cb.pad,) * 4, mode="reflect") if cb.pad else x), eps=1e-5)
        return F.leaky_relu(y, 0.2) if act else y

    torch.manual_seed(0)
    x = torch.randn(2, 64, 24, 12)
    with torch.no_grad():
        parts = [block(aspp.branch1, x, False)]
        parts += [block(b[1], block(b[0], x, True), False) for b in aspp.branches]
        assert all(bool((p < 0).any()) for p in parts)
        torch.testing.assert_close(aspp(x), block(aspp.fuse, torch.cat(parts, 1), False))


def test_eval_mode_restores_each_submodules_own_mode():
    from dgnet.models import eval_mode

    net = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5), nn.BatchNorm1d(2)).train()
    net[2].eval()  # a mixed state, as a frozen teacher inside a training model
    with eval_mode(net) as m:
        assert m is net and not any(x.training for x in net.modules())
    assert [x.training for x in net.modules()] == [True, True, True, False]


def test_reflect_pad_matches_reference_and_extends():
    x = torch.randn(2, 3, 6, 5)
    torch.testing.assert_close(reflect_pad(x, 2), F.pad(x, (2, 2, 2, 2), mode="reflect"))
    big = reflect_pad(x, 9)  # pad >= size: F.pad refuses, we mirror repeatedly like numpy's reflect
    ref = np.pad(x.numpy(), ((0, 0), (0, 0), (9, 9), (9, 9)), mode="reflect")
    np.testing.assert_array_equal(big.numpy(), ref)


def test_frozen_equals_deepcopy_with_train_bn(net18):
    Ea = net18.Ea
    Ea.train()
    x = torch.randn(4, 3, 64, 32)
    ref = copy.deepcopy(Ea).eval()
    for m in ref.modules():
        if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
            m.train()
    buffers = {k: v.clone() for k, v in Ea.named_buffers()}
    with frozen(Ea, bn_batch_stats=True):
        f, p1, p2 = Ea(x)
        assert not any(p.requires_grad for p in Ea.parameters())
    with torch.no_grad():
        rf, rp1, rp2 = ref(x)
    torch.testing.assert_close((f, p1, p2), (rf, rp1, rp2))
    # restored, and the running statistics were not touched
    assert Ea.training and all(m.training for m in Ea.modules())
    assert all(p.requires_grad for p in Ea.parameters())
    for k, v in Ea.named_buffers():
        assert torch.equal(v, buffers[k]), k
    # without batch statistics: plain eval mode
    with frozen(Ea, bn_batch_stats=False), torch.no_grad():
        e = Ea(x)[1]
    with torch.no_grad():
        torch.testing.assert_close(e, copy.deepcopy(Ea).eval()(x)[1])
    Ea.eval()


def test_frozen_with_dropout_is_the_whole_module_in_train_mode(net18):
    """The reference's teacher once its trainer is in train mode: BatchNorm on batch statistics and dropout on.
    ``frozen(bn_batch_stats=True, dropout=True)`` computes that (same RNG state, same masks) without touching
    the running statistics, and gives every submodule its mode back."""
    teacher = ReidBaseline(net18.cfg, 5).eval()
    x = torch.randn(4, 3, 64, 32)
    buffers = {k: v.clone() for k, v in teacher.named_buffers()}
    ref = copy.deepcopy(teacher).train()
    state = torch.get_rng_state()
    with frozen(teacher, bn_batch_stats=True, dropout=True), torch.no_grad():
        got = teacher(x)
        assert teacher.head.dropout.training and not teacher.training
    torch.set_rng_state(state)
    with torch.no_grad():
        want = ref(x)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert not any(m.training for m in teacher.modules())
    assert all(torch.equal(v, buffers[k]) for k, v in teacher.named_buffers())
    # the masks are random: another draw, another output; without dropout, none
    with frozen(teacher, bn_batch_stats=True, dropout=True), torch.no_grad():
        assert not torch.equal(teacher(x), got)
    with frozen(teacher, bn_batch_stats=True), torch.no_grad():
        a, b = teacher(x), teacher(x)
    assert torch.equal(a, b)


def test_layer4_stride_2_halves_the_map_and_keeps_the_parameters():
    """``model.last_stride`` 2 is torchvision's ResNet (Person_reID_baseline_pytorch's default teachers)."""
    torch.manual_seed(0)
    import torchvision

    one, two = build_backbone("resnet18", "none", 1).eval(), build_backbone("resnet18", "none", 2).eval()
    two.load_state_dict(one.state_dict())
    tv = torchvision.models.resnet18(weights=None).eval()
    tv.load_state_dict({**tv.state_dict(), **one.state_dict()})
    x = torch.randn(1, 3, 64, 32)
    with torch.no_grad():
        assert one(x).shape[2:] == (4, 2) and two(x).shape[2:] == (2, 1)
        torch.testing.assert_close(two(x), nn.Sequential(*list(tv.children())[:-2])(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match="last_stride=3"):
        build_backbone("resnet18", "none", 3)


def test_build_backbone_from_path(tmp_path):
    torch.manual_seed(1)
    src = build_backbone("resnet18", "none")
    state = dict(src.state_dict())
    state["fc.weight"] = torch.zeros(1000, 512)  # torchvision files carry the ImageNet fc: ignored
    state["fc.bias"] = torch.zeros(1000)
    path = tmp_path / "r18.pth"
    torch.save(state, path)
    torch.manual_seed(2)
    dst = build_backbone("resnet18", str(path))
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v), k
    # a checkpoint wrapped as {"state_dict": ...} with a DataParallel prefix also loads
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "wrapped.pth")
    dst2 = build_backbone("resnet18", str(tmp_path / "wrapped.pth"))
    assert torch.equal(dst2.conv1.weight, src.conv1.weight)


def test_build_backbone_without_batchnorm_counters(tmp_path):
    """torchvision's ImageNet files predate BatchNorm's num_batches_tracked: such a file loads, counters at 0."""
    torch.manual_seed(1)
    src = build_backbone("resnet18", "none")
    state = {k: v for k, v in src.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert len(state) < len(src.state_dict())
    torch.save(state, tmp_path / "old.pth")
    dst = build_backbone("resnet18", str(tmp_path / "old.pth"))
    for k, v in dst.state_dict().items():
        assert torch.equal(v, state[k] if k in state else torch.tensor(0)), k
    # any other missing key still fails, by name
    del state["layer1.0.bn1.running_var"]
    torch.save(state, tmp_path / "short.pth")
    with pytest.raises(ValueError, match="missing.*layer1.0.bn1.running_var"):
        build_backbone("resnet18", str(tmp_path / "short.pth"))


def test_build_backbone_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="backbone='resnet34'"):
        build_backbone("resnet34", "none")
    with pytest.raises(FileNotFoundError, match="no_such.pth"):
        build_backbone("resnet18", str(tmp_path / "no_such.pth"))
    torch.save(build_backbone("resnet18", "none").state_dict(), tmp_path / "r18.pth")
    with pytest.raises(ValueError, match="do not match resnet50"):
        build_backbone("resnet50", str(tmp_path / "r18.pth"))
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="expected a state_dict"):
        build_backbone("resnet18", str(tmp_path / "list.pth"))


def test_imagenet_offline_without_cache_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("DGNET_OFFLINE", "1")  # never try the network from a test
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path))
    try:
        with pytest.raises(RuntimeError) as info:
            build_backbone("resnet18", "imagenet")
    finally:
        torch.hub.set_dir(old)
    msg = str(info.value)
    assert "resnet18-f37072fd.pth" in msg and str(tmp_path) in msg and "--backbone-weights PATH" in msg


def test_imagenet_from_cache(tmp_path, monkeypatch):
    """A file in torchvision's cache is what 'imagenet' loads (no network)."""
    monkeypatch.setenv("DGNET_OFFLINE", "1")
    torch.manual_seed(3)
    src = build_backbone("resnet18", "none")
    (tmp_path / "checkpoints").mkdir()
    torch.save(src.state_dict(), tmp_path / "checkpoints" / "resnet18-f37072fd.pth")
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path))
    try:
        dst = build_backbone("resnet18", "imagenet")
    finally:
        torch.hub.set_dir(old)
    assert torch.equal(dst.layer4[1].conv2.weight, src.layer4[1].conv2.weight)


def test_dgnet_bad_num_ids():
    with pytest.raises(ValueError, match="num_ids=0"):
        DGNet(_cfg("resnet18"), 0)


def _fused_copy(G, fold_upsample="auto"):
    """``G`` built with ``fused=True`` (a model keeps its fast-path choice wherever it is used), same weights."""
    from dgnet.models import Decoder

    fast = Decoder(_cfg("resnet18"), G.slice_dim * G.n_res, fused=True, fold_upsample=fold_upsample)
    fast.load_state_dict(G.state_dict())
    return fast.to(next(G.parameters()).dtype)


@torch.no_grad()
def test_decoder_fused_matches_plain(net18):
    s = torch.randn(2, 128, 16, 8)
    f = torch.randn(2, net18.G.slice_dim * 4)
    plain = net18.G(s, f)
    fast = _fused_copy(net18.G)(s, f)
    assert fast.shape == plain.shape and not net18.G.fused
    torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-4)


def test_decoder_grouped_mlps_match_the_plain_mlps_float64():
    """Under --fused the eight AdaIN MLPs run as one grouped_mlp: the same (scale, bias) per layer as
    adain_params' columns, and the same gradients for the code and every MLP parameter (float64, tight)."""
    torch.manual_seed(0)
    G = DGNet(_cfg("resnet18"), num_ids=5).G.double()
    f = torch.randn(3, G.slice_dim * 4, dtype=torch.float64, requires_grad=True)
    mlp_params = [p for name, p in G.named_parameters() if name.startswith("mlp_")]

    fast = _fused_copy(G)
    fast_params = [p for name, p in fast.named_parameters() if name.startswith("mlp_")]

    def run(fused):
        pairs = (fast if fused else G).layer_params(f)
        loss = sum((s * torch.randn_like(s, generator=torch.Generator().manual_seed(j))).sum() + b.square().sum()
                   for j, (s, b) in enumerate(pairs))
        return pairs, torch.autograd.grad(loss, [f, *(fast_params if fused else mlp_params)])

    plain, plain_grads = run(False)
    fused, fused_grads = run(True)
    w, b = G.adain_params(f)
    assert len(fused) == 8
    for j, (scale, bias) in enumerate(fused):
        torch.testing.assert_close(scale, w[:, 128 * j : 128 * (j + 1)], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(bias, b[:, 128 * j : 128 * (j + 1)], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(scale, plain[j][0], rtol=0, atol=0)
    for got, want in zip(fused_grads, plain_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_fused_decoder_dispatches_under_half_the_plain_ops(net18):
    """The point of --fused on a GPU, where the decoder's step is host-bound: a forward+backward of G (fold
    off, as on CUDA) must cost well under half the operator calls of the plain path. Measured when written:
    plain 486, fused 206 (the AdaIN kernels, the grouped MLPs, no copies of the strided parameters)."""
    from dgnet.profiling import host_op_count

    plain_G, fused_G = copy.deepcopy(net18.G), _fused_copy(net18.G, fold_upsample="off")
    s = torch.randn(2, 128, 8, 4)
    f = torch.randn(2, plain_G.slice_dim * 4, requires_grad=True)

    def step(G):
        G.zero_grad(set_to_none=True)  # as training does: the first gradient is stored, not added
        f.grad = None
        G(s, f).square().mean().backward()

    plain = host_op_count(lambda: step(plain_G))
    fused = host_op_count(lambda: step(fused_G))
    assert fused < 0.5 * plain, (fused, plain)


@pytest.mark.parametrize(
    ("fused", "mode", "device", "folds"),
    [(False, "on", "cpu", False), (True, "auto", "cpu", True), (True, "auto", "cuda", False),
     (True, "on", "cuda", True), (True, "off", "cpu", False)],
)
def test_fold_upsample_switch(fused, mode, device, folds):
    """Where the decoder folds: only when built fused, and then as train.fold_upsample says for the device."""
    from dgnet.models.decoder import fold_applies

    assert (fused and fold_applies(mode, torch.device(device))) is folds
    with pytest.raises(ValueError, match="fold_upsample='always'"):
        fold_applies("always", "cpu")
    with pytest.raises(ValueError, match="fold_upsample='always'"):
        _fused_copy(DGNet(_cfg("resnet18"), num_ids=5).G, fold_upsample="always")


@torch.no_grad()
def test_decoder_fold_off_is_the_plain_upsample(net18, monkeypatch):
    # With the fold off, fused mode changes only the AdaIN steps: the upsampling convs are plain PyTorch's.
    from dgnet.models import decoder

    def forbidden(*args):
        raise AssertionError("upsample_conv5 called with fold_upsample='off'")

    monkeypatch.setattr(decoder, "upsample_conv5", forbidden)
    s = torch.randn(2, 128, 16, 8)
    f = torch.randn(2, net18.G.slice_dim * 4)
    plain = net18.G(s, f)
    fast = _fused_copy(net18.G, fold_upsample="off")(s, f)
    torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-4)


def _encode_decode(net: DGNet, x: torch.Tensor) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        f, s, p1, p2 = net.encode(x)
        return {"f": f, "s": s, "p1": p1, "p2": p2, "y": net.decode(s, f)}


def check_device_against_float64(device: str, fused: bool) -> None:
    """DGNet at the spec size on ``device`` (built ``fused`` or plain) against the plain float64 model on the CPU.
    Rule (flash-attention's, as tests/test_adain.py): each output's error against the float64 truth is at most
    twice the plain float32 CPU model's error plus atol = 64 u max(1, max|truth|), u = 2^-24: the device kernels
    sum in other orders (and the fused ones by other formulas), so their rounding is of the same size as the CPU's;
    the atol covers outputs where the CPU's happens to be small. Non-finite output fails."""
    torch.manual_seed(0)
    plain = DGNet(_cfg("resnet50"), num_ids=7).eval()
    x = torch.randn(2, 3, 256, 128)
    truth = _encode_decode(copy.deepcopy(plain).double(), x.double())
    cpu = _encode_decode(plain, x)
    net = DGNet(_cfg("resnet50"), num_ids=7, fused=fused).eval()
    net.load_state_dict(plain.state_dict())
    got = _encode_decode(net.to(device), x.to(device))
    shapes = {"f": (2, 8192), "s": (2, 128, 64, 32), "y": (2, 3, 256, 128), "p1": (2, 7), "p2": (2, 7)}
    for k, t in truth.items():
        g = got[k]
        assert tuple(g.shape) == shapes[k] and g.dtype == torch.float32 and g.device.type == device, k
        assert torch.isfinite(g).all(), f"{k}: not finite"
        err = (g.cpu().double() - t).abs().max().item()
        err_cpu = (cpu[k].double() - t).abs().max().item()
        atol = 64 * 2.0**-24 * max(1.0, t.abs().max().item())
        assert err <= 2 * err_cpu + atol, f"{k}: error {err:.3g} vs the CPU's {err_cpu:.3g} + {atol:.3g}"


@pytest.mark.gpu
@pytest.mark.parametrize("fused", [False, True], ids=["plain", "fused"])
def test_dgnet_cuda_matches_float64_spec_size(fused):
    """Encode and decode on CUDA, plain and --fused (Triton AdaIN, grouped MLPs, folded upsample), in fp32 with
    TF32 off (TF32 rounds products to 10 bits: another arithmetic, not another order)."""
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        check_device_against_float64("cuda", fused)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
