"""The table compile_verify.py prints: one row per model, its stages, build, verification and timings."""

from __future__ import annotations

from typing import Any

from rich.table import Table


def _short(reason: str, limit: int = 48) -> str:
    reason = reason.split(" (")[0].split(";")[0]
    return reason if len(reason) <= limit else reason[: limit - 3] + "..."


def _stage_cells(r: dict[str, Any]) -> tuple[str, str, str]:
    """(stages, per-stage verify, end to end) cells of a result row."""
    stages = "\n".join(f"{s['index']} {s['device']}:{s['ops']}" for s in r.get("stages", [])) or "-"
    builds = {b["stage"]: b for b in r.get("builds", [])}
    lines = []
    for c in r.get("verify", {}).get("stages", []):
        index = int(c["name"].split()[-1])
        if c["status"] == "not run":
            lines.append(f"{index} {c['device']}: not run ({_short(c['reason'])})")
        else:
            lines.append(f"{index} {c['device']}: {c['status']} {c['max_abs']:.2g}")
    if not lines and builds:
        lines = [f"{i} {b['device']}: {'built' if b['built'] else 'build FAILED'}" for i, b in builds.items()]
    e2e = r.get("verify", {}).get("end_to_end")
    if e2e is None:
        e2e_text = f"[red]FAILED in {r['phase']}[/]" if r.get("error") else "-"
    elif e2e["status"] == "not run":
        e2e_text = f"not run ({_short(e2e['reason'])})"
    else:
        colour = "green" if e2e["status"] == "pass" else "red"
        e2e_text = f"[{colour}]{e2e['status']}[/] {e2e['max_abs']:.2g}"
    return stages, "\n".join(lines) or "-", e2e_text


def _build_cell(r: dict[str, Any]) -> str:
    if "build_seconds" not in r:
        return "-"
    builds = r.get("builds", [])
    cached = sum(b["cached"] for b in builds)
    failed = sum(not b["built"] for b in builds)
    text = f"{r['build_seconds']:.1f}"
    if cached:
        text += f"\n({cached}/{len(builds)} cached)"
    if failed:
        text += f"\n[red]{failed} failed[/]"
    return text


def _timing_cells(r: dict[str, Any]) -> tuple[str, str, str]:
    tvm, ort, ratio = [], [], []
    for t in r.get("timing", []):
        if t["status"] == "timed":
            tvm.append(f"{t['stage']}: {t['tvm_ms']:.2f}")
            ort.append(f"{t['ort_ms']:.2f}")
            ratio.append(f"{t['ratio']:.1f}x")
        else:
            tvm.append(f"{t['stage']}: {t['status']}")
            ort.append("-")
            ratio.append("-")
    return "\n".join(tvm) or "-", "\n".join(ort) or "-", "\n".join(ratio) or "-"


def results_table(results: list[dict[str, Any]], opts: Any) -> Table:
    """One row per model (`opts` carries objective, threads and repeats)."""
    table = Table(
        title=f"compile + verify on server (x86-avx512) + pi (raspberry-pi-5) + gpu (nvidia-t4), "
        f"{opts.objective}; x86 stages timed with {opts.threads} thread(s), median of {opts.repeats}",
        show_lines=True,
    )
    for column in (
        "model",
        "nodes",
        "stages (device:ops)",
        "build s",
        "verify per stage (max abs)",
        "e2e (max abs)",
        "x86 stage: TVM ms",
        "ORT ms",
        "TVM/ORT",
    ):
        right = column in ("nodes", "build s", "ORT ms", "TVM/ORT")
        table.add_column(column, justify="right" if right else "left")
    for r in results:
        stages, verify, e2e = _stage_cells(r)
        tvm, ort, ratio = _timing_cells(r)
        table.add_row(
            r["model"], str(r.get("nodes", "-")), stages, _build_cell(r), verify, e2e, tvm, ort, ratio
        )
    return table
