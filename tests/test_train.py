"""effdrop-train end to end on the CPU, without network.

CIFAR-10 runs read a small data set written in CIFAR-10's real on-disk format (pickled
``data_batch_1..5``, ``test_batch``, ``batches.meta``) through torchvision's own ``CIFAR10`` class.
torchvision checks every file against the md5 of the real archive; the tests put the md5s of the
files they wrote into the class's file lists (``cifar10`` fixture), so that check still runs for
real on these files. Runs that need their own process (a signal, torchrun, the console script)
use the built-in digits.
"""

import dataclasses
import hashlib
import inspect
import json
import os
import pickle
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("yaml")
pytest.importorskip("tqdm")
pytest.importorskip("sklearn")

import yaml  # noqa: E402
from torchvision.datasets import CIFAR10  # noqa: E402

from effdrop_triton import train  # noqa: E402
from effdrop_triton.models import FAMILIES, build_model  # noqa: E402
from effdrop_triton.train import checkpoint  # noqa: E402
from effdrop_triton.train.checkpoint import atomic_write, load_checkpoint, save_atomic, write_text_atomic  # noqa: E402
from effdrop_triton.train.data import load_datasets, stratified_split  # noqa: E402
from effdrop_triton.train.schedules import build_scheduler  # noqa: E402
from effdrop_triton.train.trainer import model_kwargs  # noqa: E402

BIN = Path(sys.executable).parent
TINY = ["--model", "wrn", "--depth", "10", "--widen-factor", "1", "--batch-size", "16", "--no-progress"]
METRIC_KEYS = {"epoch", "lr", "train_loss", "train_top1_err", "val_loss", "val_top1_err", "val_top5_err",
               "epoch_time_s", "images_per_s"}
CIFAR_TRAIN, CIFAR_TEST = 100, 40   # 10 held out for validation: 90 train images, 5 steps of 16


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def cifar10(tmp_path, monkeypatch) -> Path:
    """A data root holding a 100 + 40 image CIFAR-10 in the real format, with class-dependent colour
    so that the images carry their labels. Returns the root."""
    folder = tmp_path / "data" / CIFAR10.base_folder
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)

    def write_batch(name, count):
        labels = np.arange(count) % 10
        rng.shuffle(labels)
        images = rng.integers(0, 128, (count, 3, 32, 32)) + (labels * 12)[:, None, None, None]
        with open(folder / name, "wb") as f:
            pickle.dump({"batch_label": name, "labels": labels.tolist(), "filenames": [f"{i}.png" for i in range(count)],
                         "data": images.astype(np.uint8).reshape(count, 3072)}, f)
        return [name, _md5(folder / name)]

    train_list = [write_batch(f"data_batch_{i}", CIFAR_TRAIN // 5) for i in range(1, 6)]
    test_list = [write_batch("test_batch", CIFAR_TEST)]
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)], "num_cases_per_batch": 20, "num_vis": 3072}, f)
    monkeypatch.setattr(CIFAR10, "train_list", train_list)
    monkeypatch.setattr(CIFAR10, "test_list", test_list)
    monkeypatch.setattr(CIFAR10, "meta", {"filename": "batches.meta", "key": "label_names",
                                          "md5": _md5(folder / "batches.meta")})
    return tmp_path / "data"


def run(argv):
    return train.main(train.parse_args([str(a) for a in argv]))


def cifar_args(root, out, *extra):
    return ["--dataset", "cifar10", "--data-dir", root, "--output-dir", out, *TINY, *extra]


