"""Training checkpoints: written atomically, read back with checks, RNG states captured and restored.

A checkpoint is a dict (see :func:`make_checkpoint`) saved with ``torch.save`` and loadable with
``torch.load(path, weights_only=True)``: tensors, numbers, strings, lists and dicts only, so
reading one never runs pickled code.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

FORMAT = "effdrop-train-checkpoint/1"
REQUIRED_KEYS = ("format", "model", "optimizer", "scheduler", "scaler", "epoch", "step", "ranks", "config", "best")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not belong to this run."""


def save_atomic(obj, path: Path) -> None:
    """``torch.save(obj)`` to a temporary file in ``path``'s folder, synced, then ``os.replace``d onto
    ``path``: a crash or kill at any moment leaves either the old file or the complete new one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_checkpoint(path: Path) -> Dict:
    """The checkpoint at ``path``; ``CheckpointError`` naming the file when it is missing, unreadable
    (truncated, not a torch file) or not a training checkpoint of this format."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types here (pickle, zip, EOF, runtime errors)
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(error).__name__}: {error}); "
                              "the file is left as it is") from error
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an effdrop-train checkpoint (format {FORMAT!r}); the file is left as it is")
    missing = [key for key in REQUIRED_KEYS if key not in ckpt]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {', '.join(missing)}; the file is left as it is")
    return ckpt


def rng_state(loader_generator: torch.Generator) -> Dict:
    """Every random state a run draws from: PyTorch's CPU and CUDA generators (dropout masks,
    augmentation in the main process), NumPy's and Python's, and the training loader's generator
    (shuffling, worker seeds) as ``loader_generator`` stands."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "numpy": [name, keys.tolist(), pos, has_gauss, cached],
             "python": random.getstate(), "loader": loader_generator.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict, loader_generator: Optional[torch.Generator] = None) -> None:
    """Restore what :func:`rng_state` captured (the loader's generator when given)."""
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if loader_generator is not None:
        loader_generator.set_state(state["loader"])


def make_checkpoint(*, model, optimizer, scheduler, scaler, epoch: int, step: int, ranks: List[Dict], config: Dict,
                    best: Dict) -> Dict:
    """The checkpoint dict. Training continues at batch ``step`` of epoch ``epoch`` (``step == 0``: the
    epoch has not started; ``step > 0``: an interrupted epoch whose first ``step`` batches are done).
    ``ranks`` holds, per rank, ``{"rng": rng_state(...), "totals": ...}``: its random states (the
    loader's as they were at the start of ``epoch``) and its running training sums of the interrupted
    epoch. ``best``: the best validation result so far."""
    return {"format": FORMAT, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "epoch": epoch, "step": step,
            "ranks": ranks, "config": dict(config), "best": dict(best)}
