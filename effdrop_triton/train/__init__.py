"""``effdrop-train``, the training application: command line and YAML config (:mod:`.cli`), the
training loop (:mod:`.trainer`), data sets and loaders (:mod:`.data`), checkpoints and the atomic
writer (:mod:`.checkpoint`), learning-rate schedules (:mod:`.schedules`) and DDP helpers
(:mod:`.distributed`). ``python -m effdrop_triton.train`` is the same as ``effdrop-train``
(``cli.cli``: ``main`` with its exit status and one-line errors).
"""

from .checkpoint import CheckpointError
from .cli import get_args_parser, main, parse_args, resolve
from .data import DatasetNotFound
from .trainer import TrainingInterrupted, UsageError, config_dict

__all__ = ["main", "get_args_parser", "parse_args", "resolve", "config_dict", "UsageError",
           "TrainingInterrupted", "DatasetNotFound", "CheckpointError"]