def metrics(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def weights(path):
    return load_checkpoint(path)["model"]


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    different = [key for key in a if not torch.equal(a[key], b[key])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def cli_exit(argv, capsys):
    """(exit status, stderr) of the console-script entry point called in this process."""
    with pytest.raises(SystemExit) as exit_info:
        train.cli.cli([str(a) for a in argv])
    return exit_info.value.code, capsys.readouterr().err


def test_cifar10_one_epoch_writes_the_run_folder(cifar10, tmp_path, monkeypatch):
    written = []
    monkeypatch.setattr(checkpoint, "atomic_write", lambda path: written.append(Path(path).name) or atomic_write(path))
    out = tmp_path / "run"
    results = run(cifar_args(cifar10, out, "--epochs", 1, "--report-ratio"))

    names = {p.name for p in out.iterdir()}
    assert {"config.yaml", "metrics.jsonl", "train.log", "last.pt", "best.pt", "results.json"} <= names
    assert any(name.startswith("events.out.tfevents") and (out / name).stat().st_size > 0 for name in names)
    assert not [name for name in names if name.endswith(".tmp")]
    # every file but the log and TensorBoard's events went through the one atomic writer
    streamed = {"train.log"} | {name for name in names if name.startswith("events.out.tfevents")}
    assert set(written) == names - streamed

    (record,) = metrics(out)
    assert METRIC_KEYS <= record.keys() and record["epoch"] == 0 and record["lr"] == 0.1
    assert all(np.isfinite(record[key]) and record[key] > 0 for key in ("train_loss", "val_loss", "images_per_s"))
    assert all(0 <= record[key] <= 100 for key in ("train_top1_err", "val_top1_err", "val_top5_err"))
    assert record["val_top5_err"] <= record["val_top1_err"]
    # wrn-10 has one basic block per stage, each with channel dropout before its second conv
    assert len(record["var_shift"]) == 3
    assert all(entry["var"] is None or 0 < entry["var"] < 10 for entry in record["var_shift"].values())
    log = (out / "train.log").read_text()
    assert "wrn on cifar10 (90 train, 10 val, 40 test images)" in log and "epoch 1/1" in log

    # config.yaml is the resolved configuration and loads back through --config unchanged
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["dataset"] == "cifar10" and saved["depth"] == 10 and saved["output_dir"] == str(out)
    assert train.config_dict(train.resolve(train.parse_args(["--config", str(out / "config.yaml")]))) == saved

    ckpt = load_checkpoint(out / "last.pt")
    assert (ckpt["epoch"], ckpt["step"], ckpt["best"]["epoch"]) == (1, 0, 0) and ckpt["config"] == saved
    model = build_model("wrn", depth=10, widen_factor=1, num_classes=10, in_channels=3, drop_rate=0.1)
    model.load_state_dict(ckpt["model"])  # strict: every tensor of the model, nothing else
    assert_same_weights(weights(out / "best.pt"), ckpt["model"])
    torch.load(out / "last.pt", weights_only=True)  # plain data: loadable without unpickling code

    saved_results = json.loads((out / "results.json").read_text())
    assert saved_results == json.loads(json.dumps(results))
    assert saved_results["best_epoch"] == 0 and 0 <= saved_results["test_top1_err"] <= 100
    assert saved_results["test"]["best"] == saved_results["test"]["last"]  # one epoch: the same weights


def test_cifar_data_sets_read_through_torchvision_with_stratified_validation(cifar10):
    splits = load_datasets("cifar10", str(cifar10), val_split=0.1)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (90, 10, 40)
    assert sorted(int(splits.val[i][1]) for i in range(10)) == list(range(10))  # one of each class
    image, _ = splits.train[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    # validation images go through the evaluation transform: no random crop or flip
    assert torch.equal(splits.val[0][0], splits.val[0][0])

    train_idx, val_idx = stratified_split([0] * 50 + [1] * 30, 0.2, seed=0)
    assert sorted(train_idx + val_idx) == list(range(80)) and len(val_idx) == 16
    assert sum(i < 50 for i in val_idx) == 10  # 20 % of each class
    assert stratified_split([0] * 50 + [1] * 30, 0.2, seed=0) == (train_idx, val_idx)


def test_resume_after_one_epoch_equals_two_epochs_straight(cifar10, tmp_path):
    common = ["--deterministic", "--sched", "cosine"]
    run(cifar_args(cifar10, tmp_path / "straight", "--epochs", 2, *common))
    run(cifar_args(cifar10, tmp_path / "resumed", "--epochs", 1, *common))
    first = (tmp_path / "resumed" / "last.pt").read_bytes()
    # --epochs may be raised on resume: the schedule is recomputed for the new length
    run(cifar_args(cifar10, tmp_path / "resumed", "--epochs", 2, "--resume", "auto", *common))

    assert_same_weights(weights(tmp_path / "straight" / "last.pt"), weights(tmp_path / "resumed" / "last.pt"))
    assert first != (tmp_path / "resumed" / "last.pt").read_bytes()
    straight, resumed = metrics(tmp_path / "straight"), metrics(tmp_path / "resumed")
    assert [r["lr"] for r in straight] == [r["lr"] for r in resumed] == [0.1, 0.05]  # cosine over 2 epochs
    timing = ("epoch_time_s", "images_per_s")
    assert [{k: v for k, v in r.items() if k not in timing} for r in straight] == \
           [{k: v for k, v in r.items() if k not in timing} for r in resumed]


def test_stop_signal_mid_epoch_saves_and_resumes_exactly(cifar10, tmp_path, monkeypatch):
    common = ["--deterministic", "--epochs", 2, "--sched", "step", "--workers", 0]  # images load in this process
    run(cifar_args(cifar10, tmp_path / "straight", *common))

    # SIGTERM while the 3rd batch of epoch 1 loads: that step finishes, then the run saves and stops
    fetch = CIFAR10.__getitem__
    calls = {"n": 0}
    stop_at = 80 + 10 + 2 * 16 + 1   # epoch 0: 80 training and 10 validation images; then 2 batches

    def fetch_and_signal(self, index):
        calls["n"] += 1
        if calls["n"] == stop_at:
            signal.raise_signal(signal.SIGTERM)
        return fetch(self, index)

    monkeypatch.setattr(CIFAR10, "__getitem__", fetch_and_signal)
    with pytest.raises(train.TrainingInterrupted) as interrupted:
        run(cifar_args(cifar10, tmp_path / "resumed", *common))
    monkeypatch.setattr(CIFAR10, "__getitem__", fetch)
    assert interrupted.value.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers put back
    ckpt = load_checkpoint(tmp_path / "resumed" / "last.pt")
    assert (ckpt["epoch"], ckpt["step"]) == (1, 3)
    assert len(metrics(tmp_path / "resumed")) == 1

    run(cifar_args(cifar10, tmp_path / "resumed", "--resume", "auto", *common))
    assert_same_weights(weights(tmp_path / "straight" / "last.pt"), weights(tmp_path / "resumed" / "last.pt"))
    straight, resumed = metrics(tmp_path / "straight"), metrics(tmp_path / "resumed")
    assert [r["epoch"] for r in resumed] == [0, 1]
    assert resumed[1]["train_loss"] == straight[1]["train_loss"]  # the interrupted epoch's sums carried over
    assert resumed[1]["val_loss"] == straight[1]["val_loss"]


@pytest.mark.parametrize("signum, group, workers", [
    (signal.SIGTERM, False, 0),   # kill <pid>
    (signal.SIGINT, True, 2),     # Ctrl-C: the terminal signals the whole process group, loader workers too
])
def test_signal_to_a_running_process_leaves_a_resumable_last_pt(signum, group, workers, tmp_path):
    out = tmp_path / "run"
    args = ["--model", "wrn", "--depth", "10", "--widen-factor", "1", "--batch-size", "8", "--epochs", "2",
            "--workers", str(workers), "--no-progress", "--output-dir", str(out)]
    process = subprocess.Popen([str(BIN / "effdrop-train"), *args], stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                               start_new_session=True)
    deadline = time.time() + 120
    while not (out / "config.yaml").exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)  # into the first epoch (157 steps)
    if group:
        os.killpg(process.pid, signum)
    else:
        process.send_signal(signum)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signum, err
    assert f"{signal.Signals(signum).name} received" in err and "Traceback" not in err
    ckpt = load_checkpoint(out / "last.pt")
    assert (ckpt["epoch"], ckpt["step"]) != (0, 0)
    assert f"at epoch {ckpt['epoch']}, step {ckpt['step']}/157" in err or ckpt["step"] == 0

    results = run([*args, "--resume", "auto"])
    assert [r["epoch"] for r in metrics(out)] == [0, 1]
    assert load_checkpoint(out / "last.pt")["epoch"] == 2 and results["test_top1_err"] < 100


def test_ddp_two_processes_agree_and_only_rank_0_writes(tmp_path):
    out = tmp_path / "run"
    args = ["--model", "wrn", "--depth", "10", "--widen-factor", "1", "--batch-size", "32", "--epochs", "1",
            "--no-progress", "--log-all-ranks", "--output-dir", str(out)]
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    done = subprocess.run([str(BIN / "torchrun"), "--standalone", "--nproc-per-node", "2", "-m", "effdrop_triton.train",
                           *args], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    # each rank logs the epoch's all-reduced metrics: the same numbers
    pattern = r"\[rank (\d)\] epoch 1/1 +lr \S+ +(train loss .*? top-5 err \S+)"
    lines = dict(re.findall(pattern, done.stderr))
    assert lines.keys() == {"0", "1"} and lines["0"] == lines["1"], done.stderr[-3000:]
    # rank 1 wrote nothing: the run folder is rank 0's and nothing else appeared
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert len(list(out.glob("events.out.tfevents*"))) == 1
    assert {"config.yaml", "metrics.jsonl", "train.log", "last.pt", "best.pt", "results.json"} <= \
           {p.name for p in out.iterdir()}
    assert "[rank 1]" not in (out / "train.log").read_text()

    # the all-reduced validation metrics are those of the whole validation set, each image once
    (record,) = metrics(out)
    ckpt = load_checkpoint(out / "last.pt")
    assert len(ckpt["ranks"]) == 2 and not torch.equal(ckpt["ranks"][0]["rng"]["torch"], ckpt["ranks"][1]["rng"]["torch"])
    model = build_model("wrn", depth=10, widen_factor=1, num_classes=10, in_channels=1, drop_rate=0.1)
    model.load_state_dict(ckpt["model"])
    model.eval()
    images, labels = load_datasets("digits", "", val_split=0.1).val.tensors
    with torch.no_grad():
        logits = model(images)
    assert record["val_top1_err"] == pytest.approx(100 * (logits.argmax(1) != labels).double().mean().item(), abs=1e-9)
    assert record["val_loss"] == pytest.approx(torch.nn.functional.cross_entropy(logits, labels).item(), rel=1e-4)


def test_original_repository_command_maps_to_the_new_flags(tmp_path, monkeypatch):
    original = ["--net_type=resnet", "--depth", "11", "--arg1", "1", "--epoch", "1", "--weight_decay", "1e-4",
                "--block_type", "0", "--drop_type=1", "--drop_rate=0.1", "--exp_name", "resnet_dropChannel",
                "--report_ratio"]
    new = ["--model", "preresnet", "--depth", "11", "--epochs", "1", "--weight-decay", "1e-4", "--block-type", "0",
           "--drop-type", "channel", "--drop-rate", "0.1", "--name", "resnet_dropChannel", "--report-ratio"]
    resolved = train.resolve(train.parse_args(original))
    assert vars(resolved) == vars(train.resolve(train.parse_args(new)))
    assert (resolved.model, resolved.epochs, resolved.drop_type, resolved.report_ratio) == ("preresnet", 1, "channel",
                                                                                            True)

    # it runs unchanged (here at depth 11 for 1 epoch), into runs/<exp_name>-<timestamp>
    monkeypatch.chdir(tmp_path)
    run(original + ["--no-progress"])
    (run_dir,) = (tmp_path / "runs").glob("resnet_dropChannel-*")
    assert "var_shift" in metrics(run_dir)[0]

    # --arg1 means what it meant for each --net_type
    for argv, expected in ((["--net_type", "wrn", "--depth", "16", "--arg1", "4"], {"widen_factor": 4}),
                           (["--net_type", "densenet", "--arg1", "24"], {"growth_rate": 24}),
                           (["--net_type", "resnext", "--arg1", "4", "--arg2", "16"], {"cardinality": 4, "base_width": 16})):
        cfg = vars(train.resolve(train.parse_args(argv)))
        assert {key: cfg[key] for key in expected} == expected and cfg["arg1"] is None
    with pytest.raises(train.UsageError, match="widen factor"):
        train.resolve(train.parse_args(["--net_type", "resnet", "--arg1", "2"]))
    with pytest.raises(train.UsageError, match="contradicts"):
        train.resolve(train.parse_args(["--net_type", "wrn", "--arg1", "4", "--widen-factor", "2"]))


def _lrs(name, epochs, warmup=0, lr=0.1):
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    scheduler = build_scheduler(optimizer, name, epochs, warmup)
    values = []
    for _ in range(epochs):
        values.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return values


@pytest.mark.parametrize("name, epochs, warmup, expected", [
    ("step", 8, 0, [0.1] * 4 + [0.01] * 2 + [0.001] * 2),                    # x0.1 at 50 % and 75 %
    ("step", 164, 0, [0.1] * 82 + [0.01] * 41 + [0.001] * 41),               # the paper's 164 epochs
    ("wrn", 10, 0, [0.1] * 3 + [0.02] * 3 + [0.004] * 2 + [0.0008] * 2),     # x0.2 at 30, 60, 80 %
    ("imagenet", 65, 0, [0.1] * 30 + [0.01] * 30 + [0.001] * 5),             # x0.1 every 30 epochs
    ("cosine", 4, 0, [0.1 * (1 + np.cos(np.pi * e / 4)) / 2 for e in range(4)]),
    ("step", 8, 2, [0.1 / 3, 0.2 / 3, 0.1, 0.1, 0.01, 0.01, 0.001, 0.001]),   # warmup, then the same milestones
    ("wrn", 10, 4, [0.02, 0.04, 0.06, 0.08, 0.02, 0.02, 0.004, 0.004, 0.0008, 0.0008]),  # a milestone inside warmup
    ("cosine", 6, 2, [0.1 / 3, 0.2 / 3] + [0.1 * (1 + np.cos(np.pi * e / 4)) / 2 for e in range(4)]),
])
def test_lr_schedule_per_epoch(name, epochs, warmup, expected):
    assert _lrs(name, epochs, warmup) == pytest.approx(expected, rel=1e-9)


def test_missing_data_folder_exits_2_naming_files_and_download(tmp_path, capsys):
    status, err = cli_exit(["--dataset", "cifar10", "--data-dir", tmp_path / "nowhere", "--output-dir",
                            tmp_path / "run", *TINY], capsys)
    assert status == 2 and "Traceback" not in err
    assert str(tmp_path / "nowhere" / "cifar-10-batches-py" / "data_batch_1") in err and "--download" in err
    assert not (tmp_path / "run").exists()

    status, err = cli_exit(["--dataset", "imagenet", "--data-dir", tmp_path, "--output-dir", tmp_path / "run"], capsys)
    assert status == 2 and str(tmp_path / "train") in err and str(tmp_path / "val") in err


def test_corrupt_cifar_file_exits_2(cifar10, tmp_path, capsys):
    with open(cifar10 / CIFAR10.base_folder / "data_batch_3", "ab") as f:
        f.write(b"x")  # torchvision's md5 check fails
    status, err = cli_exit(cifar_args(cifar10, tmp_path / "run"), capsys)
    assert status == 2 and "unreadable" in err and "data_batch_3" in err


@pytest.mark.parametrize("argv, message", [
    (["--model", "vgg16"], "unknown model 'vgg16'"),
    (["--model", "preresnet", "--drop-type", "path"], "preresnet is single-path"),
    (["--model", "wrn", "--drop-type", "2"], "wrn is single-path"),
    (["--model", "densenet", "--drop-type", "layer"], "densenet has none"),
    (["--model", "wrn", "--depth", "11"], "wrn depth must be 6n+4"),
    (["--model", "preresnet", "--growth-rate", "12"], "--growth-rate applies to densenet"),
    (["--drop-type", "dropblock"], "drop_type must be one of 0 / 'neuron', 1 / 'channel', 2 / 'path', 3 / 'layer', "
                                   "got 'dropblock'"),
    (["--lr", "0"], "--lr must be > 0"),
])
def test_bad_model_settings_exit_2_before_loading_data(argv, message, tmp_path, capsys):
    status, err = cli_exit([*argv, "--output-dir", tmp_path / "run"], capsys)
    assert status == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
@pytest.mark.parametrize("device, message", [("cuda", "--device cuda: no CUDA device is available"),
                                             ("cuda:1", "--device cuda:1: no CUDA device is available"),
                                             ("gpu", "--device gpu: ")])
def test_device_this_machine_lacks_exits_2_with_one_line(device, message, tmp_path, capsys):
    status, err = cli_exit(["--device", device, "--output-dir", tmp_path / "run"], capsys)
    assert status == 2 and err.startswith(f"effdrop-train: error: {message}") and err.count("\n") == 1, err
    assert not (tmp_path / "run").exists()


def test_compile_mode_implies_compile_and_compile_means_the_default_mode():
    resolved = train.resolve(train.parse_args(["--compile-mode", "max-autotune"]))
    assert resolved.compile and resolved.compile_mode == "max-autotune"
    resolved = train.resolve(train.parse_args(["--compile"]))
    assert resolved.compile and resolved.compile_mode == "default"
    resolved = train.resolve(train.parse_args([]))
    assert not resolved.compile and resolved.compile_mode is None
    with pytest.raises(SystemExit):
        train.parse_args(["--compile-mode", "fastest"])


def test_console_script_exit_status_and_message(tmp_path):
    done = subprocess.run([str(BIN / "effdrop-train"), "--dataset", "svhn", "--data-dir", str(tmp_path)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "train_32x32.mat" in done.stderr and "--download" in done.stderr
    assert list(tmp_path.iterdir()) == []


def _snapshot(folder):
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.iterdir()}


def test_corrupt_or_mismatched_checkpoint_exits_2_and_is_left_alone(cifar10, tmp_path, capsys):
    out = tmp_path / "run"
    run(cifar_args(cifar10, out, "--epochs", 1))
    good = (out / "last.pt").read_bytes()

    # a checkpoint of another model configuration
    before = _snapshot(out)
    status, err = cli_exit(cifar_args(cifar10, out, "--epochs", 1, "--resume", "auto", "--depth", 16), capsys)
    assert status == 2 and "other settings" in err and "depth: 10 in the checkpoint, 16 now" in err
    assert _snapshot(out) == before

    # a fresh run must not overwrite a run's checkpoints
    status, err = cli_exit(cifar_args(cifar10, out, "--epochs", 1), capsys)
    assert status == 2 and "already holds last.pt and best.pt" in err and "--resume auto" in err
    assert _snapshot(out) == before

    # truncated, then not a torch file at all
    for content in (good[: len(good) // 2], b"not a checkpoint"):
        (out / "last.pt").write_bytes(content)
        before = _snapshot(out)
        status, err = cli_exit(cifar_args(cifar10, out, "--epochs", 1, "--resume", "auto"), capsys)
        assert status == 2 and "cannot be read" in err and "left as it is" in err and "Traceback" not in err
        assert _snapshot(out) == before

    status, err = cli_exit(cifar_args(cifar10, out, "--resume", out / "missing.pt"), capsys)
    assert status == 2 and "no such file" in err


def test_yaml_config_gives_defaults_the_command_line_overrides(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("model: wrn\ndepth: 16\ndrop-rate: 0.3\nlr: 1e-2\nnesterov: true\nsched: wrn\ndrop_type: 3\n")
    args = train.parse_args(["--config", str(config), "--drop-rate", "0.2"])
    assert (args.model, args.depth, args.drop_rate, args.lr, args.nesterov, args.sched, args.drop_type) == \
           ("wrn", 16, 0.2, 0.01, True, "wrn", "layer")
    assert train.parse_args([]).model == "preresnet"  # the defaults themselves are untouched

    for text, message in (("dropout_rate: 0.1\n", "unknown key dropout_rate"), ("sched: linear\n", "sched must be one of"),
                          ("epochs: 1.5\n", "epochs must be int"), ("- 1\n", "must be a mapping"),
                          ("drop_type: 7\n", "drop_type must be one of")):
        config.write_text(text)
        status, err = cli_exit(["--config", config], capsys)
        assert status == 2 and message in err, err
    status, err = cli_exit(["--config", tmp_path / "missing.yaml"], capsys)
    assert status == 2 and "missing.yaml" in err


def test_amp_and_channels_last_train(cifar10, tmp_path):
    for amp in ("bf16", "fp16"):
        run(cifar_args(cifar10, tmp_path / amp, "--epochs", 1, "--amp", amp, "--channels-last", "--val-split", 0))
        (record,) = metrics(tmp_path / amp)
        assert np.isfinite(record["train_loss"]) and record["val_loss"] is None
        assert not (tmp_path / amp / "best.pt").exists()  # no validation split: nothing to choose on
        assert "scale" in load_checkpoint(tmp_path / amp / "last.pt")["scaler"] or amp == "bf16"


def test_compiled_model_trains_and_checkpoints_the_plain_model(cifar10, tmp_path):
    run(cifar_args(cifar10, tmp_path / "run", "--epochs", 1, "--compile", "--workers", 0))
    (record,) = metrics(tmp_path / "run")
    assert np.isfinite(record["train_loss"]) and np.isfinite(record["val_loss"])
    model = build_model("wrn", depth=10, widen_factor=1, num_classes=10, in_channels=3, drop_rate=0.1)
    model.load_state_dict(weights(tmp_path / "run" / "last.pt"))  # no torch.compile wrapper prefixes


def test_embedded_default_learns_the_digits(tmp_path):
    """The no-argument run, shortened to 4 epochs (of 15): over five times the 10 % accuracy of chance."""
    results = run(["--epochs", 4, "--output-dir", tmp_path / "run", "--no-progress"])
    assert results["test_top1_err"] < 50, results
    losses = [record["train_loss"] for record in metrics(tmp_path / "run")]
    assert losses[-1] < 0.6 * losses[0], losses
    cfg = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert (cfg["dataset"], cfg["model"], cfg["depth"], cfg["block_type"], cfg["drop_type"]) == \
           ("digits", "preresnet", 11, 0, "channel")


def test_compile_mode_resumes_exactly_and_checkpoints_the_plain_model(cifar10, tmp_path):
    """``--compile-mode reduce-overhead`` (on the CPU inductor records no CUDA graphs, but the step, the
    compiled optimizer with its rate as a tensor and the padded last evaluation batch are the same code):
    one epoch and a resumed second equal two epochs straight, bit for bit, and the checkpoints hold the
    plain model."""
    common = ["--epochs", 2, "--compile-mode", "reduce-overhead", "--workers", 0]
    run(cifar_args(cifar10, tmp_path / "straight", *common))
    run(cifar_args(cifar10, tmp_path / "resumed", *common[:1], 1, *common[2:]))
    run(cifar_args(cifar10, tmp_path / "resumed", *common, "--resume", "auto"))
    assert_same_weights(weights(tmp_path / "straight" / "last.pt"), weights(tmp_path / "resumed" / "last.pt"))
    straight, resumed = metrics(tmp_path / "straight"), metrics(tmp_path / "resumed")
    assert [r["lr"] for r in straight] == [r["lr"] for r in resumed] == [0.1, 0.05]  # the schedule reached the step
    assert [r["val_loss"] for r in straight] == [r["val_loss"] for r in resumed]
    model = build_model("wrn", depth=10, widen_factor=1, num_classes=10, in_channels=3, drop_rate=0.1)
    model.load_state_dict(weights(tmp_path / "resumed" / "last.pt"))  # no torch.compile wrapper prefixes
    config = yaml.safe_load((tmp_path / "resumed" / "config.yaml").read_text())
    assert config["compile"] is True and config["compile_mode"] == "reduce-overhead"


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_options_and_depths_are_the_model_registrys(family, monkeypatch):
    record = FAMILIES[family]
    shared = {"depth", "num_classes", "in_channels", "block_type", "norm", "gn_groups", "drop_type", "drop_rate",
              "drop_mode", "skip_dropped", "fused"}  # what every builder takes; the rest are the family's options
    assert set(record.options) == set(inspect.signature(record.build).parameters) - shared
    assert set(record.options) <= {action.dest for action in train.get_args_parser()._actions}  # each has a flag
    cfg = train.resolve(train.parse_args(["--model", family]))  # default depth: the smallest the builder takes
    assert cfg.depth == record.smallest_depth
    with torch.device("meta"):
        build_model(family, **model_kwargs(cfg, 10, 3))
        for depth in range(1, cfg.depth):
            with pytest.raises(ValueError, match="depth"):
                build_model(family, **{**model_kwargs(cfg, 10, 3), "depth": depth})
    for alias in ("arg1", "arg2"):  # the paper repository's --arg1/--arg2 set the registry's options
        if getattr(record, alias) is not None:
            assert getattr(train.resolve(train.parse_args(["--model", family, f"--{alias}", "3"])),
                           getattr(record, alias)) == 3
    for other in set(FAMILIES) - {family}:  # another family's options are refused
        for flag in (f"--{option.replace('_', '-')}" for option in FAMILIES[other].options):
            with pytest.raises(train.UsageError, match=f"{flag} applies to {other}"):
                train.resolve(train.parse_args(["--model", family, flag if flag == "--bottleneck" else f"{flag}=1"]))
    # the trainer reads the registry, it holds no copy of it
    monkeypatch.setitem(FAMILIES, family, dataclasses.replace(record, smallest_depth=record.smallest_depth + 99))
    assert train.resolve(train.parse_args(["--model", family])).depth == cfg.depth + 99


def test_atomic_writer_fsyncs_file_then_folder_and_an_interrupted_write_leaves_the_old_file(tmp_path, monkeypatch):
    path, synced, fsync = tmp_path / "last.pt", [], os.fsync
    save_atomic({"epoch": 1}, path)
    before = path.read_bytes()
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append((stat.S_ISDIR(os.fstat(fd).st_mode),
                                                              path.read_bytes())) or fsync(fd))
    with pytest.raises(RuntimeError, match="killed"):
        with atomic_write(path) as f:
            f.write(b"half a checkpoint")
            raise RuntimeError("killed mid-write")
    with pytest.raises(Exception, match="lambda"):  # torch.save itself fails part-way
        save_atomic({"weights": torch.zeros(1000), "hook": lambda: None}, path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file
    assert synced == []
    write_text_atomic(path, "new")
    # the new bytes are on disk before they replace the old file, and the rename is synced after
    assert synced == [(False, before), (True, b"new")]
