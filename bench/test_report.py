"""bench.report on a recorded pytest-benchmark JSON file (bench/testdata, a real CPU run of the small shape)
and on hand-written documents for what a CPU run cannot record (CUDA peaks, CUDA graph replay times, a training
step); and bench.conftest's CUDA graph timing with fakes for torch.cuda. No timing, no GPU."""

import contextlib
import json
import sys
import types
from pathlib import Path

import pytest
import torch

from bench import conftest as bench_conftest
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


def test_training_step_targets_of_graph_replay():
    """The reduce-overhead provider's three targets, from one run: 1.3x the eager twin's step, 1.0x the
    twin's own reduce-overhead step, 25 % less peak memory than it; and every model's peak memory."""
    def step(provider, seconds, peak, shape="wrn16_8-b128", reference=None):
        return _bench(provider, seconds, pass_="step", op="e2e", dtype="bf16", shape_name=shape, bytes_moved=None,
                      baselines=["torch_modules", "torch_modules_compile", "torch_modules_reduce_overhead"],
                      images=128, peak_mem_bytes=peak, reference=reference)

    docs = [step("torch_modules", 0.012, 6 * 2**30), step("torch_modules_reduce_overhead", 0.008, 4 * 2**30),
            step("effdrop_reduce_overhead", 0.010, 2 * 2**30, reference="torch_modules_reduce_overhead"),
            step("torch_modules", 0.5, 20 * 2**30, shape="wrn28_10-b128"),
            step("effdrop", 0.4, 12 * 2**30, shape="wrn28_10-b128", reference="torch_modules")]
    lines = report.e2e_targets(report.records({"benchmarks": docs}, "mean"))
    text = "\n".join(lines)
    # 12 / 10 ms = 1.2x < 1.3x; 8 / 10 ms = 0.8x < 1.0x; 4 GiB / 2 GiB = 2x >= 1.33x (50 % less)
    assert "| wrn16_8-b128 | bf16 | step vs the eager twin | effdrop_reduce_overhead vs torch_modules | 1.20× | " \
           ">= 1.30× | **missed** |" in text
    assert "| step vs the twin, reduce-overhead | effdrop_reduce_overhead vs torch_modules_reduce_overhead | " \
           "0.80× | >= 1.00× | **missed** |" in text
    assert "| peak memory vs the twin, reduce-overhead | effdrop_reduce_overhead vs torch_modules_reduce_overhead " \
           "| 2.00× | >= 1.33× | met |" in text
    assert "| wrn28_10-b128 | bf16 | torch_modules: 20 GiB | effdrop: 12 GiB |" in text
    assert "## Training-step targets" in report.to_markdown(report.records({"benchmarks": docs}, "mean"), "mean")


def test_eval_op_forward_only():
    docs = [_bench(p, t, op="norm_act_drop_eval", baselines=["eager_bn_relu_dropout2d"], saved_bytes=0)
            for p, t in (("torch", 2e-3), ("eager_bn_relu_dropout2d", 3e-3))]
    rows = report.group(report.records({"benchmarks": docs + DATA["benchmarks"][:4]}, "mean"))
    assert list(rows) == ["drop_layer", "norm_act_drop_eval"]
    text = report.to_markdown(report.records({"benchmarks": docs}, "mean"), "mean")
    # fwd only: the headline's rate column falls back to the forward's
    assert "| norm_act_drop_eval | small | fp32 | torch | `eager_bn_relu_dropout2d` | 1.50× | – | **–** | 1.5 GB/s |" in text


# ---- CUDA graph replay times (graph_ms / graph_error, recorded on CUDA only) -------------------

CAPTURE_ERROR = "RuntimeError: CUDA error: operation not permitted when stream is capturing"


