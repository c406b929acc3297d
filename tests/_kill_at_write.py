"""``python tests/_kill_at_write.py NAME PHASE -- <python -m dgnet.train arguments>``: run ``dgnet.train`` in this
process and kill it with SIGKILL at a chosen point of the atomic write of the checkpoint file called NAME.

The kill is a real ``kill -9`` (no handler, no cleanup, the temporary left on disk as a crash leaves it); only its
moment is chosen, so a test can reach each dangerous point every time instead of by racing a timer:

- ``torn``: half of the file's bytes are in the temporary (flushed), nothing renamed;
- ``written``: the whole temporary is written and fsynced, not yet renamed onto NAME;
- ``renamed``: NAME has just been replaced; nothing after it ran (old checkpoints not pruned, no log line).
"""

from __future__ import annotations

import io
import os
import signal
import sys
from pathlib import Path

from dgnet import train
from dgnet.checkpoints import format as checkpoint_format

PHASES = ("torn", "written", "renamed")


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def kill_at(name: str, phase: str) -> None:
    real = checkpoint_format.replace_atomic

    def replace_atomic(path, write, size_hint=None, **kwargs):
        if Path(path).name != name:
            return real(path, write, size_hint, **kwargs)
        if phase == "renamed":
            real(path, write, size_hint, **kwargs)
            _die()

        def partial(fh):
            if phase == "torn":
                buf = io.BytesIO()
                write(buf)
                fh.write(buf.getvalue()[: buf.tell() // 2])
            else:
                write(fh)
            fh.flush()
            os.fsync(fh.fileno())
            _die()

        return real(path, partial, size_hint, **kwargs)

    checkpoint_format.replace_atomic = replace_atomic  # what save_atomic calls


if __name__ == "__main__":
    name, phase, sep, *argv = sys.argv[1:]
    if phase not in PHASES or sep != "--":
        raise SystemExit(f"usage: _kill_at_write.py NAME {{{','.join(PHASES)}}} -- TRAIN-ARGS (got {sys.argv[1:]})")
    kill_at(name, phase)
    sys.exit(train.main(argv))
