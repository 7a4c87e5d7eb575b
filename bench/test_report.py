"""bench.report on a recorded pytest-benchmark JSON file (bench/testdata, a real CPU run of the small shape)
and on hand-written documents for what a CPU run cannot record (CUDA peaks, a training step). No timing."""

import json
import sys
from pathlib import Path

import pytest

from bench import report

RECORDED = Path(__file__).parent / "testdata" / "cpu-small-recorded.json"


def _bench(provider, mean, pass_="fwd", op="drop_layer", baselines=("torchvision", "timm"), **extra):
    info = {"op": op, "provider": provider, "baselines": list(baselines), "pass": pass_,
            "shape_name": "small", "dtype": "fp32", "bytes_moved": 3_000_000, "saved_bytes": 8,
            "peak_mem_bytes": None, "device": "cpu: test", "torch": "2.x", "triton": None, "effdrop_triton": "0.1.0"}
    return {"extra_info": {**info, **extra}, "stats": {"mean": mean, "median": mean / 2}}


DATA = {"benchmarks": [
    _bench("torch", 2e-3, pass_="bwd"),
    _bench("timm", 3e-3), _bench("torch", 1e-3), _bench("torchvision", 4e-3, copy_gbps=3.0),
    {"extra_info": {}, "stats": {"mean": 1.0}},  # a benchmark not from bench/: ignored
    {"extra_info": {"op": "drop_layer"}, "stats": None},  # written under --benchmark-disable: ignored
]}


def test_records_and_group():
    recs = report.records(DATA, "mean")
    assert len(recs) == 4
    rows = report.group(recs)["drop_layer"]
    assert list(rows) == [("small", "fp32", "fwd"), ("small", "fp32", "bwd")]  # sorted by pass order
    assert report.columns(rows) == (["torchvision", "timm"], ["torchvision", "timm", "torch"])


def test_records_stat():
    assert [r["time"] for r in report.records(DATA, "median")] == [1e-3, 1.5e-3, 5e-4, 2e-3]


def test_ratio():
    assert report.ratio(4e-3, 1e-3) == pytest.approx(4.0)


def test_to_markdown_cells():
    text = report.to_markdown(report.records(DATA, "mean"), "mean")
    assert "- device: cpu: test" in text
    assert "| shape | dtype | pass | torchvision | timm | torch | speed-up torch |" in text
    # first baseline (torchvision, 4 ms) over torch (1 ms); GB/s = 3e6 B / time; 0.75 of 3 GB/s copy bandwidth: 25%
    assert "| small | fp32 | fwd | 4 ms (0.75 GB/s, 25%) | 3 ms (1 GB/s) | 1 ms (3 GB/s) | 4.00× |" in text
    assert "| small | fp32 | bwd | – | – | 2 ms (1.5 GB/s) | – |" in text


# ---- the recorded CPU run ------------------------------------------------------------------

@pytest.fixture(scope="module")
def recorded():
    recs, meta = report.load(str(RECORDED))
    return recs, meta, json.loads(RECORDED.read_text())


def _median(data, op, provider, pass_):
    return next(b["stats"]["median"] for b in data["benchmarks"] if (b["extra_info"]["op"], b["extra_info"]["provider"],
                                                                     b["extra_info"]["pass"]) == (op, provider, pass_))


def test_recorded_ratios(recorded):
    recs, _, data = recorded
    rows = report.group(recs)
    assert list(rows) == ["drop_neuron", "drop_layer"]
    fwd = rows["drop_layer"][("small", "fp32", "fwd")]
    expected = _median(data, "drop_layer", "torchvision", "fwd") / _median(data, "drop_layer", "torch", "fwd")
    assert report.speedup(fwd, "torchvision", "torch") == pytest.approx(expected)
    r = fwd["torchvision"]
    assert report.gbps(r) == pytest.approx(r["bytes_moved"] / _median(data, "drop_layer", "torchvision", "fwd") / 1e9)
    assert report.copy_pct(r) == pytest.approx(100 * report.gbps(r) / r["copy_gbps"])


