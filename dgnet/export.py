"""``python -m dgnet.export``: a trained model's re-id features or generator as an ONNX, TorchScript or
ExportedProgram file (:mod:`dgnet.inference.export` describes the inputs, outputs and metadata)."""

from __future__ import annotations

import argparse
import sys

from dgnet.inference.export import FORMATS, PARTS, export_checkpoint


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dgnet.export",
                                description="Export a dgnet checkpoint's re-id features or generator for deployment.")
    p.add_argument("--checkpoint", required=True, help="dgnet.pt, teacher.pt or a run's *_NNNNNNNN.pt checkpoint")
    p.add_argument("--format", required=True, choices=FORMATS, dest="fmt")
    p.add_argument("--part", choices=PARTS, default="reid",
                   help="reid: images -> test-protocol features (default); generator: structure, appearance -> image")
    p.add_argument("--model", choices=("dgnet", "teacher"),
                   help="--part reid from this model (default: dgnet when the checkpoint holds it, else its teacher)")
    p.add_argument("--out", required=True, help="the file to write (replaced atomically)")
    args = p.parse_args(argv)

    if args.fmt == "torchscript":
        print("dgnet.export: note: PyTorch deprecates TorchScript; exported-program and onnx are its maintained "
              "formats", file=sys.stderr)
    try:
        done = export_checkpoint(args.checkpoint, args.fmt, args.out, args.part, args.model)
    except (ValueError, FileNotFoundError, ImportError) as exc:
        print(f"dgnet.export: error: {exc}", file=sys.stderr)
        return 2
    m = done.metadata
    shapes = lambda d: ", ".join(f"{k} {tuple(v)}" for k, v in d.items())
    print(f"wrote {done.path} ({args.fmt}, {m['part']} of {m['model']}, {done.path.stat().st_size / 2**20:.1f} MiB, "
          f"{done.seconds:.1f} s): inputs {shapes(m['inputs'])} -> outputs {shapes(m['outputs'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
