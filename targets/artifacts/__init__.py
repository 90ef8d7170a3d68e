"""Built artifacts: the manifest, the loader the runtime may import, the aarch64 emulator and the host
checks and tools (CPU features, CUDA, cross compilers)."""
