"""The one exception hierarchy for problems a user can fix: each carries a single clear line.

The CLI prints `error: <message>` for these and exits 2; any other exception is a bug.
"""

from __future__ import annotations


class NNDeployError(Exception):
    """A problem with the user's input or environment, described in one line."""


class ModelError(NNDeployError):
    """The ONNX model cannot be read, checked or analysed (missing file, not ONNX, unbound dims...)."""


class ClusterError(NNDeployError):
    """cluster.yaml or a device profile is invalid."""


class PlanError(NNDeployError):
    """No valid plan exists (unsupported op everywhere, nothing fits in memory) or plan.json is invalid."""


class SplitError(NNDeployError):
    """A plan cannot be cut into stage models (changed model, cycle between stages)."""


class BuildError(NNDeployError):
    """A stage cannot be compiled (an op TVM cannot import, a missing cross compiler or nvcc)."""


class TuningDatabaseError(BuildError):
    """A tuning database cannot be applied (damaged, or written by another TVM version): the stage is
    built untuned instead."""


class ArtifactError(NNDeployError):
    """A build folder or artifact is missing, corrupt or tampered with (sha256 mismatch)."""


class VerifyError(NNDeployError):
    """Verification could not run (missing inputs, unreadable .npz, wrong tensor shapes)."""


class EmulatorError(NNDeployError):
    """The aarch64 emulator (qemu-user + an arm64 Python with TVM) cannot be set up or run."""


class HostToolError(NNDeployError):
    """A host tool (cross compiler, qemu-user, nvcc) is missing and cannot be installed here; the message
    names the command to run."""


class CalibrationError(NNDeployError):
    """calibration.json (written by `nndeploy profile`) is missing, unreadable or malformed."""


class ProfileError(NNDeployError):
    """`nndeploy profile` cannot measure anything (no device of the cluster can run on this host)."""


def first_line(exc: BaseException, with_type: bool = False) -> str:
    """The most telling line of an exception's message, at most 300 characters: of a multi-line message (a
    TVM or compiler traceback) the last line naming an error, else the first line; with `with_type`,
    prefixed by the exception's type."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    telling = [line for line in lines if "Error" in line or "error" in line or "Check failed" in line]
    text = telling[-1] if telling else lines[0] if lines else ""
    if with_type or not text:
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text[:300]
