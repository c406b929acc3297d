"""No worker process is forked from a threaded parent (dgnet.data.workers): the synthetic set's renderers and the
DataLoader's workers start from a forkserver, so a lock some other thread held at fork time cannot hang them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# torch's intra-op pool is up (a 4-thread matmul) and a Python thread runs, as in a process that trained, logged
# or loaded data before; every os.fork() from here on records how many threads the process had.
AFTER_THREADS = """
import json, os, sys, threading
import numpy as np
import torch

torch.set_num_threads(4)
a = torch.randn(256, 256)
(a @ a).sum().item()
stop = threading.Event()
threading.Thread(target=stop.wait, daemon=True).start()
forks = []
os.register_at_fork(before=lambda: forks.append(len(os.listdir("/proc/self/task"))))

from dgnet.data import load_dataset
from dgnet.data.pipeline_torch import make_loader
from dgnet.data.synthetic import generate

root = generate(sys.argv[1], ids=4, cams=2, height=32, width=16, seed=0, workers=2)
ds = load_dataset("synthetic", root, verbose=False)
plans = iter([{"index": np.arange(i, i + 2)} for i in range(0, 6, 2)])
batches = [b["image"].shape[0] for b in make_loader(ds.train, plans, (32, 16), 0, workers=2, pin=False)]
stop.set()
print(json.dumps({"forks": forks, "batches": batches}))
"""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="counts threads through /proc (Linux)")
def test_pools_started_after_torch_threads_never_fork(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    try:
        proc = subprocess.run([sys.executable, "-c", AFTER_THREADS, str(tmp_path / "syn")], env=env,
                              capture_output=True, text=True, timeout=240)
    except subprocess.TimeoutExpired:
        pytest.fail("the synthetic generation or the DataLoader hung after torch had started its threads")
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert found["batches"] == [2, 2, 2]  # the workers did the work
    assert (tmp_path / "syn" / "manifest.json").is_file()
    assert found["forks"] == [], f"os.fork() called with {found['forks']} threads running"


# A DataLoader iterator still referenced when the interpreter exits (a test's frame, a cache): its workers ignore
# SIGTERM, so multiprocessing's exit handler, which terminates daemonic children and then joins them, waited for
# them forever. (CI's pytest printed its summary and never exited.)
ALIVE_AT_EXIT = """
import sys
import numpy as np
from dgnet.data import load_dataset
from dgnet.data.pipeline_torch import make_loader
from dgnet.data.synthetic import ensure_dataset

if __name__ == "__main__":
    root = ensure_dataset(sys.argv[1], verbose=False, seed=0, ids=4, cams=2, height=32, width=16)
    ds = load_dataset("synthetic", root, verbose=False)
    plans = iter([{"index": np.arange(i, i + 2)} for i in range(0, 40, 2)])
    KEEP = iter(make_loader(ds.train, plans, (32, 16), 0, workers=2, pin=False))
    print(tuple(next(KEEP)["image"].shape), flush=True)
"""


def test_exit_with_a_live_loader_iterator_does_not_hang(tmp_path):
    script = tmp_path / "alive_at_exit.py"  # a file: forkserver workers re-import the main module
    script.write_text(ALIVE_AT_EXIT)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    try:
        proc = subprocess.run([sys.executable, str(script), str(tmp_path / "syn")], env=env, capture_output=True,
                              text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("the process hung at exit, joining DataLoader workers that ignore SIGTERM")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "(2, 3, 32, 16)"
