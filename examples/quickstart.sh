#!/usr/bin/env bash
# The main job on the shipped example, end to end: build the example models, plan the camera classifier
# over a Raspberry Pi 5 camera + an AVX-512 server, compile both stages with TVM (aarch64 cross-compiled,
# x86-64 native and tuned from the shipped database, and best-of: where onnxruntime is measured faster
# here, that stage runs on onnxruntime, flagged), set up the emulated aarch64 environment (once; needs
# root for apt-get), and verify every stage and the whole chain against onnxruntime.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-quickstart}
mkdir -p "$out"

python examples/build_models.py
nndeploy plan examples/models/camera_cnn.onnx --cluster examples/clusters/edge-camera-server.yaml \
    -o "$out/plan.json" --graph "$out/plan.svg"
# examples/tuning/ holds MetaSchedule schedules tuned for the server stage (nndeploy tune ... --export-best),
# so the server stage is built tuned without tuning first; best-of (the default) times it against its
# untuned build and onnxruntime and keeps the fastest (the compile table and manifest say which).
nndeploy compile "$out/plan.json" -o "$out/build" --jobs 2 --db examples/tuning
nndeploy emulator setup aarch64
nndeploy verify "$out/build" --samples 2
nndeploy inspect "$out/build" --stage 0
