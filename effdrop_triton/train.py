"""effdrop-train: train a model of the zoo with structured dropout, on one process or with DDP.

With no arguments it trains a small pre-activation ResNet (block type 0, drop-channel) on the
handwritten digits bundled with scikit-learn (no download). Real data sets:

  effdrop-train --dataset cifar10 --data-dir data --download --model preresnet --depth 164 \\
      --epochs 164 --batch-size 128 --lr 0.1 --weight-decay 1e-4 --sched step --drop-rate 0.1
  torchrun --nproc-per-node 4 -m effdrop_triton.train --dataset cifar100 --data-dir data ...
  effdrop-train --config run.yaml --lr 0.05    # YAML defaults (keys = long option names); flags win

The paper repository's flags work as aliases (its documented command runs unchanged):

  python -m effdrop_triton.train --net_type=resnet --depth 110 --arg1 1 --epoch 164 \\
      --weight_decay 1e-4 --block_type 0 --drop_type=1 --drop_rate=0.1 --exp_name resnet_dropChannel --report_ratio

Each run writes to --output-dir (default runs/<name>-<timestamp>): config.yaml, train.log,
metrics.jsonl, TensorBoard events, last.pt, best.pt (chosen on the validation split) and
results.json (test metrics, evaluated once at the end). --resume auto|PATH continues a run exactly;
SIGINT/SIGTERM save last.pt after the current training step and exit with 128 + the signal number.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import math
import os
import random
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from . import convert_sync_batchnorm, reset_variance_shift, track_variance_shift, variance_shift
from .checkpoint import CheckpointError, load_checkpoint, make_checkpoint, rng_state, save_atomic, set_rng_state
from .distributed import (DistInfo, all_reduce_sum, any_rank, barrier, broadcast_state, close_distributed,
                          gather_objects, init_distributed)
from .models import build_model, list_models
from .schedules import SCHEDULES, build_scheduler, fast_forward, learning_rates_as_tensors
from .train_data import DATASETS, DatasetNotFound, load_datasets, make_loaders

logger = logging.getLogger("effdrop_triton.train")

DROP_TYPES = ("neuron", "channel", "path", "layer")  # the paper repository's numbering 0..3
FAMILIES = ("preresnet", "wrn", "densenet", "resnext")
# the builder options each family takes beyond the shared ones
FAMILY_OPTIONS = {"wrn": ("widen_factor",), "preresnet": (), "densenet": ("growth_rate", "bottleneck", "compression"),
                  "resnext": ("cardinality", "base_width")}
SMALLEST_DEPTH = {"wrn": 10, "preresnet": 11, "densenet": 10, "resnext": 11}
# what the paper repository's --arg1 meant per --net_type (its resnet took a widen factor, which ours fixes at 1)
ARG1_OPTION = {"wrn": "widen_factor", "densenet": "growth_rate", "resnext": "cardinality"}
NET_TYPES = {"resnet": "preresnet"}
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
GRAPH_MODES = ("reduce-overhead", "max-autotune")  # the modes that record CUDA graphs
# settings a resumed run may change: where and how it runs, and --epochs (the schedule is recomputed)
RESUMABLE_CHANGES = {"epochs", "resume", "output_dir", "name", "workers", "no_progress", "log_all_ranks", "compile",
                     "compile_mode", "data_dir", "download", "device"}


class UsageError(Exception):
    """A bad setting or input the user can fix: reported without a traceback, exit status 2."""


class TrainingInterrupted(Exception):
    """SIGINT/SIGTERM arrived; last.pt holds the state to resume from."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def drop_type_name(value: str) -> str:
    """A level's name from its name or the paper repository's number (0 neuron, 1 channel, 2 path, 3 layer)."""
    value = str(value)
    if value.isdigit() and int(value) < len(DROP_TYPES):
        return DROP_TYPES[int(value)]
    if value not in DROP_TYPES:
        raise argparse.ArgumentTypeError(f"must be one of {', '.join(DROP_TYPES)} or 0-3, got {value!r}")
    return value


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="effdrop-train", description=__doc__, add_help=add_help, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", metavar="YAML", help="YAML file of defaults (keys: the long option names, "
                        "e.g. drop_rate: 0.1); the command line overrides it")

    data = parser.add_argument_group("data")
    data.add_argument("--dataset", default="digits", choices=DATASETS,
                      help="digits (built in, 1x32x32), cifar10/cifar100/svhn (torchvision), imagenet (an "
                           "ImageNet-style folder with train/ and val/ class folders) (default: digits)")
    data.add_argument("--data-dir", default="data", help="where the data set lives or is downloaded to (default: data)")
    data.add_argument("--download", action="store_true", help="let torchvision download CIFAR/SVHN into --data-dir")
    data.add_argument("--svhn-extra", action="store_true", help="train SVHN on train + extra (604k images)")
    data.add_argument("--val-split", type=float, default=0.1,
                      help="fraction of the training set held out (stratified, fixed split) to pick best.pt; "
                           "0: no validation (default: 0.1)")
    data.add_argument("--workers", "-j", type=int, default=None,
                      help="DataLoader worker processes (default: 0 for digits, which is in memory, else up to 4)")

    model = parser.add_argument_group("model and dropout")
    model.add_argument("--model", "--net_type", default="preresnet", metavar="NAME",
                       help=f"one of {', '.join(list_models())}; 'resnet' (the paper repository's "
                            "--net_type) means preresnet (default: preresnet)")
    model.add_argument("--depth", type=int, default=None,
                       help="depth: preresnet/resnext 9n+2, wrn 6n+4, densenet 6n+4 (3n+4 without bottleneck); "
                            "default: a preset's own, else the smallest (11, 10, 10, 11)")
    model.add_argument("--widen-factor", type=int, default=None, help="wrn width multiplier (default: 10)")
    model.add_argument("--growth-rate", type=int, default=None, help="densenet growth rate (default: 12)")
    model.add_argument("--bottleneck", action=argparse.BooleanOptionalAction, default=None,
                       help="densenet: 1x1 bottleneck in each dense layer (default: on, DenseNet-BC)")
    model.add_argument("--compression", type=float, default=None, help="densenet transition compression (default: 0.5)")
    model.add_argument("--cardinality", type=int, default=None, help="resnext groups (default: 8)")
    model.add_argument("--base-width", type=int, default=None, help="resnext width per group (default: 64)")
    model.add_argument("--block-type", "--block_type", type=int, default=0, choices=range(4),
                       help="0 norm-ReLU-drop-conv, 1 norm-ReLU-conv-drop, 2 drop-conv-norm-ReLU, "
                            "3 conv-drop-norm-ReLU (default: 0)")
    model.add_argument("--norm", default="bn", choices=("bn", "gn"), help="BatchNorm or GroupNorm (default: bn)")
    model.add_argument("--gn-groups", "--gn_groups", type=int, default=8, help="GroupNorm groups (default: 8)")
    model.add_argument("--drop-type", "--drop_type", type=drop_type_name, default="channel",
                       help="neuron, channel, path or layer, or the paper repository's 0-3 (default: channel)")
    model.add_argument("--drop-rate", "--drop_rate", type=float, default=0.1,
                       help="dropout rate; drop-layer: the last block's, rising linearly with depth (default: 0.1)")
    model.add_argument("--drop-mode", default="sample", choices=("sample", "batch"),
                       help="drop-path/drop-layer gates per sample or per batch (default: sample)")
    model.add_argument("--skip-dropped", action="store_true",
                       help="drop-layer: run residual branches on the kept samples only")
    model.add_argument("--no-fused", dest="fused", action="store_false",
                       help="eager norm + ReLU + dropout instead of the fused op")

    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--epochs", "--epoch", type=int, default=15, help="(default: 15)")
    optim.add_argument("--batch-size", "--batch_size", "-b", type=int, default=32,
                       help="images per step and process (default: 32)")
    optim.add_argument("--lr", type=float, default=0.1, help="initial learning rate (default: 0.1)")
    optim.add_argument("--momentum", type=float, default=0.9, help="(default: 0.9)")
    optim.add_argument("--nesterov", action="store_true", help="Nesterov momentum")
    optim.add_argument("--weight-decay", "--weight_decay", "--wd", type=float, default=5e-4, help="(default: 5e-4)")
    optim.add_argument("--sched", "--lr_scheduler", default="cosine", choices=SCHEDULES,
                       help="per-epoch schedule: step (x0.1 at 50%%, 75%% of the epochs), wrn (x0.2 at 30/60/80%%), "
                            "cosine, imagenet (x0.1 every 30 epochs) (default: cosine)")
    optim.add_argument("--warmup-epochs", type=int, default=0, help="linear warmup epochs (default: 0)")
    optim.add_argument("--amp", default="off", choices=("off", "bf16", "fp16"),
                       help="autocast dtype; fp16 uses a gradient scaler (default: off)")
    optim.add_argument("--channels-last", action="store_true", help="channels_last memory format")
    optim.add_argument("--compile", action="store_true",
                       help="torch.compile the model and the optimizer step (= --compile-mode default)")
    optim.add_argument("--compile-mode", choices=COMPILE_MODES, default=None,
                       help="torch.compile mode; implies --compile. reduce-overhead and max-autotune replay the "
                            "step as CUDA graphs (see the README)")
    optim.add_argument("--seed", type=int, default=0, help="(default: 0); rank r seeds its dropout with seed + r")
    optim.add_argument("--deterministic", action="store_true",
                       help="torch.use_deterministic_algorithms: bit-identical reruns and resumes")
    optim.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    optim.add_argument("--sync-bn", action="store_true", help="DDP on GPUs: batch statistics over all processes")

    run = parser.add_argument_group("run folder")
    run.add_argument("--name", "--exp_name", default=None, help="run name (default: <model>-<dataset>)")
    run.add_argument("--output-dir", default=None, help="run folder (default: runs/<name>-<timestamp>)")
    run.add_argument("--resume", default=None, metavar="auto|PATH",
                     help="continue from a checkpoint: auto = last.pt of --output-dir, or of the newest "
                          "runs/<name>-*; a mid-epoch checkpoint continues at the interrupted step")
    run.add_argument("--report-ratio", "--report_ratio", action="store_true",
                     help="log the variance-shift ratios of the norms receiving dropped activations per epoch")
    run.add_argument("--no-progress", action="store_true", help="no progress bar (it is off when not on a terminal)")
    run.add_argument("--log-all-ranks", action="store_true", help="DDP: every rank logs (only rank 0 writes files)")

    original = parser.add_argument_group("the paper repository's flags (ooibc88/dropout train.py)",
                                         "--net_type, --epoch, --batch_size, --weight_decay, --lr_scheduler,\n"
                                         "--block_type, --gn_groups, --drop_type, --drop_rate, --exp_name and\n"
                                         "--report_ratio are the aliases above; besides them:")
    original.add_argument("--arg1", type=int, default=None,
                          help="wrn: --widen-factor, densenet: --growth-rate, resnext: --cardinality, "
                               "resnet: its widen factor, which must be 1")
    original.add_argument("--arg2", type=int, default=None, help="resnext: --base-width")
    original.add_argument("--use_gn", dest="norm", action="store_const", const="gn", help="--norm gn")
    return parser


