"""The ONNX conformance yardstick, run side by side: onnxruntime, TVM's frontend as it is, nndeploy compiled
by TVM, and nndeploy with its onnxruntime fallback, on the onnx package's own node test cases.

    python benchmarks/conformance.py                       # every case, 2 worker processes
    python benchmarks/conformance.py --sample 100 --json conformance.json
    python benchmarks/conformance.py --cases test_abs,test_celu
    python benchmarks/conformance.py --write-known-wrong
        # also regenerates targets/frontend/data/tvm_known_wrong.json

Each (case, way) runs in a worker process with a time limit (a TVM crash or hang costs one case). Prints
per op type and in total how many cases each way passes, then the comparisons the issue asks for: cases
onnxruntime passes that nndeploy (with fallback) does not, cases nndeploy compiles with TVM beyond TVM's
frontend alone, and cases where TVM-compiled code gives wrong numbers that onnxruntime gets right.
With --write-known-wrong, the single-op cases where nndeploy's TVM-compiled code is wrong (and onnxruntime
right) are written, by node signature, to the list that `plan` uses to send such nodes to onnxruntime.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from collections import defaultdict
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per case and way")
    parser.add_argument("--sample", type=int, default=None, help="a fixed random sample of this many cases")
    parser.add_argument("--cases", default=None, help="comma-separated case names")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--write-known-wrong",
        action="store_true",
        help="write the cases TVM computes wrongly to the known-wrong list plans use",
    )
    args = parser.parse_args()

    from conformance_runner import WAYS, IsolatedPool, load_cases
    from rich.console import Console
    from rich.table import Table

    started = time.monotonic()
    cases = load_cases(args.cases.split(",") if args.cases else None)
    if args.sample is not None:
        cases = random.Random(0).sample(cases, min(args.sample, len(cases)))
    results: dict[str, dict[str, dict[str, object]]] = defaultdict(dict)
    op_of = {case.name: case.op_type for case in cases}
    with tempfile.TemporaryDirectory(prefix="conformance-") as scratch:
        pool = IsolatedPool(args.workers, args.timeout, Path(scratch))
        try:
            runs = pool.run((c, w) for c in cases for w in WAYS)
            for done, (case, way, outcome, detail, seconds) in enumerate(runs, 1):
                results[case.name][way] = {"outcome": outcome, "detail": detail, "seconds": round(seconds, 3)}
                if done % 200 == 0:
                    print(
                        f"{done}/{len(cases) * len(WAYS)} runs, {time.monotonic() - started:.0f} s",
                        flush=True,
                    )
        finally:
            pool.close()
    elapsed = time.monotonic() - started

    def passes(name: str, way: str) -> bool:
        return results[name].get(way, {}).get("outcome") == "pass"

    per_op: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for name in results:
        row = per_op[op_of[name]]
        row["cases"] += 1
        for way in WAYS:
            row[way] += passes(name, way)
    table = Table(title=f"ONNX node conformance: cases passed ({len(results)} cases, {elapsed / 60:.1f} min)")
    for column in ("op", "cases", *WAYS):
        table.add_column(column, justify="left" if column == "op" else "right")
    for op, row in sorted(per_op.items()):
        table.add_row(op, str(row["cases"]), *(str(row[way]) for way in WAYS))
    totals = {way: sum(passes(n, way) for n in results) for way in WAYS}
    table.add_row("total", str(len(results)), *(str(totals[way]) for way in WAYS), style="bold")
    console = Console(width=160)
    console.print(table)
    ort_only = sorted(n for n in results if passes(n, "onnxruntime") and not passes(n, "nndeploy+fallback"))
    beyond = sorted(n for n in results if passes(n, "nndeploy") and not passes(n, "tvm"))
    wrong = sorted(
        n
        for n in results
        if passes(n, "onnxruntime")
        and any(results[n].get(w, {}).get("outcome") == "wrong" for w in ("tvm", "nndeploy"))
    )
    fallback_wrong = sorted(
        n
        for n in results
        if passes(n, "onnxruntime") and results[n].get("nndeploy+fallback", {}).get("outcome") == "wrong"
    )
    ort_wrong = sum(results[n].get("onnxruntime", {}).get("outcome") == "wrong" for n in results)
    console.print(
        f"onnxruntime passes {totals['onnxruntime']}; nndeploy with fallback {totals['nndeploy+fallback']} "
        f"({len(ort_only)} that onnxruntime passes it does not)"
    )
    console.print(
        f"compiled by TVM: nndeploy {totals['nndeploy']} vs TVM's frontend alone {totals['tvm']} "
        f"({len(beyond)} cases nndeploy compiles that the frontend alone does not pass)"
    )
    console.print(
        f"TVM-compiled wrong numbers where onnxruntime is right: {len(wrong)}; "
        f"wrong answers left with fallback on, where onnxruntime is right: {len(fallback_wrong)} "
        f"(onnxruntime itself is wrong on {ort_wrong})"
    )
    console.print(family_table(results, op_of))
    console.print(family_markdown(results, op_of), markup=False, highlight=False, soft_wrap=True)
    if args.write_known_wrong:
        written = write_known_wrong(results, cases, args.workers, args.timeout)
        console.print(f"known-wrong list: {written} node signature(s) written")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "seconds": elapsed,
                    "totals": totals,
                    "cases": results,
                    "op_types": op_of,
                    "onnxruntime_only": ort_only,
                    "compiled_beyond_frontend": beyond,
                    "wrong": wrong,
                    "wrong_with_fallback": fallback_wrong,
                    "families": {row[0]: row[1:] for row in _family_rows(results, op_of)},
                },
                indent=1,
            )
        )


FAMILY_NAMES = {
    "nn": "nn",
    "math": "math",
    "reduction": "math",
    "logical": "math",
    "tensor": "shape/tensor",
    "sequence": "sequence",
    "controlflow": "control flow",
    "rnn": "recurrent",
    "quantization": "quantised",
    "generator": "generator",
    "image": "image",
    "text": "text",
    "object_detection": "nn",
    "training": "training",
    "optional": "sequence",
}


def family_of(op_type: str) -> str:
    """The op's family: the folder of onnx/defs its schema is defined in (nn, math, tensor, ...)."""
    from onnx import defs

    first = op_type.split("+")[0]
    try:
        folder = Path(defs.get_schema(first).file).parent.name
    except Exception:  # a function-expanded case mixes ops: its first op's family
        return "other"
    return FAMILY_NAMES.get(folder, folder)


