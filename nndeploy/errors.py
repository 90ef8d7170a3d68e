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


def first_line(err: BaseException) -> str:
    """The first non-empty line of an exception's message (its type's name when it has none)."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return lines[0] if lines else type(err).__name__