def _config_values(path: str, parser: argparse.ArgumentParser) -> Dict:
    """The YAML file's settings, keyed by option dest; UsageError for unreadable files and unknown keys."""
    try:
        values = yaml.safe_load(Path(path).read_text())
    except OSError as error:
        raise UsageError(f"--config {path}: {error.strerror}") from error
    except yaml.YAMLError as error:
        raise UsageError(f"--config {path} is not valid YAML: {error}") from error
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise UsageError(f"--config {path} must be a mapping of option: value, got {type(values).__name__}")
    values = {str(key).replace("-", "_"): value for key, value in values.items()}
    known = set(vars(parser.parse_args([]))) - {"config"}
    unknown = sorted(set(values) - known)
    if unknown:
        raise UsageError(f"--config {path}: unknown key{'s' * (len(unknown) > 1)} {', '.join(unknown)} "
                         f"(valid keys: {', '.join(sorted(known))})")
    return values


def _check_config_types(parser: argparse.ArgumentParser, args: argparse.Namespace, keys: Iterable[str]) -> None:
    """argparse converts and checks command-line strings, not defaults: check the YAML-given ones."""
    keys = set(keys)
    for action in parser._actions:  # argparse has no public view of its actions
        if action.dest not in keys or getattr(args, action.dest) is None or type(action) is argparse._StoreConstAction:
            continue  # (a store-const alias such as --use_gn is checked through its main option)
        value = getattr(args, action.dest)
        wanted = bool if action.nargs == 0 else action.type or str
        if not isinstance(wanted, type):  # a converting function such as drop_type_name
            try:
                value = wanted(value)
            except argparse.ArgumentTypeError as error:
                raise UsageError(f"--config: {action.dest} {error}") from error
        elif wanted is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        elif not isinstance(value, wanted) or (wanted is int and isinstance(value, bool)):
            raise UsageError(f"--config: {action.dest} must be {wanted.__name__}, got {value!r}")
        setattr(args, action.dest, value)
        if action.choices is not None and value not in action.choices:
            raise UsageError(f"--config: {action.dest} must be one of {list(action.choices)}, got {value!r}")


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """Command line (``sys.argv`` when None) over the ``--config`` YAML's values over the defaults."""
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--config")
    config_path = pre.parse_known_args(argv)[0].config
    parser = get_args_parser()
    values = _config_values(config_path, parser) if config_path else {}
    parser.set_defaults(**values)
    args = parser.parse_args(argv)
    _check_config_types(parser, args, values)
    return args


