"""``python -m dgnet``: the commands, one line each (``python -m dgnet.X --help`` for one of them)."""

from __future__ import annotations

import sys

# Every module that runs as ``python -m`` (tests/test_package.py checks that none is missing).
COMMANDS: dict[str, str] = {
    "dgnet.train": "train the teacher (stage 1) and DG-Net (stage 2) from a preset or YAML, then evaluate both",
    "dgnet.test": "Rank-1/5/10, mAP and mINP of a checkpoint's models under the test protocol",
    "dgnet.visualize": "the paper's generation figures (swap, rainbow, interpolation) and rank lists as PNGs",
    "dgnet.quality": "disentanglement measures of a DG-Net checkpoint on the synthetic set",
    "dgnet.generate": "a generated re-id dataset (cross-identity images) from a trained DG-Net",
    "dgnet.extract": "test-protocol features of your own images, written to a .npz",
    "dgnet.search": "rank a gallery of your own images for query images (rank-list PNGs and results.json)",
    "dgnet.export": "a model's re-id features or generator as ONNX, TorchScript or ExportedProgram",
    "dgnet.convert": "checkpoints of the DG-Net reference implementation as dgnet checkpoints",
    "dgnet.study": "an ablation study: arms x seeds of whole runs, resumable, with its report",
    "dgnet.data.check": "list corrupt, truncated or unsupported images under a dataset folder",
    "dgnet.data.synthetic": "draw the embedded synthetic pedestrian dataset into a folder",
}


def main() -> int:
    from dgnet import __version__

    width = max(map(len, COMMANDS))
    print(f"dgnet {__version__}: DG-Net person re-identification. Commands (python -m NAME --help for each):\n")
    for name, line in COMMANDS.items():
        print(f"  {name:<{width}}  {line}")
    print("\nPython API: dgnet.FeatureExtractor, dgnet.load_model (docs/api.md)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
