"""cluster.yaml -> `nndeploy.types.Cluster`: parsing and validation that reports every problem at once.

Format (every key but ``devices`` is optional)::

    name: camera-and-server          # DNS-1123 label; default: the file's stem (or "cluster")
    profiles: [./my-profiles]        # extra profile files/folders, relative to this yaml
    devices:                         # 1 to 12 devices (the planner is exact, exponential in this count)
      - name: camera                 # unique DNS-1123 label ([a-z0-9-], max 63), later used in k8s names
        profile: raspberry-pi-5      # a built-in or user profile (see nndeploy.targets.devices.registry)
        host: 192.168.1.20           # optional address
        labels: {kubernetes.io/hostname: cam-01}   # optional Kubernetes node labels (strings)
      - name: server
        profile: x86-avx512-server
    links:                           # symmetric; one entry per pair; unlisted pairs use default_link
      - between: [camera, server]
        gbps: 0.1                    # > 0, gigabits per second
        latency_ms: 2.0              # >= 0
    default_link: {gbps: 10, latency_ms: 0.1}   # the defaults shown here
    hop: {fixed_ms: 0.3, ms_per_mib: 0.7}       # what the data plane spends per hop between stages,
                                     # beyond the link (default: `nndeploy profile`'s measurement in
                                     # --profiles, else these figures); 0 and 0 make hops free
    input_at: camera                 # where requests arrive (required with 2+ devices)
    output_to: server                # where results are consumed (required with 2+ devices)

Devices with the same ``host`` are one machine: unless ``links`` names the pair, their link is the slower
of the two profiles' ``host_link_gbytes_s`` (in gigabits) with SAME_HOST_LATENCY_MS. docs/cluster-yaml.md
is the user's reference.

Every problem is collected and raised as one `ClusterError` whose message lists them all, separated by
"; ", each as "<file as given>: <path>: <problem>", e.g.
"cluster.yaml: devices[2].profile: unknown profile 'jetsn-orin'; did you mean 'jetson-orin-nano-gpu'?".
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from nndeploy.errors import ClusterError
from nndeploy.types import Cluster, Device, HopCost, Link

from .registry import Profile, closest_names, device_from_profile, did_you_mean, load_profiles

MAX_DEVICES = 12
DEFAULT_LINK_GBPS = 10.0
DEFAULT_LINK_LATENCY_MS = 0.1
SAME_HOST_LATENCY_MS = 0.01
TOP_KEYS = ("name", "profiles", "devices", "links", "default_link", "hop", "input_at", "output_to")
HOP_KEYS = ("fixed_ms", "ms_per_mib")
DEVICE_KEYS = ("name", "profile", "host", "labels")
LINK_KEYS = ("between", "gbps", "latency_ms")
DEFAULT_LINK_KEYS = ("gbps", "latency_ms")

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_LABEL_PREFIX = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")


class _Problems:
    """Collects "<path>: <problem>" lines; `raise_if_any` turns them into one ClusterError."""

    def __init__(self, source_name: str) -> None:
        self.source_name = source_name
        self.items: list[str] = []

    def add(self, where: str, problem: str) -> None:
        self.items.append(
            f"{self.source_name}: {where}: {problem}" if where else f"{self.source_name}: {problem}"
        )

    def add_raw(self, message: str) -> None:
        self.items.append(message)

    def raise_if_any(self) -> None:
        if self.items:
            raise ClusterError("; ".join(self.items))


def _kind_of(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return f"'{value}'"
    return repr(value)


def _check_keys(data: Mapping[Any, Any], known: Sequence[str], where: str, problems: _Problems) -> None:
    for key in data:
        if key not in known:
            prefix = f"{where}." if where else ""
            hint = did_you_mean(str(key), known) or f" (known: {', '.join(known)})"
            problems.add(f"{prefix}{key}", f"unknown key{hint}")


def _number(value: Any, where: str, problems: _Problems, *, positive: bool) -> float | None:
    """A finite number > 0 (positive) or >= 0; None (and a problem) otherwise."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        problems.add(where, f"must be a number, got {_kind_of(value)}")
        return None
    if positive and value <= 0:
        problems.add(where, f"must be > 0, got {value}")
        return None
    if not positive and value < 0:
        problems.add(where, f"must be >= 0, got {value}")
        return None
    return float(value)


