"""The ONNX conformance yardstick, run side by side: onnxruntime, TVM's frontend as it is, nndeploy compiled
by TVM, and nndeploy with its onnxruntime fallback, on the onnx package's own node test cases.

    python benchmarks/conformance.py                       # every case, 2 worker processes
    python benchmarks/conformance.py --sample 100 --json conformance.json
    python benchmarks/conformance.py --cases test_abs,test_celu

Each (case, way) runs in a worker process with a time limit (a TVM crash or hang costs one case). Prints
per op type and in total how many cases each way passes, then the comparisons the issue asks for: cases
onnxruntime passes that nndeploy (with fallback) does not, cases nndeploy compiles with TVM beyond TVM's
frontend alone, and cases where TVM-compiled code gives wrong numbers that onnxruntime gets right.
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
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table

    from nndeploy.conformance import WAYS, IsolatedPool, load_cases

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
        n for n in results if results[n].get("nndeploy+fallback", {}).get("outcome") == "wrong"
    )
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
        f"wrong answers left with fallback on: {len(fallback_wrong)}"
    )
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
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
