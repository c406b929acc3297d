"""``import dgnet`` and ``python -m dgnet``: sub-modules reachable as attributes of the package (in a fresh
interpreter, where nothing else has imported them), and a command list that names every command."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _python(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=300)


def test_sub_modules_are_attributes_of_a_freshly_imported_package():
    r = _python(
        "import sys, dgnet\n"
        "assert 'torch' not in sys.modules, 'import dgnet alone must stay light'\n"
        "assert 'dgnet.evaluation' not in sys.modules\n"
        "print(dgnet.evaluation.rank.evaluate_rank.__name__, dgnet.inference.export.read_metadata.__name__,\n"
        "      dgnet.ops.pairwise_distance.__name__, dgnet.data.load_dataset.__name__, dgnet.models.DGNet.__name__,\n"
        "      dgnet.evaluation.protocol.embed.__name__, dgnet.data.check.is_corrupt.__name__,\n"
        "      dgnet.inference.gallery.search.__name__, dgnet.checkpoints.runs.build_model.__name__)\n"
        "assert {'evaluation', 'inference', 'ops', 'data', 'models'} <= set(dir(dgnet))\n"
        "assert {'rank', 'protocol'} <= set(dir(dgnet.evaluation))\n"
        "try:\n"
        "    dgnet.no_such_thing\n"
        "except AttributeError as e:\n"
        "    print('AttributeError', e)\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[0] == ("evaluate_rank read_metadata pairwise_distance load_dataset DGNet embed "
                                        "is_corrupt search build_model")
    assert "no attribute 'no_such_thing'" in r.stdout


def _command_modules() -> set[str]:
    """Every module that runs as ``python -m``: an ``if __name__ == "__main__":`` block, or a package's
    ``__main__`` (named by its package), except ``dgnet.__main__`` itself."""
    found = set()
    for p in (ROOT / "dgnet").rglob("*.py"):
        parts = list(p.relative_to(ROOT).with_suffix("").parts)
        tree = ast.parse(p.read_text())
        is_main = any(isinstance(n, ast.If) and "__main__" in ast.unparse(n.test) for n in tree.body)
        if parts[-1] == "__main__":
            parts.pop()
        elif not is_main:
            continue
        name = ".".join(parts)
        if name != "dgnet":
            found.add(name)
    return found


def test_python_m_dgnet_lists_every_command_with_one_line():
    r = subprocess.run([sys.executable, "-m", "dgnet"], capture_output=True, text=True, cwd=ROOT, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr
    listed = {line.split()[0]: line for line in r.stdout.splitlines() if line.startswith("  dgnet.")}
    assert set(listed) == _command_modules()
    assert all(len(line.split()) > 3 for line in listed.values())  # a description beside each name
