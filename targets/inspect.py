"""`inspect`: the code a stage was compiled to (LLVM IR, assembly, CUDA source) and its instruction mix,
so a user can see, for example, that an edge build really uses NEON (`fmla`) or an x86 one AVX-512."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from nndeploy.errors import ArtifactError
from nndeploy.targets.artifacts.manifest import Manifest

# Instruction classes worth a line in the summary, per architecture: (label, regex on the mnemonic).
CLASSES: dict[str, tuple[tuple[str, str], ...]] = {
    "x86_64": (
        ("packed FMA (vfmadd*ps/pd)", r"^vfn?m(add|sub)\w*p[sd]$"),
        ("scalar FMA (vfmadd*ss/sd)", r"^vfn?m(add|sub)\w*s[sd]$"),
        ("512-bit ops (zmm registers)", r"zmm"),
        ("256-bit ops (ymm registers)", r"ymm"),
        ("vector multiply/add (vmul*/vadd*)", r"^v(mul|add|sub)p[sd]"),
        ("int8 dot product (vpdpbusd)", r"^vpdpbusd"),
        ("scalar float (ss/sd)", r"^v?\w+s[sd]$"),
    ),
    "aarch64": (
        ("NEON FMA (fmla/fmls)", r"^fml[as]"),
        ("NEON float multiply/add (fmul/fadd)", r"^f(mul|add|sub)\b"),
        ("int8 dot product (sdot/udot)", r"^[su]dot"),
        ("vector registers (v*.4s / q*)", r"\bv\d+\.(4s|8h|16b)|\bq\d+"),
    ),
    "ptx": (
        ("fused multiply-add (fma.*)", r"^fma\."),
        ("tensor-core mma", r"^w?mma\."),
        ("shared-memory loads/stores", r"^(ld|st)\.shared"),
        ("global loads", r"^ld\.global"),
        ("barriers (bar.sync)", r"^bar\."),
        ("kernels (.entry)", r"^\.entry$"),
    ),
}


@dataclass(frozen=True)
class InstructionMix:
    """Counts of instruction classes in a stage's generated code, plus the most common mnemonics."""

    arch: str
    total: int
    classes: dict[str, int]
    top: list[tuple[str, int]]


def stage_code(build_dir: Path, manifest: Manifest, stage: int, kind: str) -> tuple[str, str]:
    """(name, text) of `stage`'s generated code: kind is 'asm', 'ir', 'cuda' or 'ptx'. A CPU build keeps its
    LLVM IR only; its assembly is generated from that IR here."""
    try:
        path = stage_source(build_dir, manifest, stage, kind)
    except ArtifactError:
        if kind != "asm":
            raise
        ir = stage_source(build_dir, manifest, stage, "ir")  # its own reason when there is none either
        return f"{ir.stem}.s (from {ir.name})", assembly(ir)
    return path.name, path.read_text()


def assembly(ir: Path) -> str:
    """The machine code LLVM makes of an LLVM IR file, as assembly (the IR names its target)."""
    import tvm

    try:
        return tvm.runtime.load_module(str(ir)).inspect_source("asm")
    except Exception as exc:  # TVM's errors carry a C++ backtrace; its first line says what
        raise ArtifactError(f"{ir}: LLVM cannot make assembly of it: {str(exc).splitlines()[0]}") from None


def stage_source(build_dir: Path, manifest: Manifest, stage: int, kind: str) -> Path:
    """The saved generated code of `stage`: kind is 'asm', 'ir', 'cuda' or 'ptx'."""
    entries = {s.stage: s for s in manifest.stages}
    if stage not in entries:
        raise ArtifactError(
            f"{build_dir}: there is no stage {stage} (stages: {', '.join(map(str, entries))})"
        )
    artifact = entries[stage].artifact
    if artifact is None:
        raise ArtifactError(f"stage {stage} was not built: {entries[stage].error}")
    if artifact.fallback:
        raise ArtifactError(
            f"stage {stage} runs on {artifact.fallback} (fallback): there is no generated code"
        )
    compiled = [part for part in artifact.parts if not part.fallback]
    if compiled:  # TVM parts around onnxruntime regions: the first part's code
        artifact = next((p for p in compiled if kind in p.options.get("sources", {})), compiled[0])
    sources = artifact.options.get("sources", {})
    if kind not in sources:
        have = ", ".join(sorted(sources)) or "none"
        raise ArtifactError(f"stage {stage} has no '{kind}' code (this build kept: {have})")
    path = build_dir / sources[kind]
    if not path.is_file():
        raise ArtifactError(f"{path}: missing; compile again")
    return path


def instruction_mix(text: str, arch: str) -> InstructionMix:
    """Classify the instructions of assembly: x86_64, aarch64, or CUDA PTX (arch 'cuda')."""
    family = "aarch64" if arch.startswith("aarch64") else "ptx" if arch == "cuda" else "x86_64"
    lines = [_instruction(line, family) for line in text.splitlines()]
    lines = [line for line in lines if line]
    mnemonics = Counter(line.split()[0] for line in lines)
    classes = {}
    for label, pattern in CLASSES[family]:
        regex = re.compile(pattern)
        if "register" in label or "ops (" in label:
            classes[label] = sum(1 for line in lines if regex.search(line))
        else:
            classes[label] = sum(n for mnemonic, n in mnemonics.items() if regex.search(mnemonic))
    return InstructionMix(family, len(lines), classes, mnemonics.most_common(12))


def _instruction(line: str, family: str) -> str:
    """The instruction on an assembly line, or '' for labels, directives and comments."""
    text = line.split("//")[0].split("#")[0].split(";")[0].strip()
    if family == "ptx":
        if ".entry" in text:
            return ".entry"
        text = re.sub(r"^@!?%\w+\s+", "", text.strip("{} \t"))  # drop a predicate guard like @%p1
        return "" if not text or text.startswith((".", "$", ")", "(")) or text.endswith(":") else text
    if not text or text.endswith(":") or text.startswith("."):
        return ""
    return text