def test_recorded_table(recorded):
    recs, meta, _ = recorded
    text = report.to_markdown(recs, "median", meta)
    for line in (
        "- device: cpu: AMD EPYC, 1 thread", "- torch: 2.14.1+cu130", "- triton: 3.8.0", "- effdrop_triton: 0.1.0",
        "- peak memory: n/a on CPU (PyTorch keeps no allocator statistics there)",
        "## drop_neuron", "## drop_layer",
        "| shape | dtype | pass | torchvision | timm | torch | speed-up torch |",
        # medians 47.1 µs / 46.9 µs / 314 µs for 1.5 MiB moved; copying a 512 KiB tensor ran at 86 GB/s
        "| small | fp32 | fwd | 47.1 µs (33.4 GB/s, 39%) | 46.9 µs (33.5 GB/s, 39%) | 314 µs (5.01 GB/s, 6%) | 0.15× |",
        "| small | fp32 | fwdbwd | 873 µs (2.4 GB/s, 3%) | 1.93 ms (1.08 GB/s, 1%) | 0.45× |",
        # F.dropout saves a 512 KiB mask, this package an 8-byte seed
        "| small | fp32 | 512 KiB | 8 B | 6.6e4× |",
        "| drop_neuron | small | fp32 | torch | `F.dropout` | 0.86× | – | **0.45×** | 1.08 GB/s, 1% | 8 B vs 512 KiB |",
    ):
        assert line in text, line
    assert text.index("## Headline") < text.index("## drop_neuron") < text.index("## drop_layer")
    assert "- run: 2026-11-26" in text and "commit be20b50ec3c6 (uncommitted changes)" in text


