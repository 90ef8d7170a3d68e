"""Per-target stage builds: the content cache, TVM's pipeline and codegen, the build-time check against
onnxruntime, TVM parts around onnxruntime regions, best-of selection and the tuned build."""
