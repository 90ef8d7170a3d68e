"""ONNX -> TVM Relax: the importer, the project's converters, op coverage and the known-wrong data, function
expansion, the opset upgrade and ONNX rewrites."""
