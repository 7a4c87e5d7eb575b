"""bench/gpu_check.sh: shell syntax, argument errors, and a --dry-run end to end into a temporary folder
(every stage runs, CUDA parts skipped; the benchmarks run once on the small shape, not timed for long)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("gpu_check.sh")
ROOT = SCRIPT.parent.parent
STAGES = ("install", "versions", "cuda-tests", "e2e", "benchmarks", "report")

pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                reason="needs bash and coreutils' timeout")


def run(*args, timeout=240):
    env = {**os.environ, "PYTHON": sys.executable}
    env.pop("OUT", None)
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_bash_syntax():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


@pytest.mark.parametrize("args", [["--budget", "5x"], ["--budget", "-3"], ["--budget"], ["--out"], ["--frobnicate"]])
def test_bad_arguments_exit_2(args):
    result = run(*args)
    assert result.returncode == 2
    assert "gpu_check.sh:" in result.stderr


def test_no_graphs_is_an_option():
    result = run("--no-graphs", "--budget", "5x")  # stops at the bad budget, after taking --no-graphs
    assert result.returncode == 2 and "--budget takes seconds" in result.stderr and "unknown" not in result.stderr


def test_dry_run_every_stage(tmp_path):
    result = run("--dry-run", "--out", str(tmp_path), "--budget", "3m")
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "DRY RUN: CUDA parts skipped" in out
    summary = out[out.index("==== effdrop_triton GPU check"):]
    for stage in STAGES:
        assert f"\n{stage}" in summary and any(line.split()[:2] == [stage, "PASS"] for line in summary.splitlines()), \
            f"stage {stage} did not pass:\n{summary}"
    assert "dry run: pip resolved the checkout, nothing installed" in summary
    assert "CUDA tests skipped: no GPU" in summary
    assert "| drop_neuron | small | fp32 | torch | `F.dropout` | – | – | **" in summary  # headline ratios (fwd+bwd only)

    files = sorted(p.name for p in tmp_path.iterdir())
    stem = next(name[:-5] for name in files if name.endswith(".json"))
    assert stem.startswith("cpu-dry-run-")
    expected = {"install.log", "versions.txt", "tests.log", "bench.log", "summary.txt", f"{stem}.json", f"{stem}.md"}
    assert expected <= set(files) and len(files) <= 8  # the GPU machine returns at most 8 files
    assert (tmp_path / "summary.txt").read_text() in out

    data = json.loads((tmp_path / f"{stem}.json").read_text())
    infos = [b["extra_info"] for b in data["benchmarks"]]
    ops = [i for i in infos if i["op"] != "e2e"]  # the training step (tiny CPU models, eager) has no grid shape
    assert {i["op"] for i in infos} == {"drop_neuron", "drop_channel", "drop_path", "drop_layer", "norm_act_drop", "e2e"}
    assert {(i["shape_name"], i["dtype"], i["pass"]) for i in ops} == {("small", "fp32", "fwdbwd")}
    assert {i["provider"] for i in infos} >= {"torch", "F.dropout", "torchvision", "timm", "cat_ref",
                                              "eager_bn_relu_dropout2d", "effdrop", "torch_modules"}
    assert all(i["copy_gbps"] > 0 and i["gbps"] > 0 and i["peak_mem_bytes"] is None for i in ops)
    assert all(i["images_per_s"] > 0 and i["pass"] == "step" for i in infos if i["op"] == "e2e")
    assert not any("data" in b["stats"] for b in data["benchmarks"])  # --bench-no-rounds: files come back small

    report = (tmp_path / f"{stem}.md").read_text()
    assert report.startswith("# effdrop_triton benchmarks") and "## Headline" in report
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "Chart skipped" in report
    else:
        assert (tmp_path / f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({stem}.png)" in report