def _family(model: str) -> str:
    return next(family for family in FAMILIES if model.startswith(family))


def resolve(args: argparse.Namespace) -> argparse.Namespace:
    """The run's configuration: aliases mapped to the new options, defaults that depend on other
    settings filled in, everything checked (UsageError). Resolving a resolved config changes nothing."""
    cfg = copy.deepcopy(vars(args))
    cfg["model"] = NET_TYPES.get(cfg["model"], cfg["model"])
    if cfg["model"] not in list_models():
        raise UsageError(f"unknown model {cfg['model']!r}; valid: {', '.join(list_models())} (or resnet = preresnet)")
    family = _family(cfg["model"])
    arg1, arg2 = cfg.pop("arg1"), cfg.pop("arg2")
    if arg1 is not None:
        if family == "preresnet":
            if arg1 != 1:
                raise UsageError(f"--arg1 {arg1}: for resnet it is the widen factor, which this pre-activation "
                                 "ResNet fixes at 1 (use --arg1 1 or wrn for wider networks)")
        else:
            _set_alias(cfg, ARG1_OPTION[family], arg1, "--arg1")
    if arg2 is not None:
        if family != "resnext":
            raise UsageError(f"--arg2 is resnext's base width; it does not apply to {cfg['model']}")
        _set_alias(cfg, "base_width", arg2, "--arg2")
    cfg["arg1"] = cfg["arg2"] = None  # consumed
    for family_name, options in FAMILY_OPTIONS.items():
        for option in options:
            if family_name != family and cfg[option] is not None:
                raise UsageError(f"--{option.replace('_', '-')} applies to {family_name}, not to {cfg['model']}")
    if cfg["depth"] is None and cfg["model"] == family:  # a preset (e.g. preresnet164) keeps its own depth
        cfg["depth"] = SMALLEST_DEPTH[family]
    try:
        cfg["drop_type"] = drop_type_name(cfg["drop_type"])
    except argparse.ArgumentTypeError as error:
        raise UsageError(f"--drop-type {error}") from error
    _check_ranges(cfg)
    if cfg["compile_mode"] is not None:
        cfg["compile"] = True
    elif cfg["compile"]:
        cfg["compile_mode"] = "default"
    if cfg["workers"] is None:
        cfg["workers"] = 0 if cfg["dataset"] == "digits" else min(4, os.cpu_count() or 1)
    if cfg["name"] is None:
        cfg["name"] = f"{cfg['model']}-{cfg['dataset']}"
    return argparse.Namespace(**cfg)


