"""Training checkpoints: written atomically, read back with checks, RNG states captured and restored;
and the atomic writer through which the trainer writes every file of a run folder.

A checkpoint is a dict (see :func:`make_checkpoint`) saved with ``torch.save`` and loadable with
``torch.load(path, weights_only=True)``: tensors, numbers, strings, lists and dicts only, so
reading one never runs pickled code.
"""

from __future__ import annotations

import contextlib
import os
import random
from pathlib import Path
from typing import BinaryIO, Dict, Iterator, List, Optional

import numpy as np
import torch

FORMAT = "effdrop-train-checkpoint/1"
REQUIRED_KEYS = ("format", "model", "optimizer", "scheduler", "scaler", "epoch", "step", "ranks", "config", "best")
# settings a resumed run may change: where and how it runs, and --epochs (the schedule is recomputed)
RESUMABLE_CHANGES = {"epochs", "resume", "output_dir", "name", "workers", "no_progress", "log_all_ranks", "compile",
                     "compile_mode", "data_dir", "download", "device"}


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not belong to this run."""


@contextlib.contextmanager
def atomic_write(path: Path) -> Iterator[BinaryIO]:
    """The one way the trainer writes a file: yields a binary file that becomes ``path`` only once the
    block completes. It is a temporary file in ``path``'s folder, flushed and fsynced, then
    ``os.replace``d onto ``path``, and the folder is fsynced so that the rename survives a power loss
    too. A crash, a kill or an exception at any moment leaves either the old file or the complete new
    one (and no temporary file after an exception)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_folder(path.parent)


def _fsync_folder(folder: Path) -> None:
    """fsync a folder where the platform allows it (POSIX; Windows cannot open folders)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on folders: the rename is then as durable as they make it
        pass
    finally:
        os.close(fd)


def save_atomic(obj, path: Path) -> None:
    """``torch.save(obj)`` to ``path`` through :func:`atomic_write`."""
    with atomic_write(path) as f:
        torch.save(obj, f)


def write_text_atomic(path: Path, text: str) -> None:
    """``text`` (UTF-8) to ``path`` through :func:`atomic_write`."""
    with atomic_write(path) as f:
        f.write(text.encode())


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


def check_resumable(ckpt: Dict, path: Path, config: Dict, world_size: int) -> None:
    """CheckpointError when the checkpoint at ``path`` belongs to a run configured other than ``config``
    (the new run's settings; those in :data:`RESUMABLE_CHANGES` may differ) or cannot continue with
    ``config["epochs"]`` epochs on ``world_size`` processes."""
    saved, epochs = ckpt["config"], config["epochs"]
    keys = sorted((set(saved) | set(config)) - RESUMABLE_CHANGES)
    differences = [f"{key}: {saved.get(key)!r} in the checkpoint, {config.get(key)!r} now"
                   for key in keys if saved.get(key) != config.get(key)]
    if differences:
        raise CheckpointError(f"checkpoint {path} was written by a run with other settings:\n  "
                              + "\n  ".join(differences)
                              + "\nresume with its settings (its config.yaml, via --config) or start a new run in "
                                "another --output-dir; the checkpoint is left as it is")
    if ckpt["epoch"] > epochs or (ckpt["epoch"] == epochs and ckpt["step"]):
        raise CheckpointError(f"checkpoint {path} is at epoch {ckpt['epoch']}, past --epochs {epochs}")
    if ckpt["step"] and len(ckpt["ranks"]) != world_size:
        raise CheckpointError(f"checkpoint {path} was saved mid-epoch by {len(ckpt['ranks'])} processes; resume it "
                              f"with as many (this run has {world_size})")


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