def _graphed(provider, seconds, pass_, graph_p50=None, error=None):
    """A large bf16 drop_neuron record; graph quantiles spread unevenly around p50, so that ratios of p20 or p80
    would differ from the p50 ones."""
    extra = {"graph_ms": {"p20": graph_p50 - 0.05, "p50": graph_p50, "p80": graph_p50 + 0.2}} if graph_p50 else {}
    if error:
        extra["graph_error"] = error
    return _bench(provider, seconds, pass_=pass_, op="drop_neuron", baselines=["F.dropout"], shape_name="large",
                  dtype="bf16", bytes_moved=2**28, copy_gbps=3000.0, device="NVIDIA H100", **extra)


GRAPHED = [
    _graphed("F.dropout", 4e-4, "fwd", 0.3), _graphed("torch", 8e-4, "fwd", 0.6), _graphed("triton", 2e-4, "fwd", 0.1),
    _graphed("F.dropout", 4e-4, "bwd", error=CAPTURE_ERROR), _graphed("torch", 8e-4, "bwd", 0.4),
    _graphed("triton", 2e-4, "bwd", 0.1),
    _graphed("F.dropout", 8e-4, "fwdbwd", 0.6), _graphed("torch", 1.6e-3, "fwdbwd", 1.2),
    _graphed("triton", 4e-4, "fwdbwd", error=CAPTURE_ERROR + "\nCUDA kernel errors might be asynchronously reported"),
]


def test_graph_speedup_from_the_p50s():
    rows = report.group(report.records({"benchmarks": GRAPHED}, "mean"))["drop_neuron"]
    fwd, bwd, fwdbwd = (rows[("large", "bf16", pass_)] for pass_ in ("fwd", "bwd", "fwdbwd"))
    assert report.graph_time(fwd["triton"]) == pytest.approx(1e-4)
    assert report.graph_speedup(fwd, "F.dropout", "triton") == pytest.approx(3.0)  # 0.3 / 0.1 ms (p20s: 5, p80s: 1.7)
    assert report.speedup(fwd, "F.dropout", "triton") == pytest.approx(2.0)  # the eager ratio is unchanged
    assert report.graph_speedup(bwd, "F.dropout", "triton") is None  # the baseline's capture failed
    assert report.graph_speedup(fwdbwd, "F.dropout", "triton") is None  # the provider's capture failed
    assert report.graph_time(fwdbwd["triton"]) is None


def test_graph_columns_and_errors():
    text = report.to_markdown(report.records({"benchmarks": GRAPHED}, "mean"), "mean")
    assert "- graph: median of `triton.testing.do_bench`" in text
    assert ("| shape | dtype | pass | F.dropout | torch | triton | speed-up torch | speed-up triton | "
            "speed-up (graph) torch | speed-up (graph) triton |") in text
    # each cell: eager time (GB/s, %), then the replay's p50; speed-ups: eager, then graph (0.3/0.6, 0.3/0.1 ms)
    assert ("| large | bf16 | fwd | 400 µs (671 GB/s, 22%), graph 300 µs | 800 µs (336 GB/s, 11%), graph 600 µs | "
            "200 µs (1.34e+03 GB/s, 45%), graph 100 µs | 0.50× | 2.00× | 0.50× | 3.00× |") in text
    # a failed capture: its first line in the provider's cell, ✗ and who failed in the graph speed-up
    assert (f"| large | bf16 | bwd | 400 µs (671 GB/s, 22%), graph ✗ {CAPTURE_ERROR} | 800 µs (336 GB/s, 11%), "
            "graph 400 µs | 200 µs (1.34e+03 GB/s, 45%), graph 100 µs | 0.50× | 2.00× | ✗ F.dropout | "
            "✗ F.dropout |") in text
    assert f"| 400 µs (671 GB/s, 22%), graph ✗ {CAPTURE_ERROR} | 0.50× | 2.00× | 0.50× | ✗ triton |" in text
    assert "asynchronously reported" not in text
    # the headline: eager speed-ups, then those of the graph replays, the triton provider's failure visible
    assert ("| op | shape | dtype | provider | baseline | fwd | bwd | fwd+bwd | fwd (graph) | bwd (graph) | "
            "fwd+bwd (graph) | fwd+bwd GB/s, % of copy |") in text
    assert ("| drop_neuron | large | bf16 | triton | `F.dropout` | 2.00× | 2.00× | **2.00×** | 3.00× | ✗ F.dropout | "
            "✗ triton | 671 GB/s, 22% | 8 B vs 8 B |") in text