def _set_alias(cfg: Dict, option: str, value, alias: str) -> None:
    if cfg[option] is not None and cfg[option] != value:
        raise UsageError(f"{alias} {value} contradicts --{option.replace('_', '-')} {cfg[option]}")
    cfg[option] = value


def _check_ranges(cfg: Dict) -> None:
    checks = [("epochs", cfg["epochs"] >= 1, ">= 1"), ("batch_size", cfg["batch_size"] >= 1, ">= 1"),
              ("lr", cfg["lr"] > 0, "> 0"), ("momentum", 0 <= cfg["momentum"] < 1, "in [0, 1)"),
              ("weight_decay", cfg["weight_decay"] >= 0, ">= 0"), ("val_split", 0 <= cfg["val_split"] < 1, "in [0, 1)"),
              ("warmup_epochs", 0 <= cfg["warmup_epochs"] < cfg["epochs"], "in [0, epochs)"),
              ("drop_rate", 0 <= cfg["drop_rate"] <= 1, "in [0, 1]"),
              ("workers", cfg["workers"] is None or cfg["workers"] >= 0, ">= 0")]
    for name, ok, rule in checks:
        if not ok:
            raise UsageError(f"--{name.replace('_', '-')} must be {rule}, got {cfg[name]}")
    if cfg["nesterov"] and cfg["momentum"] == 0:
        raise UsageError("--nesterov needs --momentum > 0")
    if cfg["dataset"] != "svhn" and cfg["svhn_extra"]:
        raise UsageError("--svhn-extra applies to --dataset svhn only")


