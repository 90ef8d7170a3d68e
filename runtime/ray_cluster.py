"""Every Ray call of the project: stage workers as Ray actors, placed by device, supervised and restarted.

Each cluster.yaml device becomes a Ray custom resource (`nndeploy-device-<name>`); a local `ray.init()`
declares them all on this machine, and on a real multi-node cluster each node declares the ones it has
(`ray start --resources '{"nndeploy-device-gpu": 1}'`), so actors land where their device is. An actor
starts its stage's gRPC worker on a fixed port in its own thread; when its process dies Ray starts it
again (max_restarts) on the same node and it binds the same port, so the upstream stream reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nndeploy.errors import NNDeployError
from nndeploy.runtime.probe import IO_TIMEOUT_S as PROBE_TIMEOUT_S
from nndeploy.runtime.probe import MeasuredLink, ProbeActor, ProbeError
from nndeploy.runtime.worker import StageSpec
from nndeploy.types import device_resource


class ServeError(NNDeployError):
    """The serving cluster could not be started or reached."""


class HeadLost(ServeError):
    """Ray's head stopped answering while serving (Ray's own exit handlers would then wait a minute on it)."""


class StageActorImpl:
    """Runs one stage worker; Ray wraps this class as an actor (restarted when its process dies)."""

    def __init__(
        self,
        build_dir: str,
        stage: int,
        spec: StageSpec,
        port: int,
        host: str = "127.0.0.1",
        tls_dir: str | None = None,
        server_name: str = "",
    ) -> None:
        import platform
        import socket

        from nndeploy.errors import NNDeployError
        from nndeploy.runtime.chain import serve_built_stage
        from nndeploy.runtime.tls import load_process_tls
        from nndeploy.targets.artifacts.loader import why_not_runnable
        from nndeploy.targets.artifacts.manifest import read_manifest

        manifest = read_manifest(build_dir)
        entry = next(e for e in manifest.stages if e.stage == stage)
        self.port = port
        self._ready = threading.Event()
        self._error: BaseException | None = None
        where = f"{socket.gethostname()} ({host}, {platform.machine()})"
        # Checked on this node before anything is loaded: the node that declared the device may be of
        # another architecture or lack the build's CPU features, GPU or emulator.
        reason = why_not_runnable(entry)
        if reason:
            self._error = RuntimeError(f"stage {stage} ({spec.device}) cannot run on node {where}: {reason}")
            return
        # The TLS folder is read on this node: the same path on every node (a Secret mounted in each pod).
        try:
            tls = load_process_tls(tls_dir, f"stage-{stage}", server_name) if tls_dir else None
        except NNDeployError as exc:
            self._error = RuntimeError(f"stage {stage} ({spec.device}) on node {where}: {exc}")
            return

        def run() -> None:
            served = serve_built_stage(
                Path(build_dir), entry, spec, port, host=host, ready=lambda _: self._ready.set(), tls=tls
            )
            try:
                asyncio.run(served)
            except BaseException as exc:
                if not self._ready.is_set():  # failed to start: reported through ping()
                    self._error = exc
                    self._ready.set()
                    return
                # Died while serving (an emulated worker exited): end this process so Ray restarts it.
                print(f"stage {stage} worker stopped: {exc}", flush=True)
                os._exit(1)

        self._thread = threading.Thread(target=run, name=f"stage{stage}-worker", daemon=True)
        self._thread.start()
        self._ready.wait(timeout=120)

    def ping(self) -> int:
        """The worker's pid once it serves (raises if it failed to start)."""
        if self._error is not None:
            raise RuntimeError(f"stage worker failed: {self._error}")
        return os.getpid()