def _family_rows(results: dict, op_of: dict[str, str]) -> list[tuple[str, int, int, int, int, int]]:
    """(family, cases, onnxruntime, TVM's frontend, nndeploy compiled by TVM, nndeploy with fallback)
    passes per family; "compiled" counts nndeploy-with-fallback passes that ran no onnxruntime node."""
    rows: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0, 0])
    for name, ways in results.items():
        row = rows[family_of(op_of[name])]
        fallback = ways.get("nndeploy+fallback", {})
        row[0] += 1
        row[1] += ways.get("onnxruntime", {}).get("outcome") == "pass"
        row[2] += ways.get("tvm", {}).get("outcome") == "pass"
        row[3] += fallback.get("outcome") == "pass" and fallback.get("detail") != "onnxruntime fallback"
        row[4] += fallback.get("outcome") == "pass"
    return [(family, *counts) for family, counts in sorted(rows.items())]  # type: ignore[misc]


FAMILY_COLUMNS = (
    "family",
    "cases",
    "onnxruntime",
    "TVM's frontend",
    "nndeploy compiled",
    "nndeploy with fallback",
)


def _family_summary(results: dict, op_of: dict[str, str]) -> list[tuple]:
    """The per-family rows and a totals row."""
    rows = _family_rows(results, op_of)
    return [*rows, ("total", *(sum(row[i] for row in rows) for i in range(1, len(FAMILY_COLUMNS))))]


def family_table(results: dict, op_of: dict[str, str]) -> object:
    """Per op family: cases and passes of each way (see `_family_rows`)."""
    from rich.table import Table

    table = Table(title="coverage per family (nndeploy compiled: passes with no onnxruntime node)")
    for column in FAMILY_COLUMNS:
        table.add_column(column, justify="left" if column == "family" else "right")
    for row in _family_summary(results, op_of):
        table.add_row(*(str(v) for v in row))
    return table


def family_markdown(results: dict, op_of: dict[str, str]) -> str:
    """The per-family table as Markdown (for the README)."""
    lines = ["| " + " | ".join(FAMILY_COLUMNS) + " |", "|" + "---|" * len(FAMILY_COLUMNS)]
    return "\n".join(
        lines + ["| " + " | ".join(map(str, row)) + " |" for row in _family_summary(results, op_of)]
    )


def write_known_wrong(results: dict, cases: list, workers: int, timeout: float) -> int:
    """Write the node signatures TVM computes wrongly to the known-wrong list; returns how many. They come
    from the cases whose TVM-compiled result is wrong (onnxruntime right): a single-op case names its
    node; in a case of several nodes each node is run alone on onnxruntime's values of its inputs."""
    import onnx
    import onnxruntime
    from conformance_runner import IsolatedPool, culprit_job

    from nndeploy.targets.build.record import tvm_version
    from nndeploy.targets.frontend.coverage import write_known_wrong as write

    wrong = [
        case
        for case in cases
        if results.get(case.name, {}).get("onnxruntime", {}).get("outcome") == "pass"
        and results.get(case.name, {}).get("nndeploy", {}).get("outcome") == "wrong"
    ]
    entries: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="culprits-") as scratch:
        pool = IsolatedPool(workers, timeout, Path(scratch), culprit_job)
        try:
            for case, _, outcome, detail, _ in pool.run((case, "culprits") for case in wrong):
                if outcome != "pass":
                    print(f"{case.name}: the wrong node was not found ({outcome}: {detail})")
                    continue
                found = json.loads(detail)
                if not found:
                    print(f"{case.name}: every node alone matches onnxruntime (the error builds up)")
                for signature in found:
                    entries.setdefault(signature, case.name)
        finally:
            pool.close()
    write(
        entries,
        {
            "by": "benchmarks/conformance.py --write-known-wrong",
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
            "tvm": tvm_version(),
        },
    )
    return len(entries)


if __name__ == "__main__":
    main()
