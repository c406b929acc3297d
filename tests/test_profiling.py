"""The operator-family split of a profiled iteration (dgnet.profiling, benchmarks/profile_step.py --families)."""

from __future__ import annotations

import pytest
import torch
from torch.profiler import ProfilerActivity, profile, record_function

from dgnet.losses import r1_per_sample
from dgnet.profiling import FAMILIES, R1_REGION, family_of_event, operator_families, operator_family


@pytest.mark.parametrize(
    ("name", "family"),
    [
        ("aten::mkldnn_convolution", "convolution forward"),
        ("aten::convolution_backward", "convolution backward"),
        ("aten::native_batch_norm_backward", "BatchNorm"),
        ("aten::native_layer_norm", "instance / layer norms, AdaIN"),
        ("dgnet::adain_forward", "instance / layer norms, AdaIN"),
        ("aten::addmm", "linear (MLPs, classifiers)"),
        ("aten::_log_softmax_backward_data", "losses"),
        ("aten::_foreach_addcdiv_", "optimisers"),
        ("aten::leaky_relu", "elementwise, reductions"),
        ("aten::copy_", "copies, allocation"),
        ("ConvolutionBackward0", "autograd engine"),
        ("autograd::engine::evaluate_function: AddmmBackward0", "autograd engine"),
    ],
)
def test_operator_family_of_names(name, family):
    assert operator_family(name) == family


def test_families_of_a_profiled_step_follow_regions_and_names():
    """Conv + BatchNorm + linear with a cross-entropy, an R1 penalty on a small critic, and an Adam step: the
    critic's gradient graph and its double backward land in R1 whatever their names, the optimiser's foreach ops
    in optimisers, the main graph's convolutions in their forward and backward families; the rows add up to
    the wall time given, and nothing is counted twice."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                              torch.nn.Linear(4 * 6 * 6, 5))
    critic = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3), torch.nn.LeakyReLU(0.2))
    opt = torch.optim.Adam([*net.parameters(), *critic.parameters()], foreach=True)
    x, y = torch.randn(2, 3, 8, 8), torch.tensor([1, 3])
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        loss = torch.nn.functional.cross_entropy(net(x), y)
        real = x.clone().requires_grad_(True)
        with record_function(R1_REGION):
            r1 = r1_per_sample([critic(real)], real).mean()
        (loss + r1).backward()
        opt.step()
    events = list(prof.events())
    total_self = sum(e.self_cpu_time_total for e in events) / 1e6
    rows = operator_families(events, wall_s=total_self + 0.5)
    secs = dict(rows)
    assert [f for f, _ in rows] == [*FAMILIES, "Python, dispatch (unprofiled)"]
    assert sum(secs[f] for f in FAMILIES) == pytest.approx(total_self, rel=1e-9)
    assert secs["Python, dispatch (unprofiled)"] == pytest.approx(0.5, rel=1e-6)
    for fam in ("convolution forward", "convolution backward", "BatchNorm", "linear (MLPs, classifiers)",
                "losses", "D's R1 (gradient + double backward)", "optimisers"):
        assert secs[fam] > 0, fam
    by_family: dict[str, set[str]] = {}
    for e in events:
        by_family.setdefault(family_of_event(e), set()).add(e.name)
    r1_ops = by_family["D's R1 (gradient + double backward)"]
    assert any("BackwardBackward" in n for n in r1_ops)  # the double backward of the critic's convolution
    assert any(n.startswith("aten::convolution") for n in r1_ops)
    assert any(n.startswith("aten::_foreach_") for n in by_family["optimisers"])
    assert not any(n.startswith("aten::_foreach_") for f, ns in by_family.items() if f != "optimisers" for n in ns)
