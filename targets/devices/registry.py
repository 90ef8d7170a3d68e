"""The device-capability registry: loads and validates the profile YAML files (built-in ones in
`profiles/`, plus user files and folders) and turns a profile into a `nndeploy.types.Device`.

A profile is data, not code: one YAML file per device kind, validated here with pydantic (unknown keys
refused, numbers positive, dtypes known). Search order, later wins on a name clash: the built-in
profiles, then the folders in ``$NNDEPLOY_PROFILE_PATH`` (``os.pathsep``-separated), then `extra_paths`.
"""

from __future__ import annotations

import copy
import difflib
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from nndeploy.errors import ClusterError
from nndeploy.types import DTYPE_BYTES, Device

PROFILE_PATH_ENV = "NNDEPLOY_PROFILE_PATH"
BUILTIN_DIR = Path(__file__).parent / "profiles"
SLUG_PATTERN = r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$"
LLVM_KINDS = ("llvm", "c")
GPU_KINDS = ("cuda", "rocm", "vulkan", "opencl", "metal")
_GIB = 1024**3
_PositiveFloat = Annotated[float, Field(gt=0)]


@dataclass(frozen=True)
class Profile:
    """One validated device-capability profile and the file it came from (`path`, as the user gave it)."""

    name: str
    description: str
    kind: str
    arch: str
    tvm_target: dict[str, Any]
    peak_gflops: dict[str, float]
    mem_bw_gbytes_s: float
    host_link_gbytes_s: float
    mem_bytes: int
    launch_overhead_us: float
    ops: frozenset[str] | None
    dtypes: frozenset[str]
    cross_compile: dict[str, Any] | None
    sources: tuple[dict[str, str], ...]
    path: str


