"""The training loop of ``effdrop-train``: one run from a resolved configuration (see
:mod:`effdrop_triton.train.cli`) to its run folder.

Every file of the run folder but the log and the TensorBoard events is written through
:func:`~effdrop_triton.train.checkpoint.atomic_write`, so a crash or a kill leaves the previous
complete version of each. A stop signal (:class:`StopSignal`) ends training after the current step
with last.pt saved, from which ``--resume`` continues bit for bit.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from effdrop_triton import convert_sync_batchnorm, reset_variance_shift, track_variance_shift, variance_shift
from effdrop_triton.models import FAMILIES, build_model, family_of

from .checkpoint import (CheckpointError, check_resumable, load_checkpoint, make_checkpoint, rng_state, save_atomic,
                         set_rng_state, write_text_atomic)
from .distributed import DistInfo, all_reduce_sum, any_rank, barrier, broadcast_state, gather_objects
from .data import load_datasets, make_loaders
from .schedules import build_scheduler, fast_forward, learning_rates_as_tensors

logger = logging.getLogger(__package__)  # the application's one logger (cli.main gives it its handlers)

GRAPH_MODES = ("reduce-overhead", "max-autotune")  # the compile modes that record CUDA graphs


class UsageError(Exception):
    """A bad setting or input the user can fix: reported without a traceback, exit status 2."""


class TrainingInterrupted(Exception):
    """SIGINT/SIGTERM arrived; last.pt holds the state to resume from."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StopSignal:
    """SIGINT/SIGTERM set ``signum`` instead of killing the process, so training can stop after the
    current step and save; a second SIGINT raises KeyboardInterrupt at once. Handlers are restored on exit."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum: Optional[int] = None
        self._previous = {}

    def _handle(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        logger.warning("%s received: stopping after the current training step", signal.Signals(signum).name)

    def __enter__(self) -> "StopSignal":
        if threading.current_thread() is not threading.main_thread():
            return self  # only the main thread may set handlers: run without them
        for signum in self.SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def model_kwargs(cfg: argparse.Namespace, num_classes: int, in_channels: int) -> Dict:
    """``build_model`` keyword arguments: the shared settings plus the family's options that are set."""
    kwargs = dict(num_classes=num_classes, in_channels=in_channels, block_type=cfg.block_type, norm=cfg.norm,
                  gn_groups=cfg.gn_groups, drop_type=cfg.drop_type, drop_rate=cfg.drop_rate, drop_mode=cfg.drop_mode,
                  skip_dropped=cfg.skip_dropped, fused=cfg.fused)
    for option in ("depth", *FAMILIES[family_of(cfg.model)].options):
        if getattr(cfg, option) is not None:
            kwargs[option] = getattr(cfg, option)
    return kwargs


def config_dict(cfg: argparse.Namespace) -> Dict:
    """What config.yaml holds: every setting but --config itself (loadable again with --config)."""
    return {key: value for key, value in vars(cfg).items() if key != "config"}


def _run_dir(cfg: argparse.Namespace) -> Tuple[Path, Optional[Path]]:
    """(run folder, checkpoint to resume from or None). A fresh run never starts in a folder that
    holds checkpoints: they would be overwritten."""
    resume = None
    if cfg.resume == "auto":
        if cfg.output_dir:
            run_dir = Path(cfg.output_dir)
        else:
            found = sorted(Path("runs").glob(f"{cfg.name}-*/last.pt"), key=lambda p: p.stat().st_mtime)
            run_dir = found[-1].parent if found else _default_dir(cfg)
        if (run_dir / "last.pt").exists():
            resume = run_dir / "last.pt"
    elif cfg.resume:
        resume = Path(cfg.resume)
        if not resume.is_file():
            raise CheckpointError(f"--resume {resume}: no such file")
        run_dir = Path(cfg.output_dir) if cfg.output_dir else resume.parent
    else:
        run_dir = Path(cfg.output_dir) if cfg.output_dir else _default_dir(cfg)
    if resume is None or resume.resolve() != (run_dir / "last.pt").resolve():  # only a run's own last.pt moves on
        existing = [name for name in ("last.pt", "best.pt") if (run_dir / name).exists()]
        if existing:
            raise UsageError(f"{run_dir} already holds {' and '.join(existing)} of another run; continue it with "
                             f"--resume auto --output-dir {run_dir}, or choose another --output-dir")
    return run_dir, resume


def _default_dir(cfg: argparse.Namespace) -> Path:
    return Path("runs") / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def _json_number(value: float) -> Optional[float]:
    return value if math.isfinite(value) else None  # JSON has no NaN