def _dns_label_problem(value: Any) -> str | None:
    if not isinstance(value, str):
        return f"must be a string, got {_kind_of(value)}"
    if not _DNS_LABEL.match(value):
        return (
            f"'{value}' is not a valid name: use 1-63 lowercase letters, digits and '-', "
            "starting and ending with a letter or digit"
        )
    return None


def _label_problems(labels: Any, where: str, problems: _Problems) -> dict[str, str]:
    if not isinstance(labels, Mapping):
        problems.add(where, f"must be a mapping of Kubernetes node labels, got {_kind_of(labels)}")
        return {}
    good: dict[str, str] = {}
    for key, value in labels.items():
        at = f"{where}.{key}"
        if not isinstance(key, str):
            problems.add(at, "label key must be a string")
            continue
        prefix, _, name = key.rpartition("/")
        if (prefix and (len(prefix) > 253 or not _LABEL_PREFIX.match(prefix))) or not _LABEL_NAME.match(name):
            problems.add(
                at, "not a valid Kubernetes label key ([prefix/]name, name of 1-63 of [A-Za-z0-9-_.])"
            )
            continue
        if not isinstance(value, str):
            problems.add(at, f"label value must be a string (quote it in YAML), got {_kind_of(value)}")
            continue
        if not _LABEL_VALUE.match(value):
            problems.add(at, f"'{value}' is not a valid Kubernetes label value (up to 63 of [A-Za-z0-9-_.])")
            continue
        good[key] = value
    return good


def _profile_paths(data: Mapping[str, Any], base_dir: Path, problems: _Problems) -> list[str]:
    raw = data.get("profiles")
    if raw is None:
        return []
    entries = [raw] if isinstance(raw, str) else raw
    if not isinstance(entries, list):
        problems.add("profiles", f"must be a list of profile files or folders, got {_kind_of(raw)}")
        return []
    paths: list[str] = []
    for i, entry in enumerate(entries):
        where = f"profiles[{i}]" if not isinstance(raw, str) else "profiles"
        if not isinstance(entry, str) or not entry:
            problems.add(where, f"must be a path, got {_kind_of(entry)}")
            continue
        path = Path(entry) if Path(entry).is_absolute() else base_dir / entry
        if not path.exists():
            problems.add(where, f"no such profile file or folder: {path}")
            continue
        paths.append(str(path))
    return paths


def _parse_devices(
    raw: Any, profiles: Mapping[str, Profile] | None, problems: _Problems
) -> tuple[list[Device], list[str]]:
    """Valid devices and the list of every device name given (for cross-references)."""
    if raw is None:
        problems.add("devices", "required: a list of at least one device")
        return [], []
    if not isinstance(raw, list):
        problems.add("devices", f"must be a list of devices, got {_kind_of(raw)}")
        return [], []
    if not raw:
        problems.add("devices", "at least one device is required")
        return [], []
    if len(raw) > MAX_DEVICES:
        problems.add(
            "devices",
            f"{len(raw)} devices given; at most {MAX_DEVICES} are supported "
            "(the planner is exact and its cost grows exponentially with the device count)",
        )
    devices: list[Device] = []
    names: list[str] = []
    first_index: dict[str, int] = {}
    for i, item in enumerate(raw):
        where = f"devices[{i}]"
        if not isinstance(item, Mapping):
            problems.add(where, f"must be a mapping with name and profile, got {_kind_of(item)}")
            continue
        _check_keys(item, DEVICE_KEYS, where, problems)
        ok = True
        name = item.get("name")
        if name is None:
            problems.add(f"{where}.name", "required")
            ok = False
        elif (problem := _dns_label_problem(name)) is not None:
            problems.add(f"{where}.name", problem)
            ok = False
        elif name in first_index:
            problems.add(
                f"{where}.name", f"duplicate device name '{name}' (also devices[{first_index[name]}])"
            )
            ok = False
        else:
            first_index[name] = i
        if isinstance(name, str) and name not in names:
            names.append(name)
        profile_name = item.get("profile")
        profile: Profile | None = None
        if profile_name is None:
            problems.add(f"{where}.profile", "required")
            ok = False
        elif not isinstance(profile_name, str):
            problems.add(f"{where}.profile", f"must be a profile name, got {_kind_of(profile_name)}")
            ok = False
        elif profiles is not None:
            profile = profiles.get(profile_name)
            if profile is None:
                hint = did_you_mean(profile_name, profiles) or f" (known: {', '.join(sorted(profiles))})"
                problems.add(f"{where}.profile", f"unknown profile '{profile_name}'{hint}")
                ok = False
        host = item.get("host")
        if host is not None and (not isinstance(host, str) or not host or any(c.isspace() for c in host)):
            problems.add(f"{where}.host", f"must be an address or host name, got {_kind_of(host)}")
            ok = False
        labels = _label_problems(item["labels"], f"{where}.labels", problems) if "labels" in item else {}
        if ok and profile is not None:
            devices.append(device_from_profile(profile, name, host=host, node_labels=labels))
    return devices, names