@dataclass
class RayStages:
    """The Ray side of `serve`: start Ray (or join one), place one actor per stage, stop everything."""

    address: str | None = None
    actors: list[Any] | None = None
    started_ray: bool = False
    gcs_address: str | None = None
    head_lost: str = ""  # the head's address once it stopped answering

    def start(self, devices: list[str]) -> None:
        """Start a local Ray with one resource per device, or join the cluster at `address`."""
        import ray

        if ray.is_initialized():
            return
        try:
            if self.address:
                ray.init(address=self.address, include_dashboard=False, log_to_driver=False)
            else:
                ray.init(
                    include_dashboard=False,
                    log_to_driver=False,
                    num_cpus=max(2, len(devices)),
                    resources={device_resource(d): 1.0 for d in devices},
                )
        except Exception as exc:  # Ray's own errors are long; keep the first line
            raise ServeError(
                f"could not start or join Ray ({self.address or 'local'}): {str(exc).splitlines()[0]}"
            ) from None
        self.started_ray = True
        self.gcs_address = ray.get_runtime_context().gcs_address

    def head_reachable(self, timeout_s: float = 1.0) -> bool:
        """Whether Ray's head (its GCS server) accepts connections."""
        import socket

        if not self.gcs_address:
            return True
        host, _, port = self.gcs_address.rpartition(":")
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
                return True
        except OSError:
            return False

    def abandon(self) -> None:
        """Without a head nothing can be asked of Ray: kill every process this one started (a local Ray's
        raylet and stage workers; on a joined cluster the remote workers go with their raylets), then
        drop the driver's connection without waiting on it."""
        import threading

        import psutil

        children = psutil.Process().children(recursive=True)
        for child in children:
            with contextlib.suppress(psutil.Error):
                child.kill()
        psutil.wait_procs(children, timeout=10)
        self.actors = None

        def shutdown() -> None:
            import ray

            with contextlib.suppress(Exception):
                ray.shutdown()

        closing = threading.Thread(target=shutdown, daemon=True)
        closing.start()
        closing.join(timeout=10)
        self.started_ray = False

    def node_address(self) -> str:
        """This machine's address on the way to Ray's head: where the cluster's other nodes reach this
        process. (Not ray.util.get_node_ip_address(), which in a driver on a machine that runs no raylet
        of its own names the head's.)"""
        import socket

        host = (self.gcs_address or self.address or "127.0.0.1").rpartition(":")[0].strip("[]") or "127.0.0.1"
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect((host, 9))  # UDP: no packet is sent, the kernel only picks the route
            return str(probe.getsockname()[0])

    def live_device_hosts(self, devices: list[str]) -> dict[str, str]:
        """The address of a live node declaring each device, for those that have one."""
        import ray

        nodes = [node for node in ray.nodes() if node.get("Alive")]
        hosts = {}
        for device in devices:
            having = [n for n in nodes if n.get("Resources", {}).get(device_resource(device), 0) > 0]
            if having:
                hosts[device] = having[0]["NodeManagerAddress"]
        return hosts

    def measure_links(self, pairs: list[tuple[str, str]], nbytes: int) -> list[MeasuredLink]:
        """Each pair of devices' link, measured between the nodes that declare them (runtime.probe: one
        ProbeActor on each device's node)."""
        import ray

        hosts = self.device_hosts(sorted({d for pair in pairs for d in pair}))
        remote = ray.remote(ProbeActor)
        measured = []
        for a, b in pairs:
            ends = [
                remote.options(num_cpus=0, resources={device_resource(d): 0.01}, max_restarts=0).remote()
                for d in (a, b)
            ]
            try:
                ray.get([end.ready.remote() for end in ends], timeout=PROBE_TIMEOUT_S)
                port = ray.get(ends[0].listen.remote(hosts[a]), timeout=PROBE_TIMEOUT_S)
                gbps, latency_ms = ray.get(ends[1].measure.remote(hosts[a], port, nbytes), timeout=600)
            except ray.exceptions.GetTimeoutError:
                raise ProbeError(f"could not measure {a} <-> {b}: their nodes did not answer") from None
            except ray.exceptions.RayError as exc:
                raise ProbeError(f"could not measure {a} <-> {b}: {str(exc).splitlines()[0]}") from None
            finally:
                for end in ends:
                    ray.kill(end)
            measured.append(MeasuredLink((a, b), (hosts[a], hosts[b]), gbps, latency_ms))
        return measured

    def device_hosts(self, devices: list[str]) -> dict[str, str]:
        """The address of the node that has each device: 127.0.0.1 for a local Ray; on a joined cluster,
        the node that declares the device's resource (one-line error naming any device no node has)."""
        if not self.address:
            return dict.fromkeys(devices, "127.0.0.1")
        hosts = self.live_device_hosts(devices)
        missing = [device for device in devices if device not in hosts]
        if missing:
            resources = ", ".join(f'"{device_resource(d)}": 1' for d in missing)
            raise ServeError(
                f"no node of the Ray cluster at {self.address} has device(s) {', '.join(missing)}; start the "
                f"node that has them with: ray start --address {self.address} --resources '{{{resources}}}'"
            )
        return hosts

    def launch(
        self,
        build_dir: Path,
        specs: list[StageSpec],
        ports: list[int],
        hosts: list[str],
        timeout_s: float = 180,
        tls_dir: str | None = None,
        server_name: str = "",
    ) -> list[int]:
        """One actor per stage on its device's resource, each with mutual TLS from `tls_dir` on its node
        when given; returns the workers' pids once all serve."""
        import ray

        actor_class = ray.remote(StageActorImpl)
        self.actors = [
            actor_class.options(
                num_cpus=0,
                max_restarts=-1,
                max_task_retries=0,
                resources={device_resource(spec.device): 0.01},
                name=f"nndeploy-stage-{spec.index}",
            ).remote(str(build_dir), spec.index, spec, port, host, tls_dir, server_name)
            for spec, port, host in zip(specs, ports, hosts, strict=True)
        ]
        return self.pids(timeout_s)

    def pids(self, timeout_s: float = 60) -> list[int]:
        """The current process id of every stage worker (waits for restarting ones)."""
        import ray

        assert self.actors is not None
        try:
            return ray.get([actor.ping.remote() for actor in self.actors], timeout=timeout_s)
        except ray.exceptions.GetTimeoutError:
            raise ServeError(
                f"stage workers did not start within {timeout_s:.0f} s (is every device's resource present?)"
            ) from None
        except ray.exceptions.RayError as exc:
            raise ServeError(f"a stage worker failed to start: {str(exc).splitlines()[0]}") from None

    def broken_stages(self, timeout_s: float = 2.0) -> dict[int, str]:
        """Stages whose actor Ray has given up on (for example its artifact failed the sha256 check when
        it restarted), with the first line of why; stages restarting or busy are not listed."""
        import ray

        broken: dict[int, str] = {}
        for index, actor in enumerate(self.actors or []):
            try:
                ray.get(actor.ping.remote(), timeout=timeout_s)
            except (ray.exceptions.GetTimeoutError, ray.exceptions.ActorUnavailableError):
                continue  # restarting, or its node is gone and it waits for one with its device
            except ray.exceptions.RayError as exc:
                lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
                telling = [line for line in lines if "Error:" in line or "error:" in line]
                broken[index] = (telling[-1] if telling else lines[0] if lines else type(exc).__name__)[:300]
        return broken

    def stop(self) -> None:
        """Kill the actors and, if this process started Ray, shut it down."""
        import ray

        for actor in self.actors or []:
            ray.kill(actor, no_restart=True)
        self.actors = None
        if self.started_ray:
            ray.shutdown()
            self.started_ray = False