class Trainer:
    """One run: built from the resolved config, then ``run()``."""

    def __init__(self, cfg: argparse.Namespace, info: DistInfo, device: torch.device, stop: StopSignal):
        self.cfg, self.info, self.device, self.stop = cfg, info, device, stop
        self.run_dir, resume_path = _run_dir(cfg)
        self.cfg.output_dir = str(self.run_dir)
        ckpt = load_checkpoint(resume_path) if resume_path else None
        if ckpt is not None:
            check_resumable(ckpt, resume_path, config_dict(cfg), info.world_size)
        self._load_data()
        self._build(ckpt)
        if info.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            logger.addHandler(self._file_handler())
            write_text_atomic(self.run_dir / "config.yaml", yaml.safe_dump(config_dict(cfg), sort_keys=False))
            self._keep_earlier_metrics()
            self.writer = _tensorboard(self.run_dir)
        else:
            self.writer = None
        if resume_path:
            logger.info("resumed from %s at epoch %d, step %d", resume_path, self.start_epoch, self.start_step)

    def _file_handler(self) -> logging.Handler:
        handler = logging.FileHandler(self.run_dir / "train.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        return handler

    def _load_data(self) -> None:
        cfg, info = self.cfg, self.info
        if not info.is_main:
            barrier(info)  # rank 0 downloads first
        try:
            self.splits = load_datasets(cfg.dataset, cfg.data_dir, cfg.download, cfg.val_split, cfg.svhn_extra)
        finally:
            if info.is_main:
                barrier(info)
        self.generator = torch.Generator().manual_seed(cfg.seed + info.rank)
        self.train_loader, self.val_loader, self.test_loader = make_loaders(
            self.splits, cfg.batch_size, cfg.workers, info, self.generator, cfg.seed, self.device.type == "cuda")
        if len(self.train_loader) == 0:
            raise UsageError(f"--batch-size {cfg.batch_size} is larger than the training set of this process "
                             f"({len(self.train_loader.sampler)} images)")

    def _build(self, ckpt: Optional[Dict]) -> None:
        cfg, info = self.cfg, self.info
        torch.manual_seed(cfg.seed)  # the same initial weights on every rank
        model = build_model(cfg.model, **model_kwargs(cfg, self.splits.num_classes, self.splits.in_channels))
        self.tracked = track_variance_shift(model) if cfg.report_ratio else []
        if info.enabled and cfg.sync_bn:
            model = convert_sync_batchnorm(model)
        self.memory_format = torch.channels_last if cfg.channels_last else torch.preserve_format
        self.model = model.to(self.device, memory_format=self.memory_format)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                         nesterov=cfg.nesterov, weight_decay=cfg.weight_decay)
        self.scheduler = build_scheduler(self.optimizer, cfg.sched, cfg.epochs, cfg.warmup_epochs)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.amp == "fp16")
        self.start_epoch, self.start_step, self.start_totals = 0, 0, None
        self.best = {"epoch": None, "val_top1_err": None, "val_loss": None}
        # dropout masks differ per rank: seed + rank for every generator used from here on
        torch.manual_seed(cfg.seed + info.rank)
        random.seed(cfg.seed + info.rank)
        np.random.seed(cfg.seed + info.rank)
        if ckpt is not None:
            self._restore(ckpt)
        self.train_model = self.model
        if info.enabled:
            self.train_model = DistributedDataParallel(self.model, device_ids=[self.device.index]
                                                       if self.device.type == "cuda" else None)
        self.eval_model = self.model
        self.optimizer_step = self.optimizer.step
        # CUDA graphs replay into the same memory: each step is marked, and evaluation keeps one batch shape
        self.graphs = cfg.compile_mode in GRAPH_MODES and self.device.type == "cuda"
        if cfg.compile:
            mode = cfg.compile_mode
            self.train_model = torch.compile(self.train_model, mode=mode)
            self.eval_model = self.train_model if not info.enabled else torch.compile(self.model, mode=mode)
            if not self.scaler.is_enabled():  # fp16's scaler steps the optimizer eagerly
                # the rate is read from a device tensor, so a new rate neither recompiles nor syncs
                learning_rates_as_tensors(self.optimizer, self.device)
                self.optimizer_step = torch.compile(self.optimizer.step, mode=mode)

    def _restore(self, ckpt: Dict) -> None:
        cfg, info = self.cfg, self.info
        try:
            self.model.load_state_dict(ckpt["model"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.scaler.load_state_dict(ckpt["scaler"])
        except (RuntimeError, ValueError, KeyError) as error:
            raise CheckpointError(f"checkpoint does not fit this model: {error}") from error
        for group in self.optimizer.param_groups:  # a compiled run keeps its rates as tensors
            group["lr"] = float(group["lr"])
        self.start_epoch, self.start_step, self.best = ckpt["epoch"], ckpt["step"], ckpt["best"]
        if ckpt["config"]["epochs"] == cfg.epochs:
            self.scheduler.load_state_dict(ckpt["scheduler"])
        else:
            logger.info("--epochs changed from %d to %d: learning-rate schedule recomputed for %d epochs",
                        ckpt["config"]["epochs"], cfg.epochs, cfg.epochs)
            self.scheduler = fast_forward(self.optimizer, cfg.sched, cfg.epochs, cfg.warmup_epochs, cfg.lr,
                                          self.start_epoch)
        if len(ckpt["ranks"]) == info.world_size:
            state = ckpt["ranks"][info.rank]
            set_rng_state(state["rng"], self.generator)
            if self.start_step:
                self.start_totals = state["totals"].to(self.device)
        else:
            logger.warning("checkpoint saved by %d processes, resumed by %d: random streams start afresh",
                           len(ckpt["ranks"]), info.world_size)

    def _keep_earlier_metrics(self) -> None:
        """Cut metrics.jsonl back to the epochs before this run's first: a crash between writing an
        epoch's line and its last.pt must not leave the epoch in it twice."""
        path = self.run_dir / "metrics.jsonl"
        self.metrics_lines: List[str] = []
        if path.exists():
            self.metrics_lines = [line for line in path.read_text().splitlines()
                                  if line.strip() and json.loads(line)["epoch"] < self.start_epoch]
            self._write_metrics()

    def _write_metrics(self) -> None:
        """metrics.jsonl rewritten whole and atomically (not appended to): never a torn last line."""
        write_text_atomic(self.run_dir / "metrics.jsonl", "".join(line + "\n" for line in self.metrics_lines))

    def _checkpoint(self, epoch: int, step: int, totals: torch.Tensor, loader_state: torch.Tensor) -> Dict:
        """The checkpoint of this moment; every rank must call (the random states are gathered)."""
        rng = rng_state(self.generator)
        rng["loader"] = loader_state
        ranks = gather_objects({"rng": rng, "totals": totals.detach().cpu()}, self.info)
        return make_checkpoint(model=self.model, optimizer=self.optimizer, scheduler=self.scheduler,
                               scaler=self.scaler, epoch=epoch, step=step, ranks=ranks, config=config_dict(self.cfg),
                               best=self.best)

    def _autocast(self):
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.cfg.amp)
        return torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None)

    def _to_device(self, images: torch.Tensor, targets: torch.Tensor):
        return (images.to(self.device, non_blocking=True, memory_format=self.memory_format),
                targets.to(self.device, non_blocking=True))

    def train_epoch(self, epoch: int, start_step: int, totals: Optional[torch.Tensor]) -> Tuple[torch.Tensor, int]:
        """Train from batch ``start_step``; returns this rank's (loss sum, correct, images) and the number
        of batches done (fewer than the epoch's when a stop signal came)."""
        loader, steps = self.train_loader, len(self.train_loader)
        totals = torch.zeros(3, dtype=torch.float64, device=self.device) if totals is None else totals
        self.train_model.train()
        batches = iter(loader)
        if start_step:  # replay the interrupted epoch's first batches: same order, same worker seeds
            state = rng_state(self.generator)
            for _ in range(start_step):
                next(batches)
            set_rng_state(state)  # the global generators as they were at the interruption
        bar = tqdm(total=steps, initial=start_step, desc=f"epoch {epoch + 1}/{self.cfg.epochs}", leave=False,
                   unit="batch", dynamic_ncols=True,
                   disable=self.cfg.no_progress or not self.info.is_main or not sys.stderr.isatty())
        started, seen = time.perf_counter(), 0
        for step in range(start_step, steps):
            images, targets = self._to_device(*next(batches))
            if self.graphs:
                torch.compiler.cudagraph_mark_step_begin()
            with self._autocast():
                logits = self.train_model(images)
                loss = F.cross_entropy(logits, targets)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if self.scaler.is_enabled():  # fp16: the scaler reads the overflow check on the host
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer_step()
            with torch.no_grad():
                totals += torch.stack([loss.detach().double() * len(targets),
                                       (logits.argmax(1) == targets).sum().double(),
                                       torch.tensor(len(targets), dtype=torch.float64, device=self.device)])
            seen += len(targets)
            bar.update()
            if not bar.disable:
                bar.set_postfix(loss=f"{totals[0].item() / totals[2].item():.3f}",
                                acc=f"{totals[1].item() / totals[2].item():.1%}",
                                img_s=f"{seen / (time.perf_counter() - started):.0f}", refresh=False)
            if step + 1 < steps and any_rank(self.stop.signum is not None, self.info, self.device):
                bar.close()
                return totals, step + 1
        bar.close()
        return totals, steps

    @torch.no_grad()
    def evaluate(self, loader) -> Optional[Dict[str, float]]:
        """Loss, top-1 and top-5 error (%) over every sample of ``loader``, summed over ranks (each rank
        evaluates its shard with rank 0's batch-norm statistics)."""
        if loader is None:
            return None
        broadcast_state(self.model, self.info, buffers_only=True)
        self.eval_model.eval()
        totals = torch.zeros(4, dtype=torch.float64, device=self.device)
        for images, targets in loader:
            images, targets = self._to_device(images, targets)
            count = len(targets)
            if self.cfg.compile and count < loader.batch_size:  # one shape: no new graph for the last batch
                padding = images.new_zeros((loader.batch_size - count, *images.shape[1:]))
                images = torch.cat([images, padding]).to(memory_format=self.memory_format)
            if self.graphs:
                torch.compiler.cudagraph_mark_step_begin()
            with self._autocast():
                logits = self.eval_model(images)[:count]
            top = logits.topk(min(5, logits.shape[1]), dim=1).indices == targets[:, None]
            totals += torch.stack([F.cross_entropy(logits.float(), targets, reduction="sum").double(),
                                   top[:, 0].sum().double(), top.any(1).sum().double(),
                                   torch.tensor(len(targets), dtype=torch.float64, device=self.device)])
        loss, top1, top5, count = all_reduce_sum(totals, self.info).tolist()
        return {"loss": loss / count, "top1_err": 100 * (1 - top1 / count), "top5_err": 100 * (1 - top5 / count)}

    def _save(self, ckpt: Dict, *names: str) -> None:
        if self.info.is_main:
            for name in names:
                save_atomic(ckpt, self.run_dir / name)

    def _record(self, record: Dict) -> None:
        """A log line (rank 0, or every rank with --log-all-ranks); on rank 0 a metrics.jsonl line and
        TensorBoard scalars."""
        if self.info.is_main:
            self.metrics_lines.append(json.dumps(record))
            self._write_metrics()
        val = (f"val loss {record['val_loss']:.4f} top-1 err {record['val_top1_err']:.2f}% "
               f"top-5 err {record['val_top5_err']:.2f}%" if record["val_loss"] is not None else "no validation")
        logger.info("epoch %d/%d  lr %.4g  train loss %.4f top-1 err %.2f%%  %s  %.1f s, %.0f img/s",
                    record["epoch"] + 1, self.cfg.epochs, record["lr"], record["train_loss"],
                    record["train_top1_err"], val, record["epoch_time_s"], record["images_per_s"])
        if "var_shift" in record:
            ratios = [entry["var"] for entry in record["var_shift"].values()]
            logger.info("  variance shift (eval/train input variance) of %d receiving norms: %s", len(ratios),
                        " ".join("nan" if r is None else f"{r:.3f}" for r in ratios))
        if self.writer is not None:
            for key, value in record.items():
                if key != "epoch" and isinstance(value, float):
                    tag = key.replace("_", "/", 1) if key.startswith(("train_", "val_")) else key
                    self.writer.add_scalar(tag, value, record["epoch"])
            if "var_shift" in record:
                ratios = [entry["var"] for entry in record["var_shift"].values()]
                for where, index in (("first", 0), ("mid", len(ratios) // 2), ("last", -1)):
                    if ratios and ratios[index] is not None:
                        self.writer.add_scalar(f"var_shift_ratio/{where}", ratios[index], record["epoch"])
            self.writer.flush()

    def run(self) -> Dict:
        cfg, info = self.cfg, self.info
        started = time.perf_counter()
        logger.info("%s on %s (%d train, %s val, %d test images), %d process(es) on %s; run folder %s",
                    cfg.model, cfg.dataset, len(self.splits.train),
                    len(self.splits.val) if self.splits.val is not None else "no", len(self.splits.test),
                    info.world_size, self.device, self.run_dir)
        sampler = self.train_loader.sampler
        for epoch in range(self.start_epoch, cfg.epochs):
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(epoch)
            if self.tracked:
                reset_variance_shift(self.model)
            loader_state = self.generator.get_state()  # where this epoch's shuffling and worker seeds come from
            epoch_started = time.perf_counter()
            counted_before = 0 if self.start_totals is None else self.start_totals[2].item()
            totals, done = self.train_epoch(epoch, self.start_step, self.start_totals)
            if done < len(self.train_loader):
                self._save(self._checkpoint(epoch, done, totals, loader_state), "last.pt")
                logger.warning("saved %s at epoch %d, step %d/%d; continue with --resume auto --output-dir %s",
                               self.run_dir / "last.pt", epoch, done, len(self.train_loader), self.run_dir)
                raise TrainingInterrupted(self.stop.signum or signal.SIGTERM)
            train_time = time.perf_counter() - epoch_started
            local_images = totals[2].item() - counted_before
            loss_sum, correct, count = all_reduce_sum(totals.clone(), info).tolist()
            images = all_reduce_sum(torch.tensor([local_images], dtype=torch.float64, device=self.device), info).item()
            val = self.evaluate(self.val_loader)
            lr = float(self.optimizer.param_groups[0]["lr"])
            self.scheduler.step()
            record = {"epoch": epoch, "lr": lr, "train_loss": loss_sum / count,
                      "train_top1_err": 100 * (1 - correct / count),
                      "val_loss": val and val["loss"], "val_top1_err": val and val["top1_err"],
                      "val_top5_err": val and val["top5_err"],
                      "epoch_time_s": time.perf_counter() - epoch_started, "images_per_s": images / train_time}
            if self.tracked:
                record["var_shift"] = {name: {key: _json_number(value) for key, value in ratios.items()}
                                       for name, ratios in variance_shift(self.model).items()}
            improved = val is not None and (self.best["val_top1_err"] is None or
                                            (val["top1_err"], val["loss"]) < (self.best["val_top1_err"],
                                                                              self.best["val_loss"]))
            if improved:
                self.best = {"epoch": epoch, "val_top1_err": val["top1_err"], "val_loss": val["loss"]}
            self._record(record)
            ckpt = self._checkpoint(epoch + 1, 0, torch.zeros(3), self.generator.get_state())
            self._save(ckpt, *(("last.pt", "best.pt") if improved else ("last.pt",)))
            self.start_step, self.start_totals = 0, None
            if any_rank(self.stop.signum is not None, info, self.device):
                logger.warning("saved %s after epoch %d; continue with --resume auto --output-dir %s",
                               self.run_dir / "last.pt", epoch + 1, self.run_dir)
                raise TrainingInterrupted(self.stop.signum or signal.SIGTERM)
        return self._finish(time.perf_counter() - started)

    def _finish(self, seconds: float) -> Dict:
        """Test metrics of the final weights and of the best validation epoch's, results.json, the summary."""
        test = {"last": self.evaluate(self.test_loader)}
        if self.best["epoch"] is not None:
            if self.info.is_main:
                self.model.load_state_dict(load_checkpoint(self.run_dir / "best.pt")["model"])
            broadcast_state(self.model, self.info)
            test["best"] = self.evaluate(self.test_loader)
        chosen = test.get("best", test["last"])
        results = {"epochs": self.cfg.epochs, "best_epoch": self.best["epoch"],
                   "best_val_top1_err": self.best["val_top1_err"], "test": test,
                   "test_top1_err": chosen["top1_err"], "time_s": seconds, "run_dir": str(self.run_dir)}
        if self.info.is_main:
            write_text_atomic(self.run_dir / "results.json", json.dumps(results, indent=2) + "\n")
            if self.writer is not None:
                self.writer.close()
            minutes, secs = divmod(seconds, 60)
            where = (f"the best validation epoch's weights (epoch {self.best['epoch'] + 1}, val accuracy "
                     f"{100 - self.best['val_top1_err']:.2f}%)" if "best" in test else "the final weights")
            logger.info("done in %dm%02ds: test accuracy %.2f%% (top-1 error %.2f%%, top-5 error %.2f%%) with %s; "
                        "final weights: %.2f%%", minutes, secs, 100 - chosen["top1_err"], chosen["top1_err"],
                        chosen["top5_err"], where, 100 - test["last"]["top1_err"])
            logger.info("run folder: %s", self.run_dir)
        return results


def _tensorboard(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional: metrics.jsonl has everything
        logger.info("tensorboard is not installed: no TensorBoard events")
        return None
    return SummaryWriter(str(run_dir))