def _device_ref(value: Any, where: str, names: Sequence[str], problems: _Problems) -> str | None:
    if not isinstance(value, str):
        problems.add(where, f"must be a device name, got {_kind_of(value)}")
        return None
    if value not in names:
        close = closest_names(value, names)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        problems.add(where, f"unknown device '{value}'{hint}; devices are: {', '.join(names)}")
        return None
    return value


def _parse_links(raw: Any, names: Sequence[str], problems: _Problems) -> list[Link]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        problems.add("links", f"must be a list of links, got {_kind_of(raw)}")
        return []
    links: list[Link] = []
    seen: dict[frozenset[str], int] = {}
    for i, item in enumerate(raw):
        where = f"links[{i}]"
        if not isinstance(item, Mapping):
            problems.add(where, f"must be a mapping with between, gbps and latency_ms, got {_kind_of(item)}")
            continue
        _check_keys(item, LINK_KEYS, where, problems)
        ends: list[str | None] = [None, None]
        between = item.get("between")
        if between is None:
            problems.add(f"{where}.between", "required: [device, device]")
        elif not isinstance(between, list) or len(between) != 2:
            problems.add(f"{where}.between", f"must be a list of two device names, got {_kind_of(between)}")
        else:
            ends = [_device_ref(between[j], f"{where}.between[{j}]", names, problems) for j in (0, 1)]
            if between[0] == between[1] and isinstance(between[0], str):
                problems.add(f"{where}.between", f"a device cannot link to itself ('{between[0]}')")
                ends = [None, None]
        gbps = latency = None
        if "gbps" not in item:
            problems.add(f"{where}.gbps", "required")
        else:
            gbps = _number(item["gbps"], f"{where}.gbps", problems, positive=True)
        if "latency_ms" not in item:
            problems.add(f"{where}.latency_ms", "required")
        else:
            latency = _number(item["latency_ms"], f"{where}.latency_ms", problems, positive=False)
        a, b = ends
        if a is None or b is None:
            continue
        pair = frozenset((a, b))
        if pair in seen:
            problems.add(f"{where}.between", f"duplicate link between {a} and {b} (also links[{seen[pair]}])")
            continue
        seen[pair] = i
        if gbps is not None and latency is not None:
            links.append(Link(a=a, b=b, gbps=gbps, latency_ms=latency))
    return links


def _parse_hop(raw: Any, problems: _Problems) -> HopCost | None:
    if not isinstance(raw, Mapping):
        problems.add("hop", f"must be a mapping with fixed_ms and ms_per_mib, got {_kind_of(raw)}")
        return None
    _check_keys(raw, HOP_KEYS, "hop", problems)
    values = []
    for key in HOP_KEYS:
        if key not in raw:
            problems.add(f"hop.{key}", "required")
            return None
        values.append(_number(raw[key], f"hop.{key}", problems, positive=False))
    return None if None in values else HopCost(*values)  # type: ignore[arg-type]


def _parse_default_link(raw: Any, problems: _Problems) -> Link:
    gbps, latency = DEFAULT_LINK_GBPS, DEFAULT_LINK_LATENCY_MS
    if raw is not None:
        if not isinstance(raw, Mapping):
            problems.add("default_link", f"must be a mapping with gbps and latency_ms, got {_kind_of(raw)}")
        else:
            _check_keys(raw, DEFAULT_LINK_KEYS, "default_link", problems)
            if "gbps" in raw:
                gbps = _number(raw["gbps"], "default_link.gbps", problems, positive=True) or gbps
            if "latency_ms" in raw:
                value = _number(raw["latency_ms"], "default_link.latency_ms", problems, positive=False)
                latency = latency if value is None else value
    return Link(a="*", b="*", gbps=gbps, latency_ms=latency)


