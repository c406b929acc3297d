"""Using a trained model: ``extractor`` (``load_model``, ``FeatureExtractor``), ``gallery`` (features of image
folders, search), ``export`` (TorchScript, ExportedProgram and ONNX files of the re-id and generator parts)."""

from dgnet import _submodules

__getattr__, __dir__ = _submodules(__name__, __path__)