def model_kwargs(cfg: argparse.Namespace, num_classes: int, in_channels: int) -> Dict:
    """``build_model`` keyword arguments: the shared settings plus the family's options that are set."""
    kwargs = dict(num_classes=num_classes, in_channels=in_channels, block_type=cfg.block_type, norm=cfg.norm,
                  gn_groups=cfg.gn_groups, drop_type=cfg.drop_type, drop_rate=cfg.drop_rate, drop_mode=cfg.drop_mode,
                  skip_dropped=cfg.skip_dropped, fused=cfg.fused)
    for option in ("depth",) + FAMILY_OPTIONS[_family(cfg.model)]:
        if getattr(cfg, option) is not None:
            kwargs[option] = getattr(cfg, option)
    return kwargs


def check_model(cfg: argparse.Namespace) -> None:
    """Build the model on the meta device (no memory, no time) so bad combinations fail before the
    data set loads: UsageError with the model's own message."""
    try:
        with torch.device("meta"):
            build_model(cfg.model, **model_kwargs(cfg, 10, 3))
    except (ValueError, TypeError) as error:
        raise UsageError(f"cannot build {cfg.model}: {error}") from error


def config_dict(cfg: argparse.Namespace) -> Dict:
    """What config.yaml holds: every setting but --config itself (loadable again with --config)."""
    return {key: value for key, value in vars(cfg).items() if key != "config"}


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


