"""Using a trained model: ``extractor`` (``load_model``, ``FeatureExtractor``), ``gallery`` (features of image
folders, search), ``export`` (TorchScript, ExportedProgram and ONNX files of the re-id and generator parts)."""