def test_graph_error_cell_is_short_and_table_safe():
    long = "RuntimeError: " + "x" * 100 + " | y"
    cell = report._cell({"time": 1e-3, "graph_error": "Unsupported: a | b"}, graphs=True)
    assert cell == "1 ms, graph ✗ Unsupported: a \\| b"
    cell = report._cell({"time": 1e-3, "graph_error": long}, graphs=True)
    assert cell.startswith("1 ms, graph ✗ RuntimeError: xxx") and cell.endswith("…") and len(cell) < 100
    assert report._cell({"time": 1e-3, "graph_ms": {"p20": 0.4, "p50": 0.5, "p80": 0.9}}) == "1 ms"  # graphs off


def test_training_step_graph_speedup():
    def step(provider, seconds, **graph):
        return _bench(provider, seconds, pass_="step", op="e2e", baselines=["torch_modules"], shape_name="wrn16_8-b128",
                      dtype="bf16", bytes_moved=None, saved_bytes=None, images=128, **graph)

    docs = [step("torch_modules", 0.2, graph_ms={"p20": 90.0, "p50": 100.0, "p80": 130.0}),
            step("effdrop", 0.16, graph_ms={"p20": 40.0, "p50": 50.0, "p80": 60.0})]
    text = report.to_markdown(report.records({"benchmarks": docs}, "mean"), "mean")
    assert ("| benchmark | model | dtype | provider vs baseline | step (img/s) | speed-up | speed-up (graph) | "
            "peak memory | peak ratio |") in text
    # eager 0.2 / 0.16 s; graph p50s 100 / 50 ms
    assert "| e2e | wrn16_8-b128 | bf16 | effdrop vs torch_modules | 160 ms (800 img/s) | **1.25×** | 2.00× |" in text
    assert "| wrn16_8-b128 | bf16 | step | 200 ms (640 img/s), graph 100 ms | 160 ms (800 img/s), graph 50 ms | " \
           "1.25× | 2.00× |" in text


def test_no_graph_data_no_graph_columns(recorded):
    """A CPU run (or a CUDA one under --bench-no-graphs) renders as before: not one graph column or note."""
    recs, meta, _ = recorded
    assert not report.has_graphs(recs)
    text = report.to_markdown(recs, "median", meta)
    assert "graph" not in text.lower() and "✗" not in text
    gpu = [{k: v for k, v in r.items() if not k.startswith("graph")}
           for r in report.records({"benchmarks": GRAPHED}, "mean")]
    text = report.to_markdown(gpu, "mean")
    assert "graph" not in text.lower()
    assert "| large | bf16 | fwd | 400 µs (671 GB/s, 22%) | 800 µs (336 GB/s, 11%) | 200 µs (1.34e+03 GB/s, 45%) | " \
           "0.50× | 2.00× |" in text


# ---- bench.conftest's CUDA graph timing, with fakes for torch.cuda and the timer ------------------

class _FakeCuda:
    """What capture_graph uses of torch.cuda; logs which stream each call sees. ``end_error``: what capture_end
    raises when the graph's context exits (after a failed call, CUDA reports the capture invalidated)."""

    def __init__(self, end_error=None):
        self.log, self.now, self.end_error = [], "default", end_error

    def Stream(self):
        return _FakeStream("side", self.log)

    def current_stream(self):
        return _FakeStream(self.now, self.log)

    @contextlib.contextmanager
    def stream(self, s):
        before, self.now = self.now, s.name
        try:
            yield
        finally:
            self.now = before

    def CUDAGraph(self):
        return types.SimpleNamespace(replay=lambda: self.log.append("replay"))

    @contextlib.contextmanager
    def graph(self, graph, stream):
        self.log.append(f"capture on {stream.name}")
        try:
            yield
        finally:
            self.log.append("capture_end")
            if self.end_error:
                raise self.end_error


