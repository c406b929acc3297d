"""``python -m dgnet.data.check ROOT``: list the corrupt, truncated or unsupported images under a dataset folder
(the checks are :mod:`dgnet.data.check`'s); exits 1 when there is any."""

from __future__ import annotations

import argparse
import sys

from dgnet.data.check import scan


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dgnet.data.check",
                                description="find corrupt, truncated or unsupported images")
    p.add_argument("root", help="dataset folder (scanned recursively)")
    p.add_argument("--no-cache", action="store_true", help="re-check every file, and record nothing")
    a = p.parse_args(argv)
    bad = scan(a.root, cache=not a.no_cache, verbose=True)
    print(f"{len(bad)} corrupt, truncated or unsupported image(s) under {a.root}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
