"""Separate hosts on this machine, for tests and benchmarks of more than one machine (tests import it:
the benchmarks folder is on pytest's path): Linux network namespaces joined
through a bridge (in a namespace of its own), each with its own address on a private /24, links shaped with
`tc ... tbf`, and a real multi-node Ray cluster on them (`ray start` in each namespace, token auth on).

Everything is made by the test and torn down by it, also on failure: processes in the namespaces are
killed, the namespaces (and so their veth ends and the bridge) deleted, Ray's temp folder removed;
`leftovers()` says what of it is still there. Traffic goes only between the addresses made here.
Needs root and iproute2 (`ip`, `tc`); `unavailable()` says why not, for a clean skip.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

PREFIX = "nndt"
RAY_PORT = 6379


def unavailable() -> str:
    """Why namespaced hosts cannot be made here ('' when they can)."""
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"needs iproute2 ({tool})"
    probe = f"{PREFIX}probe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"cannot make a network namespace: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "delete", probe], capture_output=True)
    return ""


def leftovers() -> list[str]:
    """Namespaces and links (in this namespace) of this module still present (a test checks there are
    none after teardown)."""
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    found = [line.split()[0] for line in listed.splitlines() if line.startswith(PREFIX)]
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    found += [
        line.split(":")[1].strip().split("@")[0]
        for line in links.splitlines()
        if line.count(":") >= 2 and line.split(":")[1].strip().startswith(PREFIX)
    ]
    return found


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


@dataclass(frozen=True)
class Host:
    """One namespace: its name and address."""

    name: str
    netns: str
    address: str


class Hosts:
    """Namespaced hosts on one switch; `shaped` maps a host to its link's rate (tc tbf, both ways)."""

    def __init__(self, names: list[str], shaped: dict[str, str] | None = None) -> None:
        tag = f"{os.getpid() % 10000}{secrets.token_hex(1)}"
        self.subnet = f"10.{200 + int(secrets.token_hex(1), 16) % 50}.{int(secrets.token_hex(1), 16)}"
        self.switch = f"{PREFIX}{tag}sw"
        self.hosts = {
            name: Host(name, f"{PREFIX}{tag}{name}", f"{self.subnet}.{i + 1}") for i, name in enumerate(names)
        }
        self.shaped = shaped or {}

    def __enter__(self) -> Hosts:
        try:
            self._make()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _make(self) -> None:
        _ip("netns", "add", self.switch)
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "br0", "up")
        for i, host in enumerate(self.hosts.values()):
            _ip("netns", "add", host.netns)
            inside, outside = f"{PREFIX}{os.getpid() % 10000}h{i}", f"{PREFIX}{os.getpid() % 10000}s{i}"
            _ip("link", "add", inside, "type", "veth", "peer", "name", outside)
            _ip("link", "set", inside, "netns", host.netns)
            _ip("link", "set", outside, "netns", self.switch)
            _ip("-n", host.netns, "link", "set", inside, "name", "eth0")
            _ip("-n", host.netns, "addr", "add", f"{host.address}/24", "dev", "eth0")
            _ip("-n", host.netns, "link", "set", "eth0", "up")
            _ip("-n", host.netns, "link", "set", "lo", "up")
            _ip("-n", self.switch, "link", "set", outside, "master", "br0")
            _ip("-n", self.switch, "link", "set", outside, "up")
            rate = self.shaped.get(host.name)
            if rate:
                for netns, dev in ((host.netns, "eth0"), (self.switch, outside)):
                    shape = ["tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate", rate]
                    shape += ["burst", "64kb", "latency", "400ms"]
                    subprocess.run(["ip", "netns", "exec", netns, *shape], check=True, capture_output=True)

    def command(self, host: str, args: list[str]) -> list[str]:
        """`args` as run inside `host`'s namespace."""
        return ["ip", "netns", "exec", self.hosts[host].netns, *args]

    def pids(self, host: str) -> list[int]:
        """The processes running in `host`'s namespace."""
        listed = subprocess.run(
            ["ip", "netns", "pids", self.hosts[host].netns], capture_output=True, text=True
        ).stdout
        return [int(p) for p in listed.split()]

    def kill(self, host: str, sig: int = signal.SIGKILL) -> None:
        """Kill every process in `host`'s namespace (the whole machine going down) and wait for them."""
        for _ in range(50):
            pids = self.pids(host)
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            time.sleep(0.1)

    def close(self) -> None:
        """Kill what runs in the namespaces and delete them (the veths and the bridge go with them)."""
        for host in self.hosts.values():
            existing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
            if host.netns in existing:
                self.kill(host.name)
                subprocess.run(["ip", "netns", "delete", host.netns], capture_output=True)
        subprocess.run(["ip", "netns", "delete", self.switch], capture_output=True)


class RayNodes:
    """A Ray cluster on `hosts`: the head on `head`, one node on every host, each declaring the Ray
    resources it is given (`resources[host]`; the `deferred` ones join when the test starts them), token
    authentication on (RAY_AUTH_MODE=token, the token in
    RAY_AUTH_TOKEN, as Ray documents for clusters started with `ray start`)."""

    def __init__(
        self,
        hosts: Hosts,
        head: str,
        resources: dict[str, dict[str, float]],
        deferred: tuple[str, ...] = (),
    ) -> None:
        self.hosts = hosts
        self.deferred = deferred  # hosts that join later (`start`)
        self.head = head
        self.resources = resources
        self.temp = Path(tempfile.mkdtemp(prefix="nnd-ray-", dir="/tmp"))  # short: unix socket paths
        token = secrets.token_hex(16)
        self.env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
        self.env.pop("RAY_ADDRESS", None)
        self.address = f"{hosts.hosts[head].address}:{RAY_PORT}"

    def __enter__(self) -> RayNodes:
        try:
            self.start(self.head)
            for host in self.hosts.hosts:
                if host != self.head and host in self.resources and host not in self.deferred:
                    self.start(host)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self, host: str) -> None:
        """`ray start` on `host` (the head, or a node joining it), with its resources."""
        ray = str(Path(sys.executable).with_name("ray"))
        args = [ray, "start", "--node-ip-address", self.hosts.hosts[host].address, "--num-cpus", "1"]
        args += ["--resources", json.dumps(self.resources.get(host, {})), "--disable-usage-stats"]
        if host == self.head:
            args += ["--head", "--port", str(RAY_PORT), "--include-dashboard", "false"]
            args += ["--temp-dir", str(self.temp)]
        else:
            args += ["--address", self.address]
        done = subprocess.run(
            self.hosts.command(host, args), env=self.env, capture_output=True, text=True, timeout=120
        )
        if done.returncode != 0:
            raise RuntimeError(f"ray start on {host} failed: {done.stderr.strip()[-2000:]}")

    def close(self) -> None:
        """Kill every Ray process (not with `ray stop`, which would stop any Ray on this machine)."""
        for host in self.hosts.hosts:
            self.hosts.kill(host)
        shutil.rmtree(self.temp, ignore_errors=True)
