"""nndeploy: one ONNX model and a heterogeneous cluster in, a verified distributed pipeline out."""

__version__ = "0.1.0"
