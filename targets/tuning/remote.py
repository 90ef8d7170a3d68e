"""Tuning measured on the device itself, through TVM's RPC server running there (`nndeploy tune --rpc
HOST:PORT --device NAME`): candidates are built and, for another CPU architecture, cross-linked on this
machine, uploaded over the RPC session, loaded and timed on the device, and the records go to the same
per-target database as local tuning. The device runs `python -m tvm.exec.rpc_server --host 0.0.0.0
--port 9090` (TVM's runtime and RPC support only; no compiler needed there).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from functools import partial
from typing import Any

from nndeploy.errors import BuildError, first_line

CONNECT_TIMEOUT_S = 20
SESSION_TIMEOUT_S = 600
TIMED_RUNS = 3  # repeats of each candidate; each repeat's mean over NUMBER runs is one MetaSchedule cost
NUMBER = 3


@dataclass(frozen=True)
class Remote:
    """A TVM RPC server on the device."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def parse_remote(text: str) -> Remote:
    """HOST:PORT as a Remote; BuildError (one line) otherwise."""
    host, _, port = text.strip().rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise BuildError(f"--rpc '{text}' is not HOST:PORT (e.g. 192.168.1.20:9090)")
    return Remote(host.strip("[]"), int(port))


def connect(remote: Remote, timeout: float = CONNECT_TIMEOUT_S) -> Any:
    """An RPC session with the device; BuildError (one line, with what to do) when none answers."""
    import socket

    from tvm import rpc

    try:  # TVM's connect retries for its whole session timeout: a dead address is found out quickly here
        socket.create_connection((remote.host, remote.port), timeout=timeout).close()
        return rpc.connect(remote.host, remote.port, session_timeout=SESSION_TIMEOUT_S)
    except Exception as exc:  # OSError, TVMError: nothing usable listens there
        raise BuildError(
            f"--rpc {remote}: no TVM RPC server answers there ({first_line(exc)}); start one on the "
            f"device: python -m tvm.exec.rpc_server --host 0.0.0.0 --port {remote.port}"
        ) from None


def export_cross(compiler: str | None, mod: Any) -> str:
    """MetaSchedule builder export: the candidate as a shared library linked by `compiler` (the device's
    cross compiler; None: this machine's), in a fresh temporary folder."""
    from tvm.support import cc

    path = os.path.join(tempfile.mkdtemp(prefix="nndeploy-rpc-"), "candidate.so")
    mod.export_library(path, fcompile=cc.cross_compiler(compiler) if compiler else None)
    return path


def builder(compiler: str | None) -> Any:
    """MetaSchedule's local builder linking candidates for the device."""
    from tvm.s_tir import meta_schedule as ms

    from nndeploy.targets.tuning.metaschedule import build_candidate

    return ms.builder.LocalBuilder(f_build=build_candidate, f_export=partial(export_cross, compiler))


def runner(remote: Remote) -> Any:
    """A MetaSchedule runner timing candidates on the device over RPC, one at a time."""
    import numpy as np
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.runner import PyRunner, RunnerFuture, RunnerResult

    def measure(session: Any, runner_input: Any) -> Any:
        import tvm

        path = str(runner_input.artifact_path)
        name = os.path.basename(path)
        try:
            session.upload(path)
            library = session.load_module(name)
            device = session.cpu()
            arguments = [
                tvm.runtime.tensor(np.random.uniform(size=[int(d) for d in a.shape]).astype(a.dtype), device)
                for a in runner_input.args_info
            ]
            timer = library.time_evaluator(library.entry_name, device, number=NUMBER, repeat=TIMED_RUNS)
            result = RunnerResult([float(s) for s in timer(*arguments).results], None)
            session.remove(name)
        except Exception as exc:  # a candidate that fails on the device is a failed trial, not a crash
            result = RunnerResult(None, f"on the device: {first_line(exc)}")
        return result  # MetaSchedule's RemoveBuildArtifact callback deletes the local file

    @derived_object
    class _RemoteRunner(PyRunner):
        def run(self, runner_inputs: list[Any]) -> list[Any]:
            session = connect(remote)
            futures = []
            for runner_input in runner_inputs:
                result = measure(session, runner_input)
                futures.append(RunnerFuture(lambda: True, lambda result=result: result))
            return futures

    return _RemoteRunner()