class _FakeStream:
    def __init__(self, name, log):
        self.name, self.log = name, log

    def wait_stream(self, other):
        self.log.append(f"{self.name} waits for {other.name}")


def _override_flag():
    return torch._C._override_stale_capture_stream() if hasattr(torch._C, "_override_stale_capture_stream") else None


def test_capture_then_replay_timed():
    cuda = _FakeCuda()
    timed = []

    def fn():
        cuda.log.append(f"fn on {cuda.now}" + (", stale streams overridden" if _override_flag() else ""))

    def timer(replay):
        timed.append(replay)
        replay()
        return {"p20": 1.0, "p50": 2.0, "p80": 3.0}

    result = bench_conftest.graph_replay_ms(fn, timer, capture=lambda f: bench_conftest.capture_graph(f, cuda=cuda),
                                            synchronize=lambda: pytest.fail("synchronize after a good capture"))
    assert result == {"graph_ms": {"p20": 1.0, "p50": 2.0, "p80": 3.0}}
    # where PyTorch has the stale-stream switch, it is on for the captured call only
    overridden = ", stale streams overridden" if _override_flag() is not None else ""
    assert cuda.log == ["side waits for default", *["fn on side"] * bench_conftest.GRAPH_WARMUP, "capture on side",
                        f"fn on side{overridden}", "capture_end", "default waits for side", "replay"]
    assert len(timed) == 1 and not _override_flag()  # the switch is back to its process-wide default


def _raised_while_handling(error, context):
    error.__context__ = context
    return error


ERRORS = {
    "call": RuntimeError("CUDA error: operation not permitted when stream is capturing\nCompile with ..."),
    "capture_end": RuntimeError("CUDA error: operation failed due to a previous error during capture"),
    # raised while a library handled an error of its own (a cache miss, say): that one is not the cause
    "call after a KeyError": _raised_while_handling(
        RuntimeError("CUDA error: operation not permitted when stream is capturing"), KeyError(7)),
}


@pytest.mark.parametrize("call, end, expected", [
    ("call", "capture_end", CAPTURE_ERROR),  # a host sync in the call, then capture_end over it: the call's error
    (None, "capture_end", "RuntimeError: CUDA error: operation failed due to a previous error during capture"),
    ("call after a KeyError", None, CAPTURE_ERROR),
])
def test_capture_failure_becomes_graph_error(call, end, expected):
    """The error recorded is the first line of the cause; the current stream is the caller's again, the
    device is synchronized, the stale-stream switch is reset and the timer never runs."""
    cuda = _FakeCuda(end_error=ERRORS.get(end))
    calls, synced = [], []

    def fn():
        calls.append(cuda.now)
        if call and len(calls) > bench_conftest.GRAPH_WARMUP:
            raise ERRORS[call]

    result = bench_conftest.graph_replay_ms(fn, lambda replay: pytest.fail("timed a failed capture"),
                                            capture=lambda f: bench_conftest.capture_graph(f, cuda=cuda),
                                            synchronize=lambda: synced.append(True))
    assert result == {"graph_error": expected}
    assert calls == ["side"] * (bench_conftest.GRAPH_WARMUP + 1) and cuda.now == "default" and synced == [True]
    assert not _override_flag()


def test_replay_failure_and_failing_synchronize():
    def capture(fn):
        return types.SimpleNamespace(replay=fn)

    def timer(replay):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    def synchronize():
        raise RuntimeError("CUDA error: an illegal memory access was encountered")  # a sticky error: not raised here

    assert bench_conftest.graph_replay_ms(lambda: None, timer, capture=capture, synchronize=synchronize) == {
        "graph_error": "OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"}