class _CrossCompile(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    toolchain: str | None = None
    cc: str | None = None
    cxx: str | None = None
    debian_package: str | None = None
    sysroot: str | None = None
    qemu: str | None = None
    qemu_debian_package: str | None = None
    nvcc_arch: str | None = Field(default=None, pattern=r"^sm_[0-9]+a?$")


class _Source(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    url: str = Field(pattern=r"^https?://\S+$")
    figures: str = Field(min_length=1)


class _ProfileSchema(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field(pattern=SLUG_PATTERN, max_length=63)
    description: str = Field(min_length=1)
    kind: Literal["cpu", "gpu", "edge"]
    arch: str = Field(pattern=r"^[a-z0-9_]+$")
    tvm_target: dict[str, Any]
    peak_gflops: dict[str, _PositiveFloat] = Field(min_length=1)
    mem_bw_gbytes_s: float = Field(gt=0)
    # Bandwidth to the host machine's CPU (a GPU's PCIe link); default: mem_bw_gbytes_s.
    host_link_gbytes_s: float | None = Field(default=None, gt=0)
    mem_gib: float | None = Field(default=None, gt=0)
    mem_bytes: int | None = Field(default=None, gt=0)
    launch_overhead_us: float = Field(ge=0)
    ops: list[str] | None = None
    dtypes: list[str] = Field(default_factory=lambda: ["float32"], min_length=1)
    cross_compile: _CrossCompile | None = None
    sources: list[_Source] = Field(default_factory=list)


_FIELDS = tuple(_ProfileSchema.model_fields)
_PATTERN_HINTS = {
    "name": "must be a lowercase slug of a-z, 0-9 and '-' (at most 63 characters)",
    "arch": "must be lowercase letters, digits and '_' (e.g. x86_64, aarch64, cuda)",
    "url": "must be an http(s) URL",
    "nvcc_arch": "must look like sm_87 or sm_90a",
}
_TYPE_NAMES = {
    "float_type": "a number",
    "int_type": "an integer",
    "string_type": "a string",
    "dict_type": "a mapping",
    "list_type": "a list",
    "bool_type": "true or false",
    "model_type": "a mapping",
}


def _warn(message: str) -> None:
    import sys

    print(f"warning: {message}", file=sys.stderr)


def closest_names(name: str, candidates: Iterable[str]) -> list[str]:
    """Up to three of `candidates` that look like `name` (for "did you mean ...?"), best first."""
    return difflib.get_close_matches(name, sorted(set(candidates)), n=3, cutoff=0.6)


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """ "; did you mean 'x'?" when a candidate is close to `name`, else the empty string."""
    close = closest_names(name, candidates)
    return f"; did you mean '{close[0]}'?" if close else ""


def _loc(loc: Sequence[int | str]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return f"'{value}'"
    if isinstance(value, int | float):
        return repr(value)
    return f"a {type(value).__name__}"


def _num(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _pydantic_problem(err: Mapping[str, Any]) -> str:
    """One readable "field: problem" line for a pydantic error."""
    loc = [p for p in err["loc"] if p != "[key]"]
    where = _loc(loc) or "(top level)"
    kind, ctx, value = err["type"], err.get("ctx") or {}, err.get("input")
    if kind == "missing":
        return f"{where}: required"
    if kind == "extra_forbidden":
        parent = loc[:-1]
        known = _FIELDS if not parent else _nested_fields(parent)
        return f"{where}: unknown key{did_you_mean(str(loc[-1]), known)}"
    if kind == "greater_than":
        return f"{where}: must be > {_num(ctx['gt'])}, got {_describe(value)}"
    if kind == "greater_than_equal":
        return f"{where}: must be >= {_num(ctx['ge'])}, got {_describe(value)}"
    if kind == "literal_error":
        return f"{where}: must be one of {ctx['expected']}, got {_describe(value)}"
    if kind == "string_pattern_mismatch":
        hint = _PATTERN_HINTS.get(str(loc[-1]) if loc else "", f"must match {ctx.get('pattern')}")
        return f"{where}: {hint}, got {_describe(value)}"
    if kind in ("too_short", "string_too_short"):
        return f"{where}: must not be empty"
    if kind == "string_too_long":
        return f"{where}: must be at most {ctx.get('max_length')} characters"
    if kind in _TYPE_NAMES:
        return f"{where}: must be {_TYPE_NAMES[kind]}, got {_describe(value)}"
    return f"{where}: {err['msg'][:1].lower()}{err['msg'][1:]}"


def _nested_fields(parent: Sequence[int | str]) -> tuple[str, ...]:
    head = parent[0]
    if head == "cross_compile":
        return tuple(_CrossCompile.model_fields)
    if head == "sources":
        return tuple(_Source.model_fields)
    return ()


def _semantic_problems(p: _ProfileSchema) -> list[str]:
    """Checks across fields that the schema alone cannot express."""
    problems: list[str] = []
    for dtype in p.peak_gflops:
        if dtype not in DTYPE_BYTES:
            problems.append(f"peak_gflops.{dtype}: unknown dtype{did_you_mean(dtype, DTYPE_BYTES)}")
        elif dtype not in p.dtypes:
            problems.append(f"peak_gflops.{dtype}: dtype not listed in dtypes")
    if "float32" not in p.peak_gflops:
        problems.append("peak_gflops.float32: required (the fallback figure for other dtypes)")
    for i, dtype in enumerate(p.dtypes):
        if dtype not in DTYPE_BYTES:
            problems.append(f"dtypes[{i}]: unknown dtype '{dtype}'{did_you_mean(dtype, DTYPE_BYTES)}")
    if len(set(p.dtypes)) != len(p.dtypes):
        twice = sorted({d for d in p.dtypes if p.dtypes.count(d) > 1})
        problems.append("dtypes: listed twice: " + ", ".join(twice))
    if (p.mem_gib is None) == (p.mem_bytes is None):
        problems.append("mem_gib: give exactly one of mem_gib and mem_bytes")
    if p.ops is not None:
        for i, op in enumerate(p.ops):
            if not op or not op[:1].isalpha():
                problems.append(f"ops[{i}]: not an ONNX op type: {_describe(op)}")
    problems.extend(_tvm_target_problems(p.kind, p.tvm_target))
    return problems


def _tvm_target_problems(kind: str, target: Mapping[str, Any]) -> list[str]:
    tkind = target.get("kind")
    if not isinstance(tkind, str):
        return ["tvm_target.kind: required (a TVM target kind such as 'llvm' or 'cuda')"]
    allowed = GPU_KINDS if kind == "gpu" else LLVM_KINDS
    if tkind not in allowed:
        return [f"tvm_target.kind: must be one of {', '.join(allowed)} for kind '{kind}', got '{tkind}'"]
    if tkind == "cuda" and not isinstance(target.get("arch"), str):
        return ["tvm_target.arch: required for cuda (e.g. 'sm_87'); TVM would otherwise guess sm_50"]
    return []


def parse_profile(data: Any, path: str, warn: Callable[[str], None] | None = None) -> Profile:
    """Validate one parsed profile document; `path` names the file in error messages. A profile with the
    old key `mem_bw_gbps` (gigabytes per second) is read as `mem_bw_gbytes_s`, and `warn` told so."""
    if not isinstance(data, dict):
        raise ClusterError(f"{path}: a profile must be a mapping of fields, got {_describe(data)}")
    if "mem_bw_gbps" in data and "mem_bw_gbytes_s" not in data:
        data = {("mem_bw_gbytes_s" if k == "mem_bw_gbps" else k): v for k, v in data.items()}
        (warn or _warn)(
            f"{path}: mem_bw_gbps is now mem_bw_gbytes_s (gigabytes per second; gbps means gigabits "
            "everywhere else); rename the key"
        )
    try:
        schema = _ProfileSchema.model_validate(data)
    except ValidationError as exc:
        problems = [_pydantic_problem(e) for e in exc.errors()]
        raise ClusterError("; ".join(f"{path}: {p}" for p in problems)) from None
    problems = _semantic_problems(schema)
    if problems:
        raise ClusterError("; ".join(f"{path}: {p}" for p in problems))
    mem_bytes = schema.mem_bytes if schema.mem_bytes is not None else round(schema.mem_gib * _GIB)
    return Profile(
        name=schema.name,
        description=schema.description,
        kind=schema.kind,
        arch=schema.arch,
        tvm_target=copy.deepcopy(schema.tvm_target),
        peak_gflops={k: float(v) for k, v in schema.peak_gflops.items()},
        mem_bw_gbytes_s=float(schema.mem_bw_gbytes_s),
        host_link_gbytes_s=float(schema.host_link_gbytes_s or schema.mem_bw_gbytes_s),
        mem_bytes=int(mem_bytes),
        launch_overhead_us=float(schema.launch_overhead_us),
        ops=frozenset(schema.ops) if schema.ops is not None else None,
        dtypes=frozenset(schema.dtypes),
        cross_compile=schema.cross_compile.model_dump(exclude_none=True) if schema.cross_compile else None,
        sources=tuple(s.model_dump() for s in schema.sources),
        path=path,
    )


def load_profile_file(path: str | Path, display: str | None = None) -> Profile:
    """Read and validate one profile YAML file (`display` is the name used in messages)."""
    shown = display or str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ClusterError(f"{shown}: profile file not found") from None
    except OSError as exc:
        raise ClusterError(f"{shown}: cannot read profile: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ClusterError(f"{shown}: not valid YAML: {_yaml_problem(exc)}") from None
    return parse_profile(data, shown)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    if mark is not None:
        return f"{problem} (line {mark.line + 1}, column {mark.column + 1})"
    return str(problem)


def _profile_files(entry: Path, shown: str) -> list[tuple[Path, str]]:
    if entry.is_dir():
        files = sorted(p for p in entry.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
        return [(f, os.path.join(shown, f.name)) for f in files]
    if entry.is_file():
        return [(entry, shown)]
    raise ClusterError(f"{shown}: profile path not found (expected a .yaml file or a folder of them)")


def _load_layer(entries: Iterable[tuple[Path, str]]) -> dict[str, Profile]:
    """Profiles of one search layer; the same name twice within a layer is an error."""
    layer: dict[str, Profile] = {}
    for entry, shown in entries:
        for file, file_shown in _profile_files(entry, shown):
            profile = load_profile_file(file, file_shown)
            other = layer.get(profile.name)
            if other is not None and other.path != profile.path:
                raise ClusterError(f"{file_shown}: name: '{profile.name}' is also defined in {other.path}")
            layer[profile.name] = profile
    return layer


def _env_entries() -> list[tuple[Path, str]]:
    value = os.environ.get(PROFILE_PATH_ENV, "")
    return [(Path(p), p) for p in value.split(os.pathsep) if p.strip()]


def load_profiles(extra_paths: Sequence[str | Path] = ()) -> dict[str, Profile]:
    """All profiles by name: the built-ins, then ``$NNDEPLOY_PROFILE_PATH`` folders, then `extra_paths`
    (files or folders of ``*.yaml``); a later profile with the same name replaces an earlier one."""
    builtin = [(BUILTIN_DIR, "profiles")]
    extra = [(Path(p), str(p)) for p in extra_paths]
    profiles: dict[str, Profile] = {}
    for layer in (builtin, _env_entries(), extra):
        profiles.update(_load_layer(layer))
    return dict(sorted(profiles.items()))


def get_profile(name: str, profiles: Mapping[str, Profile]) -> Profile:
    """The profile called `name`, or a ClusterError with a "did you mean" hint."""
    if name in profiles:
        return profiles[name]
    hint = did_you_mean(name, profiles)
    raise ClusterError(f"unknown profile '{name}'{hint} (known: {', '.join(sorted(profiles))})")


def device_from_profile(
    profile: Profile, name: str, host: str | None = None, node_labels: Mapping[str, str] | None = None
) -> Device:
    """A cluster device called `name` with the capabilities of `profile` (a fresh copy of its mappings)."""
    return Device(
        name=name,
        profile=profile.name,
        kind=profile.kind,
        arch=profile.arch,
        tvm_target=copy.deepcopy(profile.tvm_target),
        peak_gflops=dict(profile.peak_gflops),
        mem_bw_gbytes_s=profile.mem_bw_gbytes_s,
        mem_bytes=profile.mem_bytes,
        launch_overhead_us=profile.launch_overhead_us,
        ops=profile.ops,
        dtypes=profile.dtypes,
        cross_compile=copy.deepcopy(profile.cross_compile),
        host=host,
        node_labels=dict(node_labels or {}),
    )
