"""Markdown report of the op benchmarks.

Run the benchmarks with a JSON file, then render it::

    python -m pytest bench --benchmark-json=results.json
    python -m bench.report results.json [--out report.md] [--stat median] [--plot speedup.png]

One table per op, one row per (shape, dtype, pass): the mean time of every provider
(with GB/s = bytes moved / mean, see bench/conftest.py for the estimate), and the
speed-up of this package's ``torch`` and ``triton`` backends over the op's first
baseline (baseline mean / provider mean: above 1 the package is faster). Further
baselines get their own time column. A second table per op lists the bytes one forward
saves for backward and, on CUDA, the peak memory. The header gives the device, the
versions and, on CUDA, the device copy bandwidth to read GB/s against.
``--stat median`` (or min) replaces the mean everywhere: on a shared, noisy machine a
few preempted rounds can move the mean by several times. ``--plot`` draws the
speed-ups as bars when matplotlib is importable.
"""

from __future__ import annotations

import argparse
import json
import sys

PACKAGE = ("torch", "triton")
ORDER = {  # display order; values not listed follow, in the order they appear
    "op": ("drop_neuron", "drop_channel", "drop_path", "drop_layer"),
    "shape_name": ("small", "cpu4m", "cifar", "large"),
    "dtype": ("fp32", "bf16", "fp16"),
    "pass": ("fwd", "bwd", "fwdbwd"),
}
ENVIRONMENT = ("device", "torch", "triton", "effdrop_triton")


def records(data: dict, stat: str = "mean") -> list:
    """One flat dict per benchmark of a pytest-benchmark JSON document (those written by
    bench/): its extra_info plus ``time``, the statistic ``stat`` of its rounds in seconds."""
    return [{**b["extra_info"], "time": b["stats"][stat]} for b in data["benchmarks"] if "op" in b.get("extra_info", {})]


def load(path: str, stat: str = "mean") -> list:
    with open(path) as f:
        return records(json.load(f), stat)


def group(recs: list) -> dict:
    """``{op: {(shape, dtype, pass): {provider: record}}}`` in display order (see ORDER)."""
    def rank(key, value):
        order = ORDER[key]
        return order.index(value) if value in order else len(order)

    ops = {}
    for r in sorted(recs, key=lambda r: tuple(rank(k, r[k]) for k in ORDER)):  # stable: ties keep file order
        ops.setdefault(r["op"], {}).setdefault((r["shape_name"], r["dtype"], r["pass"]), {})[r["provider"]] = r
    return ops


def ratio(baseline_time: float, provider_time: float) -> float:
    """Speed-up of a provider over a baseline: above 1 the provider is faster."""
    return baseline_time / provider_time


def speedup(by_provider: dict, reference, provider):
    """``ratio`` of two providers of one row, None when either did not run."""
    if reference not in by_provider or provider not in by_provider:
        return None
    return ratio(by_provider[reference]["time"], by_provider[provider]["time"])


def columns(rows: dict) -> tuple:
    """(baselines, providers) of one op: baselines first, as the benchmarks listed them, then the package."""
    seen = [p for by_provider in rows.values() for p in by_provider]
    first = next(iter(next(iter(rows.values())).values()))
    baselines = [b for b in first.get("baselines", []) if b in seen]
    baselines += [p for p in dict.fromkeys(seen) if p not in PACKAGE and p not in baselines]
    return baselines, baselines + [p for p in PACKAGE if p in seen]


def _time(seconds: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def _bytes(n) -> str:
    if n is None:
        return "–"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} B"


def _cell(r) -> str:
    if r is None:
        return "–"
    if r.get("bytes_moved"):
        return f"{_time(r['time'])} ({r['bytes_moved'] / r['time'] / 1e9:.3g} GB/s)"
    return _time(r["time"])


def _memory_cell(r) -> str:
    if r is None:
        return "–"
    peak = r.get("peak_mem_bytes")
    return _bytes(r.get("saved_bytes")) + ("" if peak is None else f" / {_bytes(peak)}")


def _table(header: list, body: list) -> list:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(row) + " |" for row in body]


def header_lines(recs: list) -> list:
    lines = []
    for key in ENVIRONMENT:
        values = list(dict.fromkeys(str(r.get(key)) for r in recs))
        lines.append(f"- {key}: {', '.join(values)}")
    copy = [r["copy_gbps"] for r in recs if r.get("copy_gbps")]
    if copy:
        lines.append(f"- device copy bandwidth: {copy[0]:.4g} GB/s (read + write)")
    return lines


def to_markdown(recs: list, stat: str = "mean") -> str:
    lines = ["# effdrop_triton benchmarks", "", *header_lines(recs)]
    for op, rows in group(recs).items():
        baselines, providers = columns(rows)
        reference = baselines[0] if baselines else None
        package = [p for p in PACKAGE if p in providers]
        lines += ["", f"## {op}", ""]
        if reference:
            lines += [f"{stat.capitalize()} time (GB/s) per provider; speed-up = {reference} time / provider time"
                      " (> 1: this package is faster).", ""]
        body, memory = [], []
        for (shape, dtype, pass_), by_provider in rows.items():
            ratios = [speedup(by_provider, reference, p) for p in package] if reference else []
            body.append([shape, dtype, pass_, *(_cell(by_provider.get(p)) for p in providers),
                         *("–" if x is None else f"{x:.2f}×" for x in ratios)])
            if pass_ == "fwd":
                memory.append([shape, dtype, *(_memory_cell(by_provider.get(p)) for p in providers)])
        speedups = [f"speed-up {p}" for p in package] if reference else []
        lines += _table(["shape", "dtype", "pass", *providers, *speedups], body)
        if memory:
            lines += ["", "Saved for backward by one forward (/ CUDA peak allocated over one call):", ""]
            lines += _table(["shape", "dtype", *providers], memory)
    return "\n".join(lines) + "\n"


def plot(recs: list, path: str) -> bool:
    """Bar chart of the package's speed-ups over each op's first baseline; False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    labels, bars = [], {p: [] for p in PACKAGE}
    for op, rows in group(recs).items():
        baselines, _ = columns(rows)
        if not baselines:
            continue
        for (shape, dtype, pass_), by_provider in rows.items():
            labels.append(f"{op} {shape} {dtype} {pass_}")
            for p in PACKAGE:
                bars[p].append(speedup(by_provider, baselines[0], p) or 0.0)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(labels)), 4.5))
    width = 0.4
    for i, p in enumerate(PACKAGE):
        if any(bars[p]):  # e.g. no triton bars on CPU
            ax.bar([x + (i - 0.5) * width for x in range(len(labels))], bars[p], width, label=p)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
    ax.set_ylabel("speed-up over first baseline")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", help="pytest-benchmark JSON (--benchmark-json)")
    parser.add_argument("--out", help="write the markdown here instead of stdout")
    parser.add_argument("--stat", default="mean", choices=("mean", "median", "min"), help="time statistic (default mean)")
    parser.add_argument("--plot", help="also draw the speed-ups to this image (needs matplotlib)")
    args = parser.parse_args(argv)
    recs = load(args.results, args.stat)
    if not recs:
        sys.exit(f"{args.results}: no effdrop_triton benchmarks (was it written with --benchmark-json?)")
    text = to_markdown(recs, args.stat)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    else:
        print(text, end="")
    if args.plot and not plot(recs, args.plot):
        print("matplotlib is not installed: no plot drawn", file=sys.stderr)


if __name__ == "__main__":
    main()