def _cluster_name(data: Mapping[str, Any], source_name: str, problems: _Problems) -> str:
    if "name" in data:
        problem = _dns_label_problem(data["name"])
        if problem is not None:
            problems.add("name", problem)
            return "cluster"
        return str(data["name"])
    stem = Path(source_name).stem.lower()
    return stem if _DNS_LABEL.match(stem) else "cluster"


def parse_cluster(
    data: Any, source_name: str, base_dir: Path, extra_profile_paths: Sequence[str | Path] = ()
) -> Cluster:
    """Validate a parsed cluster document. `source_name` prefixes every message; `base_dir` resolves the
    document's relative ``profiles`` entries; `extra_profile_paths` (e.g. from the CLI) override both the
    built-in profiles and the document's own."""
    problems = _Problems(source_name)
    if not isinstance(data, Mapping):
        problems.add("", f"must be a mapping with a 'devices' list, got {_kind_of(data)}")
        problems.raise_if_any()
    _check_keys(data, TOP_KEYS, "", problems)
    name = _cluster_name(data, source_name, problems)
    profile_paths = _profile_paths(data, Path(base_dir), problems)
    profiles: dict[str, Profile] | None
    try:
        profiles = load_profiles([*profile_paths, *extra_profile_paths])
    except ClusterError as exc:
        problems.add_raw(str(exc))
        profiles = None
    devices, names = _parse_devices(data.get("devices"), profiles, problems)
    links = _parse_links(data.get("links"), names, problems)
    default_link = _parse_default_link(data.get("default_link"), problems)
    hop = _parse_hop(data["hop"], problems) if "hop" in data else None
    source = sink = names[0] if names else ""
    for key in ("input_at", "output_to"):
        if key not in data and len(names) > 1:
            what = "requests arrive at" if key == "input_at" else "consumes the results"
            problems.add(
                key, f"required with more than one device: the device that {what}, one of {', '.join(names)}"
            )
    if "input_at" in data:
        source = _device_ref(data["input_at"], "input_at", names, problems) or source
    sink = source
    if "output_to" in data:
        sink = _device_ref(data["output_to"], "output_to", names, problems) or sink
    problems.raise_if_any()
    links += _same_host_links(devices, links, profiles or {})
    return Cluster(
        devices=tuple(devices),
        links=tuple(links),
        default_link=default_link,
        source=source,
        sink=sink,
        name=name,
        hop=hop,
        default_link_given="default_link" in data,
    )


def _same_host_links(
    devices: Sequence[Device], links: Sequence[Link], profiles: Mapping[str, Profile]
) -> list[Link]:
    """The machine-internal link of every pair of devices sharing a `host` that `links` does not name."""
    given = {frozenset((link.a, link.b)) for link in links}
    found = []
    for i, a in enumerate(devices):
        for b in devices[i + 1 :]:
            if a.host is None or a.host != b.host or frozenset((a.name, b.name)) in given:
                continue
            gbytes = min(profiles[a.profile].host_link_gbytes_s, profiles[b.profile].host_link_gbytes_s)
            found.append(Link(a=a.name, b=b.name, gbps=gbytes * 8, latency_ms=SAME_HOST_LATENCY_MS))
    return found


def load_cluster(path: str | Path, extra_profile_paths: Sequence[str | Path] = ()) -> Cluster:
    """Read, validate and return the cluster described by the YAML file at `path` (messages name the
    file exactly as given)."""
    shown = str(path)
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ClusterError(f"{shown}: file not found") from None
    except IsADirectoryError:
        raise ClusterError(f"{shown}: is a folder, not a cluster YAML file") from None
    except OSError as exc:
        raise ClusterError(f"{shown}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ClusterError(f"{shown}: not a text file (expected UTF-8 YAML)") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise ClusterError(f"{shown}: not valid YAML: {problem}{where}") from None
    if data is None:
        raise ClusterError(f"{shown}: the file is empty; it needs at least a 'devices' list")
    return parse_cluster(data, shown, file.parent, extra_profile_paths)
