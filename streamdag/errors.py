"""The exceptions streamdag raises, in one documented hierarchy.

Every error streamdag raises on purpose is a :class:`StreamDagError`; catch that to handle
them all. Subclasses also derive from the builtin that describes the kind of failure
(``ValueError``, ``KeyError``, ``RuntimeError``), so code written against the builtins keeps
working::

    StreamDagError
    ├── GraphError (ValueError)            the network's structure is wrong
    │   ├── CycleError                     an edge would close a cycle
    │   ├── OrphanError                    a group would lose its inputs or its way to the output
    │   ├── UnknownGroupError (KeyError)   a group id that is not (or no longer) in the graph
    │   └── InvariantError                 validate() found a broken invariant
    ├── MutationError (ValueError)         a mutation batch was refused; nothing was applied
    ├── CapacityError (ValueError)         a group cap below the current size, or past it
    ├── DataError (ValueError)             a dataset file or array is malformed
    ├── CheckpointError (ValueError)       a checkpoint is missing, truncated or malformed
    ├── ConfigError (ValueError)           an argument or option out of range
    ├── SchedulerError (ValueError)        a task graph or plan is wrong
    │   ├── TaskCycleError                 the task graph has a cycle
    │   ├── UnknownTaskError (KeyError)    a dependency names a task that does not exist
    │   ├── KernelArgumentError (TypeError) an argument the launcher would pack wrongly
    │   └── LaunchConfigError              a grid/block/shared-memory size past device limits
    ├── CompileError (RuntimeError)        NVRTC rejected a kernel; ``.log`` holds its log
    └── BackendError (RuntimeError)        a backend cannot run here (no GPU, no driver)
        └── DeviceMemoryError              the device cannot hold what was asked for

Messages say what is wrong and where (which group, which file, which field).
"""

from __future__ import annotations

__all__ = [
    "BackendError",
    "CapacityError",
    "CheckpointError",
    "CompileError",
    "ConfigError",
    "CycleError",
    "DataError",
    "DeviceMemoryError",
    "GraphError",
    "InvariantError",
    "KernelArgumentError",
    "LaunchConfigError",
    "MutationError",
    "OrphanError",
    "SchedulerError",
    "StreamDagError",
    "TaskCycleError",
    "UnknownGroupError",
    "UnknownTaskError",
]


class StreamDagError(Exception):
    """Base class of every error streamdag raises on purpose."""


class GraphError(StreamDagError, ValueError):
    """The structure of a network graph is wrong or a change would make it wrong."""


class CycleError(GraphError):
    """Adding an edge would close a cycle."""


class OrphanError(GraphError):
    """A change would leave a group without inputs, or cut it off from the output."""


class UnknownGroupError(GraphError, KeyError):
    """A group id that is not in the graph (ids are never reused, so also a removed one)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class InvariantError(GraphError):
    """``NetworkGraph.validate()`` found an invariant that does not hold."""


class MutationError(StreamDagError, ValueError):
    """A mutation batch was refused; the graph and parameters are exactly as before."""


class CapacityError(StreamDagError, ValueError):
    """A group cap below the current number of groups, or growth past the cap."""


class DataError(StreamDagError, ValueError):
    """A dataset file or array is malformed (shapes, dtypes, NaN/Inf, labels)."""


class CheckpointError(StreamDagError, ValueError):
    """A checkpoint is missing, truncated, malformed or from an incompatible version."""


class ConfigError(StreamDagError, ValueError):
    """An argument or option is out of its allowed range."""


class SchedulerError(StreamDagError, ValueError):
    """A task graph or a plan is wrong."""


class TaskCycleError(SchedulerError):
    """The task graph has a cycle."""


class UnknownTaskError(SchedulerError, KeyError):
    """A dependency or lookup names a task that is not in the task graph."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class KernelArgumentError(SchedulerError, TypeError):
    """A kernel argument the launcher would pack wrongly (e.g. a Python float)."""


class LaunchConfigError(SchedulerError):
    """A launch configuration past the device's limits (grid, block, shared memory)."""


class CompileError(StreamDagError, RuntimeError):
    """NVRTC rejected a kernel source. ``log`` holds NVRTC's log."""

    def __init__(self, message: str, log: str = "") -> None:
        super().__init__(f"{message}\n{log}" if log else message)
        self.log = log


class BackendError(StreamDagError, RuntimeError):
    """A backend cannot run here (no GPU, no driver, missing package)."""


class DeviceMemoryError(BackendError):
    """The device cannot hold what was asked for; the message names both sizes."""
