"""streamdag: train growing DAGs of many small neuron groups, fast.

The short public API::

    from streamdag import NetworkGraph, ParamStore, MutationQueue, DuplicateDepth
    from streamdag import Trainer, TrainConfig, load_dataset

Nothing here imports cuda, torch or a GPU runtime; GPU code loads on first use.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .backends import Backend, ReferenceBackend, get_backend
from .checkpoint import load_checkpoint, save_checkpoint
from .data import Dataset, load_dataset
from .errors import StreamDagError
from .graph import INPUT, OUTPUT, NetworkGraph, NeuronGroup
from .growth import Criterion, GradStdCriterion, GrowthPolicy
from .mutation import (
    Connect,
    Disconnect,
    DuplicateDepth,
    DuplicateWidth,
    Mutation,
    MutationQueue,
    Prune,
    apply_mutations,
)
from .params import ParamStore
from .train import TrainConfig, Trainer, TrainerCallback, TrainSummary

__all__ = [
    "INPUT",
    "OUTPUT",
    "Backend",
    "Connect",
    "Criterion",
    "Dataset",
    "Disconnect",
    "DuplicateDepth",
    "DuplicateWidth",
    "GradStdCriterion",
    "GrowthPolicy",
    "Mutation",
    "MutationQueue",
    "NetworkGraph",
    "NeuronGroup",
    "ParamStore",
    "Prune",
    "ReferenceBackend",
    "StreamDagError",
    "TrainConfig",
    "TrainSummary",
    "Trainer",
    "TrainerCallback",
    "__version__",
    "apply_mutations",
    "get_backend",
    "load_checkpoint",
    "load_dataset",
    "save_checkpoint",
]