def test_main_writes_table_and_chart(recorded, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "cpu-test.md"
    report.main([str(RECORDED), "--out", str(out)])
    png = tmp_path / "cpu-test.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert "![speed-ups and memory ratios](cpu-test.png)" in out.read_text()
    assert "chart written" in capsys.readouterr().err


def test_main_without_matplotlib(recorded, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    out = tmp_path / "cpu-test.md"
    report.main([str(RECORDED), "--out", str(out)])
    assert not (tmp_path / "cpu-test.png").exists()
    text = out.read_text()
    assert "Chart skipped: matplotlib is not installed" in text and "| small | fp32 | fwd |" in text
    assert "Chart skipped" in capsys.readouterr().err


def test_main_headline_only(capsys):
    report.main([str(RECORDED), "--headline"])
    printed = capsys.readouterr().out
    assert printed.startswith("| op | shape | dtype | provider | baseline | fwd | bwd | fwd+bwd |")
    assert "## " not in printed and len(printed.splitlines()) == 4


def test_main_refuses_untimed_json(tmp_path):
    path = tmp_path / "disabled.json"
    path.write_text(json.dumps({"benchmarks": []}))
    with pytest.raises(SystemExit, match="no timed effdrop_triton benchmarks"):
        report.main([str(path)])


def test_several_files_merge(tmp_path):
    doc = json.loads(RECORDED.read_text())
    halves = [tmp_path / "a.json", tmp_path / "b.json"]
    for path, part in zip(halves, (doc["benchmarks"][:4], doc["benchmarks"][4:])):
        path.write_text(json.dumps({**doc, "benchmarks": part}))
    merged, meta = report.load([str(p) for p in halves])
    assert len(merged) == 10 and len(meta) == 2


# ---- what a CPU run cannot record ------------------------------------------------------------

def test_cuda_peak_memory_and_triton_headline():
    def gpu(provider, seconds, pass_, peak):
        return _bench(provider, seconds, pass_=pass_, op="drop_neuron", baselines=["F.dropout"], shape_name="large",
                      dtype="bf16", bytes_moved=2**28, copy_gbps=3000.0, saved_bytes=8 if provider in report.PACKAGE
                      else 2**26, peak_mem_bytes=2**30 + peak, peak_over_inputs_bytes=peak, device="NVIDIA H100")

    docs = [gpu(p, t * k, pass_, peak) for pass_, k in (("fwd", 1), ("bwd", 1), ("fwdbwd", 2))
            for p, t, peak in (("F.dropout", 4e-4, 3 * 2**27), ("triton", 2e-4, 2**27), ("torch", 8e-4, 2**27))]
    text = report.to_markdown(report.records({"benchmarks": docs}, "mean"), "mean")
    assert "| op | shape | dtype | provider |" in text
    # triton (the GPU path) is the headline provider: 2x faster; fwd+bwd moves 2**28 B in 4e-4 s, 671 of 3000 GB/s
    assert "| drop_neuron | large | bf16 | triton | `F.dropout` | 2.00× | 2.00× | **2.00×** | 671 GB/s, 22% |" in text
    assert "| shape | dtype | F.dropout | torch | triton | saved torch | saved triton | peak torch | peak triton |" in text
    assert "| large | bf16 | 64 MiB / 384 MiB | 8 B / 128 MiB | 8 B / 128 MiB | 8.4e6× | 8.4e6× | 3.00× | 3.00× |" in text


def test_training_step_group():
    def step(provider, seconds, peak):
        return _bench(provider, seconds, pass_="step", op="e2e", baselines=["eager"], shape_name="wrn16_8",
                      dtype="bf16", bytes_moved=None, saved_bytes=None, images=128, peak_mem_bytes=peak)

    recs = report.records({"benchmarks": [step("eager", 0.2, 6 * 2**30), step("triton", 0.16, 4 * 2**30)]}, "mean")
    text = report.to_markdown(recs, "mean")
    assert "| wrn16_8 | bf16 | step | 200 ms (640 img/s) | 160 ms (800 img/s) | 1.25× |" in text
    assert "| wrn16_8 | bf16 | 6 GiB | 4 GiB | 1.50× |" in text
    assert "| e2e | wrn16_8 | bf16 | triton vs eager | 160 ms (800 img/s) | **1.25×** | 4 GiB vs 6 GiB | 1.50× |" in text


def test_norm_act_drop_baseline_is_the_reference():
    docs = [_bench(p, t, op="norm_act_drop", baselines=["eager_bn_relu_dropout2d"])
            for p, t in (("torch", 2e-3), ("eager_bn_relu_dropout2d", 3e-3))]
    rows = report.group(report.records({"benchmarks": docs + DATA["benchmarks"][:4]}, "mean"))
    assert list(rows) == ["drop_layer", "norm_act_drop"]
    assert report.columns(rows["norm_act_drop"]) == (["eager_bn_relu_dropout2d"], ["eager_bn_relu_dropout2d", "torch"])
    assert report.speedup(rows["norm_act_drop"][("small", "fp32", "fwd")], "eager_bn_relu_dropout2d", "torch") == 1.5


def test_training_step_providers_and_references():
    """bench/test_bench_e2e.py's providers: effdrop against torch_modules, effdrop_compile against
    torch_modules_compile (its record's reference); saved-for-backward bytes shown without a CUDA peak."""
    def step(provider, seconds, saved, reference=None):
        return _bench(provider, seconds, pass_="step", op="e2e", baselines=["torch_modules", "torch_modules_compile"],
                      shape_name="wrn10_2-b8", bytes_moved=None, saved_bytes=saved, images=8, reference=reference)

    docs = [step("effdrop", 0.1, 2**20, "torch_modules"), step("effdrop_compile", 0.05, 2**20, "torch_modules_compile"),
            step("torch_modules", 0.2, 2**22), step("torch_modules_compile", 0.04, 2**21)]
    recs = report.records({"benchmarks": docs}, "mean")
    assert report.columns(report.group(recs)["e2e"]) == (
        ["torch_modules", "torch_modules_compile"],
        ["torch_modules", "torch_modules_compile", "effdrop", "effdrop_compile"])
    text = report.to_markdown(recs, "mean")
    assert "speed-up = torch_modules time / provider time (> 1: this package is faster); effdrop_compile against " \
           "torch_modules_compile." in text
    # 0.2 / 0.1 = 2x; 0.04 / 0.05 = 0.8x
    assert "| wrn10_2-b8 | fp32 | step | 200 ms (40 img/s) | 40 ms (200 img/s) | 100 ms (80 img/s) | " \
           "50 ms (160 img/s) | 2.00× | 0.80× |" in text
    assert "| wrn10_2-b8 | fp32 | 4 MiB | 2 MiB | 1 MiB | 1 MiB | 4.00× | 2.00× |" in text
    assert "| e2e | wrn10_2-b8 | fp32 | effdrop vs torch_modules | 100 ms (80 img/s) | **2.00×** | – vs – | – |" in text


def test_eval_op_forward_only():
    docs = [_bench(p, t, op="norm_act_drop_eval", baselines=["eager_bn_relu_dropout2d"], saved_bytes=0)
            for p, t in (("torch", 2e-3), ("eager_bn_relu_dropout2d", 3e-3))]
    rows = report.group(report.records({"benchmarks": docs + DATA["benchmarks"][:4]}, "mean"))
    assert list(rows) == ["drop_layer", "norm_act_drop_eval"]
    text = report.to_markdown(report.records({"benchmarks": docs}, "mean"), "mean")
    # fwd only: the headline's rate column falls back to the forward's
    assert "| norm_act_drop_eval | small | fp32 | torch | `eager_bn_relu_dropout2d` | 1.50× | – | **–** | 1.5 GB/s |" in text