@contextlib.contextmanager
def _global_settings(cfg: argparse.Namespace, info: DistInfo):
    """Deterministic-algorithm and cuDNN flags and log handlers for the run, put back afterwards (main
    may run inside a larger program, e.g. a test session)."""
    previous = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark)
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS needs a fixed workspace
    torch.use_deterministic_algorithms(cfg.deterministic)
    torch.backends.cudnn.benchmark = not cfg.deterministic
    handler = logging.StreamHandler(sys.stderr)
    prefix = f"[rank {info.rank}] " if info.enabled else ""
    handler.setFormatter(logging.Formatter(f"%(asctime)s {prefix}%(message)s", "%H:%M:%S"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO if info.is_main or cfg.log_all_ranks else logging.WARNING)
    logger.propagate = False
    try:
        yield
    finally:
        for extra in list(logger.handlers):
            logger.removeHandler(extra)
            extra.close()
        torch.use_deterministic_algorithms(previous[0])
        torch.backends.cudnn.benchmark = previous[1]


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


def _check_resumable(ckpt: Dict, cfg: argparse.Namespace, path: Path, info: DistInfo) -> None:
    """CheckpointError when the checkpoint belongs to a differently configured run."""
    saved, now = ckpt["config"], config_dict(cfg)
    differences = [f"{key}: {saved.get(key)!r} in the checkpoint, {now.get(key)!r} now"
                   for key in sorted((set(saved) | set(now)) - RESUMABLE_CHANGES) if saved.get(key) != now.get(key)]
    if differences:
        raise CheckpointError(f"checkpoint {path} was written by a run with other settings:\n  "
                              + "\n  ".join(differences)
                              + "\nresume with its settings (its config.yaml, via --config) or start a new run in "
                                "another --output-dir; the checkpoint is left as it is")
    if ckpt["epoch"] > cfg.epochs or (ckpt["epoch"] == cfg.epochs and ckpt["step"]):
        raise CheckpointError(f"checkpoint {path} is at epoch {ckpt['epoch']}, past --epochs {cfg.epochs}")
    if ckpt["step"] and len(ckpt["ranks"]) != info.world_size:
        raise CheckpointError(f"checkpoint {path} was saved mid-epoch by {len(ckpt['ranks'])} processes; resume it "
                              f"with as many (this run has {info.world_size})")


def _json_number(value: float) -> Optional[float]:
    return value if math.isfinite(value) else None  # JSON has no NaN


class _Trainer:
    """One run: built from the resolved config, then ``run()``."""

    def __init__(self, cfg: argparse.Namespace, info: DistInfo, device: torch.device, stop: StopSignal):
        self.cfg, self.info, self.device, self.stop = cfg, info, device, stop
        self.run_dir, resume_path = _run_dir(cfg)
        self.cfg.output_dir = str(self.run_dir)
        ckpt = load_checkpoint(resume_path) if resume_path else None
        if ckpt is not None:
            _check_resumable(ckpt, cfg, resume_path, info)
        self._load_data()
        self._build(ckpt)
        if info.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            logger.addHandler(self._file_handler())
            text = yaml.safe_dump(config_dict(cfg), sort_keys=False)
            _write_atomic(self.run_dir / "config.yaml", text)
            self._truncate_metrics()
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

    def _truncate_metrics(self) -> None:
        """Drop metrics lines of epochs this run (re)does: a crash between writing an epoch's line and
        its last.pt must not leave the epoch twice in metrics.jsonl."""
        path = self.run_dir / "metrics.jsonl"
        if path.exists():
            lines = [line for line in path.read_text().splitlines()
                     if line.strip() and json.loads(line)["epoch"] < self.start_epoch]
            _write_atomic(path, "".join(line + "\n" for line in lines))

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
            with open(self.run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
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
            _write_atomic(self.run_dir / "results.json", json.dumps(results, indent=2) + "\n")
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


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _tensorboard(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional: metrics.jsonl has everything
        logger.info("tensorboard is not installed: no TensorBoard events")
        return None
    return SummaryWriter(str(run_dir))


def _device(name: Optional[str]) -> torch.device:
    """``--device`` (default: cuda when available); a CUDA device this machine lacks is a UsageError."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise UsageError(f"--device {name}: {error}") from error
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {name}: no CUDA device is available on this machine (use --device cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def main(args: argparse.Namespace) -> Dict:
    """Train as ``args`` (from :func:`parse_args`) say; returns the results (also in results.json).
    Raises UsageError, DatasetNotFound or CheckpointError for bad input, TrainingInterrupted after a
    stop signal (last.pt saved)."""
    cfg = resolve(args)
    check_model(cfg)
    device = _device(cfg.device)
    if cfg.sync_bn and device.type != "cuda":
        raise UsageError("--sync-bn needs CUDA (PyTorch's SyncBatchNorm reduces statistics on GPUs only)")
    info = init_distributed(device.type == "cuda")
    if info.enabled and device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
    try:
        with _global_settings(cfg, info), StopSignal() as stop:
            return _Trainer(cfg, info, device, stop).run()
    finally:
        close_distributed(info)


USAGE_ERRORS = (UsageError, DatasetNotFound, CheckpointError)


def cli(argv: Optional[List[str]] = None) -> None:
    """The ``effdrop-train`` console script: bad input exits with status 2 and a message, a stop
    signal with 128 + its number (130 for SIGINT, 143 for SIGTERM) after saving last.pt."""
    try:
        main(parse_args(argv))
    except USAGE_ERRORS as error:
        print(f"effdrop-train: error: {error}", file=sys.stderr)
        sys.exit(2)
    except TrainingInterrupted as interrupted:
        sys.exit(128 + interrupted.signum)
    except KeyboardInterrupt:  # a second Ctrl-C: stop at once (checkpoints are written atomically)
        sys.exit(128 + signal.SIGINT)


if __name__ == "__main__":
    cli()
