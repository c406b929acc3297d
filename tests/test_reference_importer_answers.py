"""The reference-checkpoint importer against outputs of the DG-Net reference itself.

tests/data/dgnet_reference_outputs.npz holds what NVlabs/DG-Net's own modules (``AdaINGen``, ``ft_netAB``,
``MsImageDis``) computed in float64 on a seeded image, with weights given by :func:`seeded_tensor` for each entry
of their state dicts, and the layout of those state dicts (keys in order, shapes, dtypes): how it was made is in
tests/data/README.md. Here the same weights are written in the reference's checkpoint format (``{'a': state_dict}``
in ``gen_/id_/dis_%08d.pt``), converted by ``python -m dgnet.convert reference``, and dgnet's Es, Ea, G and D must
compute the stored outputs. tests/test_convert.py checks the importer on files written from dgnet's own modules;
this is the check that does not go through dgnet's idea of the reference.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from dgnet import load_model
from dgnet.convert import main
from dgnet.models import gray

FIXTURE = Path(__file__).parent / "data" / "dgnet_reference_outputs.npz"
ITERATION = 100

pytestmark = pytest.mark.usefixtures("one_thread")


def seeded_tensor(key: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """The fixture's weights: a function of the entry's name and shape only (uniform draws of numpy's PCG64 seeded
    with crc32 of the name, scaled to keep activations of order 1; BatchNorm variances in [0.5, 1.5))."""
    if not dtype.is_floating_point:
        return torch.zeros(shape, dtype=dtype)
    n = int(np.prod(shape)) if len(shape) else 1
    u = np.random.default_rng(zlib.crc32(key.encode())).random(n)
    if key.endswith("running_var"):
        v = 0.5 + u
    elif len(shape) >= 2:
        v = (2 * u - 1) * np.sqrt(3.0 / (n // shape[0]))
    elif key.endswith(("weight", "gamma")):
        v = 0.75 + 0.5 * u
    else:
        v = (2 * u - 1) * 0.5
    return torch.from_numpy(v.reshape(shape)).to(dtype)


@pytest.fixture(scope="module")
def answers():
    with np.load(FIXTURE) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def converted(answers, tmp_path_factory):
    """The reference run folder written from the stored layout, converted with ``dgnet.convert reference``."""
    root = tmp_path_factory.mktemp("reference_answers")
    ck = root / "checkpoints"
    ck.mkdir()
    for kind, entries in json.loads(str(answers["layout"])).items():
        state = {k: seeded_tensor(k, tuple(shape), getattr(torch, dt)) for k, shape, dt in entries}
        torch.save({"a": state}, ck / f"{kind}_{ITERATION:08d}.pt")
    out = root / "dgnet.pt"
    assert main(["reference", "--checkpoints", str(ck), "--num-ids", str(int(answers["num_ids"])),
                 "--config", "market1501", "--out", str(out)]) == 0
    return load_model(out).double().eval()


def _close(got: torch.Tensor, want: np.ndarray, name: str) -> None:
    # The stored outputs are the reference's float64 results rounded to float32 (relative error <= 2^-24); dgnet
    # computes in float64, in another order of operations, whose rounding (~1e-16 relative, amplified by the
    # normalisation layers' divisions) stays far below that. So the bound is float32's rounding of the largest
    # value, 2^-24 * max|want|, times 4 for the divisions; a mis-mapped tensor (swapped, transposed, a lost
    # bias) changes outputs by order 1.
    want_t = torch.from_numpy(want).double()
    atol = 4 * 2.0**-24 * want_t.abs().max().item()
    assert torch.isfinite(got).all(), name
    torch.testing.assert_close(got, want_t, rtol=4 * 2.0**-24, atol=atol, msg=name)


def test_converted_modules_compute_the_reference_outputs(answers, converted):
    x = torch.from_numpy(answers["x"]).double()
    with torch.no_grad():
        s = converted.Es(gray(x))
        f, logits_primary, logits_fine = converted.Ea(x)
        decoded = converted.G(s, f)
        dis = converted.D(x)
    _close(s, answers["s"], "Es: structure code")
    _close(f, answers["f"], "Ea: appearance code")
    _close(logits_primary, answers["logits_primary"], "Ea: primary head logits")
    _close(logits_fine, answers["logits_fine"], "Ea: fine-grained head logits")
    # G from the reference's own codes too, so a wrong G is told apart from a wrong Es or Ea
    with torch.no_grad():
        decoded_ref = converted.G(torch.from_numpy(answers["s"]).double(), torch.from_numpy(answers["f"]).double())
    _close(decoded, answers["decoded"], "G: decoded image")
    _close(decoded_ref, answers["decoded"], "G on the reference's codes")
    assert len(dis) == 3
    for i, d in enumerate(dis):
        _close(d, answers[f"dis_{i}"], f"D: scale {i}")
