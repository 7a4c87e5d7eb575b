"""bench.report on a hand-written pytest-benchmark document (no timing)."""

import pytest

from bench import report


def _bench(provider, mean, pass_="fwd", **extra):
    info = {"op": "drop_layer", "provider": provider, "baselines": ["torchvision", "timm"], "pass": pass_,
            "shape_name": "small", "dtype": "fp32", "bytes_moved": 3_000_000, "saved_bytes": 8,
            "peak_mem_bytes": None, "device": "cpu: test", "torch": "2.x", "triton": None, "effdrop_triton": "0.1.0"}
    return {"extra_info": {**info, **extra}, "stats": {"mean": mean, "median": mean / 2}}


DATA = {"benchmarks": [
    _bench("torch", 2e-3, pass_="bwd"),
    _bench("timm", 3e-3), _bench("torch", 1e-3), _bench("torchvision", 4e-3),
    {"extra_info": {}, "stats": {"mean": 1.0}},  # a benchmark not from bench/: ignored
]}


def test_records_and_group():
    recs = report.records(DATA)
    assert len(recs) == 4
    rows = report.group(recs)["drop_layer"]
    assert list(rows) == [("small", "fp32", "fwd"), ("small", "fp32", "bwd")]  # sorted by pass order
    assert report.columns(rows) == (["torchvision", "timm"], ["torchvision", "timm", "torch"])


def test_records_stat():
    assert [r["time"] for r in report.records(DATA, "median")] == [1e-3, 1.5e-3, 5e-4, 2e-3]


def test_ratio():
    assert report.ratio(4e-3, 1e-3) == pytest.approx(4.0)


def test_to_markdown():
    text = report.to_markdown(report.records(DATA))
    assert "- device: cpu: test" in text
    assert "| shape | dtype | pass | torchvision | timm | torch | speed-up torch |" in text
    # first baseline (torchvision, 4 ms) over torch (1 ms); GB/s = 3e6 B / 1 ms
    assert "| small | fp32 | fwd | 4 ms (0.75 GB/s) | 3 ms (1 GB/s) | 1 ms (3 GB/s) | 4.00× |" in text
    assert "| small | fp32 | bwd | – | – | 2 ms (1.5 GB/s) | – |" in text
