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
import inspect
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Dict, Iterable, List, Optional

import torch
import yaml

from effdrop_triton.levels import DropLevel
from effdrop_triton.models import FAMILIES, build_model, family_of, list_models

from .checkpoint import CheckpointError
from .data import DATASETS, DatasetNotFound
from .distributed import DistInfo, close_distributed, init_distributed
from .schedules import SCHEDULES
from .trainer import StopSignal, Trainer, TrainingInterrupted, UsageError, model_kwargs

logger = logging.getLogger(__package__)  # the application's one logger: main() gives it the run's handlers

NET_TYPES = {"resnet": "preresnet"}  # the paper repository's --net_type names that differ from ours
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
USAGE_ERRORS = (UsageError, DatasetNotFound, CheckpointError)


def drop_level(value) -> str:
    """``--drop-type``: a level's name or the paper repository's number (0 neuron, 1 channel, 2 path,
    3 layer), checked by :meth:`DropLevel.parse` and kept as the name (config.yaml stays readable)."""
    text = value if isinstance(value, int) else str(value)
    try:
        return DropLevel.parse(int(text) if isinstance(text, str) and text.isdigit() else text).label
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


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
    depths = ", ".join(f"{name} {family.depths}" for name, family in FAMILIES.items())
    smallest = ", ".join(f"{name} {family.smallest_depth}" for name, family in FAMILIES.items())
    model.add_argument("--depth", type=int, default=None,
                       help=f"depth: {depths}; default: a preset's own, else the family's smallest ({smallest})")
    # each family's own options, from the registry; left at None, the builder's default applies
    for name, family in FAMILIES.items():
        for option, what in family.options.items():
            default = inspect.signature(family.build).parameters[option].default
            kind = {"action": argparse.BooleanOptionalAction} if isinstance(default, bool) else {"type": type(default)}
            model.add_argument(f"--{option.replace('_', '-')}", default=None,
                               help=f"{name}: {what} (default: {default})", **kind)
    model.add_argument("--block-type", "--block_type", type=int, default=0, choices=range(4),
                       help="0 norm-ReLU-drop-conv, 1 norm-ReLU-conv-drop, 2 drop-conv-norm-ReLU, "
                            "3 conv-drop-norm-ReLU (default: 0)")
    model.add_argument("--norm", default="bn", choices=("bn", "gn"), help="BatchNorm or GroupNorm (default: bn)")
    model.add_argument("--gn-groups", "--gn_groups", type=int, default=8, help="GroupNorm groups (default: 8)")
    model.add_argument("--drop-type", "--drop_type", type=drop_level, default="channel",
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
        if not isinstance(wanted, type):  # a converting function such as drop_level
            try:
                value = wanted(value)
            except argparse.ArgumentTypeError as error:
                raise UsageError(f"--config: {error}") from error
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


def resolve(args: argparse.Namespace) -> argparse.Namespace:
    """The run's configuration: aliases mapped to the new options, defaults that depend on other
    settings filled in, everything checked (UsageError). Resolving a resolved config changes nothing."""
    cfg = copy.deepcopy(vars(args))
    cfg["model"] = NET_TYPES.get(cfg["model"], cfg["model"])
    if cfg["model"] not in list_models():
        raise UsageError(f"unknown model {cfg['model']!r}; valid: {', '.join(list_models())} (or resnet = preresnet)")
    family = family_of(cfg["model"])
    arg1, arg2 = cfg.pop("arg1"), cfg.pop("arg2")
    if arg1 is not None:
        if FAMILIES[family].arg1 is None:  # the paper's resnet, whose --arg1 was a widen factor
            if arg1 != 1:
                raise UsageError(f"--arg1 {arg1}: for resnet it is the widen factor, which this pre-activation "
                                 "ResNet fixes at 1 (use --arg1 1 or wrn for wider networks)")
        else:
            _set_alias(cfg, FAMILIES[family].arg1, arg1, "--arg1")
    if arg2 is not None:
        if FAMILIES[family].arg2 is None:
            takers = ", ".join(f"{name}'s {other.arg2.replace('_', ' ')}" for name, other in FAMILIES.items()
                               if other.arg2)
            raise UsageError(f"--arg2 is {takers}; it does not apply to {cfg['model']}")
        _set_alias(cfg, FAMILIES[family].arg2, arg2, "--arg2")
    cfg["arg1"] = cfg["arg2"] = None  # consumed
    for other, other_family in FAMILIES.items():
        for option in other_family.options:
            if other != family and cfg[option] is not None:
                raise UsageError(f"--{option.replace('_', '-')} applies to {other}, not to {cfg['model']}")
    if cfg["depth"] is None and cfg["model"] == family:  # a preset (e.g. preresnet164) keeps its own depth
        cfg["depth"] = FAMILIES[family].smallest_depth
    try:
        cfg["drop_type"] = drop_level(cfg["drop_type"])
    except argparse.ArgumentTypeError as error:
        raise UsageError(f"--drop-type: {error}") from error
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


def check_model(cfg: argparse.Namespace) -> None:
    """Build the model on the meta device (no memory, no time) so bad combinations fail before the
    data set loads: UsageError with the model's own message."""
    try:
        with torch.device("meta"):
            build_model(cfg.model, **model_kwargs(cfg, 10, 3))
    except (ValueError, TypeError) as error:
        raise UsageError(f"cannot build {cfg.model}: {error}") from error


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
            return Trainer(cfg, info, device, stop).run()
    finally:
        close_distributed(info)


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
