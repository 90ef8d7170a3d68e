"""The tuning corpus: the models nndeploy's shipped tuning database and cost model are learned from, and
the script that tunes them and packs the result into the package.

    python benchmarks/corpus.py tune --budget 90m --db corpus-db      # tune every corpus model, merged
    python benchmarks/corpus.py ship --db corpus-db                    # best records + cost model -> package
    python benchmarks/corpus.py reindex                                # the shipped transfer index anew
    python benchmarks/corpus.py list                                   # the corpus and the held-out set

`tune` prepares every corpus model as `nndeploy plan` does, extracts the MetaSchedule tasks of all of
them for the host's server profile (x86-avx512-server where this CPU has AVX-512, else x86-avx2-server),
merges them by workload, and tunes them with one budget through nndeploy's own tuner: every task gets a
first batch, heaviest first (FLOPs x calls), before any task gets a second. Re-running continues. `ship`
keeps each workload's fastest record, trains the XGBoost cost model on every measured record, and writes
both into targets/tuning/shipped/<target folder>/ (see nndeploy.targets.tuning.shipped).

Every corpus model is built here (random, seeded weights) or is one of the onnx wheel's zoo architectures;
none is taken from another package. The held-out models (benchmarks/held_out.py) are never tuned here.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import onnx
from architectures import detector, mobile_classifier, text_recogniser, text_segmenter
from tuning import host_profile  # benchmarks/tuning.py

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
import build_models  # noqa: E402

ZOO = Path(onnx.__file__).parent / "backend/test/data/light"

# name -> (builder of the model, or a zoo file name; input shapes to plan with)
CORPUS: dict[str, tuple[Callable[[], onnx.ModelProto] | str, dict[str, tuple[int, ...]]]] = {
    "resnet50": ("light_resnet50.onnx", {}),
    "squeezenet": ("light_squeezenet.onnx", {}),
    "inception_v1": ("light_inception_v1.onnx", {}),
    "camera_cnn": (build_models.camera_cnn, {}),  # MobileNetV2-style, 224
    "small_unet": (build_models.small_unet, {}),
    "tiny_bert_128": (build_models.tiny_bert, {"input_ids": (1, 128), "attention_mask": (1, 128)}),
    "tiny_bert_32": (build_models.tiny_bert, {"input_ids": (1, 32), "attention_mask": (1, 32)}),
    "detector_640_w16": (lambda: detector(640, classes=80, width=16, seed=21), {}),
    "detector_320_w24": (lambda: detector(320, classes=80, width=24, seed=22), {}),
    "text_recogniser_32x256": (
        lambda: text_recogniser(32, 256, channels=(48, 96, 160, 256), dim=192, seed=23),
        {},
    ),
    "text_segmenter_320": (lambda: text_segmenter(320, seed=24), {}),
    "mobile_classifier_224": (lambda: mobile_classifier(224, alpha=1.0, seed=25), {}),
}


def corpus_file(name: str, folder: Path) -> Path:
    """The corpus model `name` as a file (zoo models are used where the onnx wheel keeps them)."""
    source, _ = CORPUS[name]
    if isinstance(source, str):
        return ZOO / source
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.onnx"
    if not path.is_file():
        onnx.save(source(), path)
    return path


def corpus_tasks(names: list[str], db: Path, work: Path) -> tuple[object, Path, list]:
    """(device, target database folder, merged tuning tasks) of the corpus models `names`."""
    from nndeploy.graph import load_graph_and_model
    from nndeploy.targets.devices.cluster import parse_cluster
    from nndeploy.targets.tuning.database import target_db_dir
    from nndeploy.targets.tuning.tuner import extract_tasks

    cluster = parse_cluster(
        {"name": "corpus", "devices": [{"name": "server", "profile": host_profile()}]}, "corpus", work, ()
    )
    device = cluster.devices[0]
    models = []
    for number, name in enumerate(names):
        _, model = load_graph_and_model(corpus_file(name, work / "models"), CORPUS[name][1])
        models.append((number, model))
    db_dir = target_db_dir(db, device.tvm_target)
    return device, db_dir, extract_tasks(models, device, db_dir)


def tune(args: argparse.Namespace) -> None:
    """Tune the corpus (see the module docstring)."""
    from nndeploy.cli.tune import parse_duration
    from nndeploy.targets.tuning.tuner import tune_tasks

    names = args.models.split(",") if args.models else list(CORPUS)
    device, db_dir, tasks = corpus_tasks(names, args.db, args.work)
    print(f"{len(names)} models, {len(tasks)} tasks for {host_profile()} into {db_dir}", flush=True)
    started = time.perf_counter()

    def progress(p) -> None:  # type: ignore[no-untyped-def]
        if p.trials % 64 < 16:
            print(f"{p.elapsed_s / 60:6.1f} min {p.trials:6d} trials  {p.task}", flush=True)

    trials = tune_tasks(tasks, device, db_dir, parse_duration(args.budget), args.trials, progress)
    minutes = (time.perf_counter() - started) / 60
    print(f"measured {trials} trials in {minutes:.1f} min ({trials / max(minutes, 1e-9):.1f} a minute)")


def ship(args: argparse.Namespace) -> None:
    """Pack the corpus database into the package (see nndeploy.targets.tuning.shipped)."""
    from nndeploy.targets.devices.registry import load_profiles
    from nndeploy.targets.tuning.shipped import pack

    profile = load_profiles()[host_profile()]
    summary = pack(args.db, profile.tvm_target, list(CORPUS))
    print(summary)


def reindex() -> None:
    """Describe the shipped workloads anew from the packed database (after a change to transfer.signature)."""
    from nndeploy.targets.devices.registry import load_profiles
    from nndeploy.targets.tuning.database import target_db_dir
    from nndeploy.targets.tuning.shipped import SHIPPED_ROOT
    from nndeploy.targets.tuning.shipped import reindex as write_index

    folder = target_db_dir(SHIPPED_ROOT, load_profiles()[host_profile()].tvm_target)
    print(f"{folder.name}: {write_index(folder)} workloads described")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    verbs = parser.add_subparsers(dest="verb", required=True)
    tuning = verbs.add_parser("tune")
    tuning.add_argument("--budget", default="90m")
    tuning.add_argument("--db", type=Path, default=Path("corpus-db"))
    tuning.add_argument("--work", type=Path, default=Path("corpus-work"))
    tuning.add_argument("--trials", type=int, default=64, help="trials per task at most")
    tuning.add_argument("--models", default="", help="comma-separated subset of the corpus")
    packing = verbs.add_parser("ship")
    packing.add_argument("--db", type=Path, default=Path("corpus-db"))
    verbs.add_parser("reindex")
    verbs.add_parser("list")
    args = parser.parse_args()
    os.environ.setdefault("TVM_NUM_THREADS", str(os.cpu_count() or 1))
    if args.verb == "tune":
        tune(args)
    elif args.verb == "ship":
        ship(args)
    elif args.verb == "reindex":
        reindex()
    else:
        import held_out

        print("corpus:", ", ".join(CORPUS))
        print("held out:", ", ".join(held_out.MODELS))


if __name__ == "__main__":
    main()
