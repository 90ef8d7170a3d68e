"""Models the benchmarks hold out from every tuning database, the shipped one included: configurations of
benchmarks/architectures.py that benchmarks/corpus.py never tunes (the corpus holds other widths, sizes
and depths of the same families, so a held-out model's workloads are new shapes of known kinds).

    python benchmarks/held_out.py OUT_DIR       # writes every held-out model

* small_detector: YOLO-style detector at 320x320, width 16, 20 classes (1x3x320x320 -> 1x24x2100);
* text_recogniser: CRNN/SVTR-style recogniser at 48x320, as PP-OCR's recognisers take (1x3x48x320 -> 1x80x96);
* mobile_classifier: MobileNetV1-style classifier at 160x160, width multiplier 0.75.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import onnx
from architectures import detector, mobile_classifier, text_recogniser

MODELS: dict[str, Callable[[], onnx.ModelProto]] = {
    "small_detector": lambda: detector(320, classes=20, width=16),
    "text_recogniser": lambda: text_recogniser(48, 320, channels=(32, 64, 128, 192), dim=128),
    "mobile_classifier": lambda: mobile_classifier(160, alpha=0.75),
}


def write(name: str, folder: Path) -> Path:
    """Build the held-out model `name` into `folder` (checked by onnx) and return its path."""
    model = MODELS[name]()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.onnx"
    onnx.save(model, path)
    return path


if __name__ == "__main__":
    for model_name in MODELS:
        print(write(model_name, Path(sys.argv[1] if len(sys.argv) > 1 else ".")))
