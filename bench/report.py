"""Markdown report and bar chart of the benchmarks: ratios against the baseline of the same run.

Run the benchmarks with a JSON file, then render it::

    python -m pytest bench --benchmark-json=results.json
    python -m bench.report results.json [more.json ...] [--out report.md] [--stat median] [--plot chart.png]

The report opens with the device, the versions (torch, Triton, effdrop_triton, Python,
CUDA), the commit and the statistic used, then a headline table (one row per op at its
headline shape and dtype: speed-ups of forward, backward and forward+backward over the
op's first baseline, the share of copy bandwidth reached, the bytes saved for backward),
then one section per op. Each section has a time table, one row per (shape, dtype, pass):
every provider's time with GB/s (bytes moved / time) and its percentage of the copy
bandwidth (a tensor the size of the op's output, copied in the same run), and the speed-up of this
package's ``torch`` and ``triton`` backends over the first baseline (baseline time /
provider time: above 1 the package is faster); and a memory table: bytes one forward
saves for backward and, on CUDA, the peak allocated during one forward+backward above
its inputs, with baseline / package ratios.

Where the run timed CUDA graphs (``graph_ms``: each case captured once and replayed, on CUDA
unless ``--bench-no-graphs``), every time cell adds the replay's median (GPU time without the
host's time to issue each call), the time tables and the headline add the speed-ups of those
medians ("speed-up (graph)", "(graph)"), and a capture that failed shows as ✗ with its error
(``graph_error``) in the provider's cell. A CPU run has none of these columns.

A group whose records carry ``images`` (a training step, op ``e2e``) shows images/s
instead of GB/s, the bytes one forward saves for backward when recorded, and its absolute
peak memory. Its package providers are ``effdrop`` and ``effdrop_compile``; a record's
``reference`` names the baseline it is compared with when that is not the first one (the
compiled package model against the compiled twin). ``--plot`` (default: beside ``--out``, same
name, ``.png``) draws the forward+backward speed-ups and the memory ratios as bars; it
needs matplotlib (``pip install -e ".[bench]"``) and is skipped with a note otherwise.
``--headline`` prints only the headline table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

PACKAGE = ("torch", "triton", "effdrop", "effdrop_compile", "effdrop_reduce_overhead")  # op backends; step providers
# the training-step targets of CUDA-graph replay: (what, provider, baseline, key, minimum ratio)
E2E_TARGETS = (("step vs the eager twin", "effdrop_reduce_overhead", "torch_modules", "time", 1.3),
               ("step vs the twin, reduce-overhead", "effdrop_reduce_overhead", "torch_modules_reduce_overhead",
                "time", 1.0),
               ("peak memory vs the twin, reduce-overhead", "effdrop_reduce_overhead",
                "torch_modules_reduce_overhead", "peak_mem_bytes", 1 / 0.75))
ORDER = {  # display order; values not listed follow, in the order they appear
    "op": ("drop_neuron", "drop_channel", "drop_path", "drop_layer", "norm_act_drop", "norm_act_drop_eval", "e2e"),
    "shape_name": ("small", "cpu4m", "cifar", "bn256", "large"),
    "dtype": ("fp32", "bf16", "fp16"),
    "pass": ("fwd", "bwd", "fwdbwd"),
}
ENVIRONMENT = ("device", "capability", "torch", "triton", "effdrop_triton", "python", "cuda")
# (shape, dtype) pairs shown in the headline table, where present: the GPU targets, then the CPU claim
HEADLINE = (("large", "bf16"), ("bn256", "bf16"), ("cifar", "bf16"), ("cpu4m", "fp32"))


def records(data: dict, stat: str = "median") -> list:
    """One flat dict per benchmark of a pytest-benchmark JSON document (those written by
    bench/): its extra_info plus ``time``, the statistic ``stat`` of its rounds in seconds."""
    return [{**b["extra_info"], "time": b["stats"][stat]} for b in data["benchmarks"]
            if "op" in b.get("extra_info", {}) and b.get("stats")]


def load(paths, stat: str = "median") -> tuple:
    """(records, run metadata) of one or more JSON files: metadata = datetime and commit of each file."""
    recs, meta = [], []
    for path in [paths] if isinstance(paths, str) else paths:
        with open(path) as f:
            data = json.load(f)
        recs += records(data, stat)
        commit = data.get("commit_info") or {}
        meta.append({"datetime": data.get("datetime"), "commit": commit.get("id"), "dirty": commit.get("dirty")})
    return recs, meta


def _rank(key, value):
    order = ORDER[key]
    return order.index(value) if value in order else len(order)


def group(recs: list) -> dict:
    """``{op: {(shape, dtype, pass): {provider: record}}}`` in display order (see ORDER)."""
    ops = {}
    for r in sorted(recs, key=lambda r: tuple(_rank(k, r.get(k)) for k in ORDER)):  # stable: ties keep file order
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


def graph_time(r):
    """Seconds of one replay of the record's CUDA graph (the do_bench median), None without one."""
    ms = (r or {}).get("graph_ms")
    return ms["p50"] / 1e3 if ms else None


def graph_speedup(by_provider: dict, reference, provider):
    """``ratio`` of two providers' CUDA graph replay times in one row, None when either has none."""
    theirs, mine = graph_time(by_provider.get(reference)), graph_time(by_provider.get(provider))
    return None if theirs is None or mine is None else ratio(theirs, mine)


def has_graphs(recs) -> bool:
    """Whether any record was timed, or tried to be, as a CUDA graph: without, the report has no graph columns."""
    return any("graph_ms" in r or "graph_error" in r for r in recs)


def memory_ratio(reference: dict, provider: dict, key: str):
    """How many times less memory ``provider`` needs than ``reference`` for field ``key``; None if unknown."""
    if reference is None or provider is None or reference.get(key) is None or not provider.get(key):
        return None
    return reference[key] / provider[key]


def gbps(r: dict):
    return r["bytes_moved"] / r["time"] / 1e9 if r.get("bytes_moved") else None


def copy_pct(r: dict):
    """Share of the device's copy bandwidth (a tensor of the op's size, same run) that the provider reached, in %."""
    rate = gbps(r)
    return 100.0 * rate / r["copy_gbps"] if rate and r.get("copy_gbps") else None


def columns(rows: dict) -> tuple:
    """(baselines, providers) of one op: baselines first, as the benchmarks listed them, then the package."""
    seen = [p for by_provider in rows.values() for p in by_provider]
    listed = [b for by_provider in rows.values() for r in by_provider.values() for b in r.get("baselines", [])]
    baselines = [b for b in dict.fromkeys(listed) if b in seen]
    baselines += [p for p in dict.fromkeys(seen) if p not in PACKAGE and p not in baselines]
    return baselines, baselines + [p for p in PACKAGE if p in seen]


def references(rows: dict, package, default) -> dict:
    """The baseline each package provider of a group is compared with: the ``reference`` its records
    name when that provider ran, else ``default`` (the group's first baseline)."""
    seen = {p for by_provider in rows.values() for p in by_provider}
    refs = {}
    for p in package:
        named = [r.get("reference") for by_provider in rows.values() for q, r in by_provider.items() if q == p]
        refs[p] = next((n for n in named if n in seen), default)
    return refs


def is_throughput(rows: dict) -> bool:
    """A group timed in samples (a training step) rather than bytes."""
    return any(r.get("images") for by_provider in rows.values() for r in by_provider.values())


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


def _times(x) -> str:
    if x is None:
        return "–"
    if x >= 1000:  # bytes-saved ratios: 16 MiB / 8 B
        return f"{x:.1e}×".replace("e+0", "e").replace("e+", "e")
    return f"{x:.0f}×" if x >= 100 else f"{x:.1f}×" if x >= 10 else f"{x:.2f}×"


def _rate(r: dict) -> str:
    if r.get("images"):
        return f"{r['images'] / r['time']:.4g} img/s"
    rate, pct = gbps(r), copy_pct(r)
    if rate is None:
        return ""
    return f"{rate:.3g} GB/s" + ("" if pct is None else f", {pct:.0f}%")


def _short_error(text: str, width: int = 80) -> str:
    text = text.strip().split("\n", 1)[0]
    text = text if len(text) <= width else text[:width - 1].rstrip() + "…"
    return text.replace("|", "\\|")  # inside a table cell


def _graph(r) -> str:
    if r.get("graph_error"):
        return f"graph ✗ {_short_error(r['graph_error'])}"
    return f"graph {_time(graph_time(r))}" if r.get("graph_ms") else ""


def _cell(r, graphs: bool = False) -> str:
    """Time (rate), and with ``graphs`` the CUDA graph replay's time or why there is none."""
    if r is None:
        return "–"
    rate, graph = _rate(r), _graph(r) if graphs else ""
    cell = f"{_time(r['time'])} ({rate})" if rate else _time(r["time"])
    return f"{cell}, {graph}" if graph else cell


def _graph_times(by_provider: dict, reference, provider) -> str:
    """``graph_speedup`` as a cell; ✗ and the providers whose capture failed when that is why there is none."""
    x = graph_speedup(by_provider, reference, provider)
    if x is not None:
        return _times(x)
    failed = [p for p in (provider, reference) if (by_provider.get(p) or {}).get("graph_error")]
    return f"✗ {', '.join(failed)}" if failed else "–"


def _table(header: list, body: list) -> list:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(row) + " |" for row in body]


def _first(key, values):
    return next((v for v in values if v.get(key) is not None), None) if values else None


def header_lines(recs: list, stat: str, meta=()) -> list:
    lines = []
    for key in ENVIRONMENT:
        values = list(dict.fromkeys(str(r[key]) for r in recs if r.get(key) is not None))
        if values:
            lines.append(f"- {key}: {', '.join(values)}")
    for m in meta:
        if m.get("commit") or m.get("datetime"):
            commit = f"commit {m['commit'][:12]}{' (uncommitted changes)' if m.get('dirty') else ''}" if m.get("commit") else ""
            lines.append(f"- run: {', '.join(x for x in (m.get('datetime'), commit) if x)}")
    lines.append(f"- time: the {stat} of each benchmark's rounds; GB/s = bytes an ideal implementation moves / time;"
                 " % = share of the copy bandwidth (bytes read + written by the fastest of 15+ `dst.copy_(src)` of a"
                 " tensor the size of the op's output, measured in the same run on the same device)")
    if has_graphs(recs):
        lines.append("- graph: median of `triton.testing.do_bench` (L2 flushed between replays) of the case's"
                     " function captured once into a CUDA graph and replayed, every provider alike: GPU time without"
                     " the host's time to issue each call; speed-up (graph) = baseline graph time / provider graph"
                     " time; ✗: capture failed (the provider's cell in the op's table says why)")
    if any(r.get("peak_mem_note") for r in recs):
        lines.append("- peak memory: n/a on CPU (PyTorch keeps no allocator statistics there)")
    return lines


def _shown_pass(rows: dict, shape, dtype):
    """The heaviest pass of a (shape, dtype): fwdbwd for ops, the only one for a training step."""
    passes = [pass_ for (s, d, pass_) in rows if (s, d) == (shape, dtype)]
    return max(passes, key=lambda p: _rank("pass", p))


def headline_rows(recs: list) -> tuple:
    """(op rows, throughput rows) of the headline table, as lists of cells."""
    ops, steps = [], []
    graphs = has_graphs(recs)
    for op, rows in group(recs).items():
        baselines, providers = columns(rows)
        # the GPU path when it ran, else the fallback; for a training step the eager package model
        package = [p for p in ("triton", "torch", "effdrop") if p in providers]
        if not baselines or not package:
            continue
        provider = package[0]
        reference = references(rows, [provider], baselines[0])[provider]
        pairs = list(dict.fromkeys((s, d) for (s, d, _) in rows))
        shown = [pair for pair in HEADLINE if pair in pairs] or pairs[:1]
        for shape, dtype in shown:
            if is_throughput(rows):
                row = rows[(shape, dtype, _shown_pass(rows, shape, dtype))]
                mine, theirs = row.get(provider), row.get(reference)
                steps.append([op, shape, dtype, f"{provider} vs {reference}", _cell(mine),
                              f"**{_times(speedup(row, reference, provider))}**",
                              *([_graph_times(row, reference, provider)] if graphs else []),
                              f"{_bytes((mine or {}).get('peak_mem_bytes'))} vs {_bytes((theirs or {}).get('peak_mem_bytes'))}",
                              _times(memory_ratio(theirs, mine, "peak_mem_bytes"))])
                continue
            by_pass = {pass_: rows.get((shape, dtype, pass_), {}) for pass_ in ORDER["pass"]}
            ups = [_times(speedup(by_pass[pass_], reference, provider)) for pass_ in ORDER["pass"]]
            graph_ups = [_graph_times(by_pass[pass_], reference, provider) for pass_ in ORDER["pass"]] if graphs else []
            last = by_pass["fwdbwd"].get(provider) or rows[(shape, dtype, _shown_pass(rows, shape, dtype))].get(provider)
            saved_mine = _first("saved_bytes", [r.get(provider) for r in by_pass.values() if r.get(provider)])
            saved_theirs = _first("saved_bytes", [r.get(reference) for r in by_pass.values() if r.get(reference)])
            saved = "–" if saved_mine is None or saved_theirs is None else \
                f"{_bytes(saved_mine['saved_bytes'])} vs {_bytes(saved_theirs['saved_bytes'])}"
            ops.append([op, shape, dtype, provider, f"`{reference}`", *ups[:2], f"**{ups[2]}**", *graph_ups,
                        _rate(last) if last else "–", saved])
    return ops, steps


def e2e_targets(recs: list) -> list:
    """Table lines of the CUDA-graph training-step targets per (model, dtype) that ran the package's
    ``reduce-overhead`` provider: each ratio (baseline / package; a peak-memory ratio of 1.33 is 25 % less
    memory), its target and whether it was met; and the peak memory of every e2e model's providers
    (WRN-28-10's eager steps among them)."""
    rows = group([r for r in recs if r.get("op") == "e2e"]).get("e2e", {})
    body = []
    for (shape, dtype, _), by_provider in rows.items():
        if "effdrop_reduce_overhead" not in by_provider:
            continue
        for what, provider, baseline, key, target in E2E_TARGETS:
            mine, theirs = by_provider.get(provider), by_provider.get(baseline)
            value = None if mine is None or theirs is None or not mine.get(key) or theirs.get(key) is None \
                else theirs[key] / mine[key]
            verdict = "–" if value is None else ("met" if value >= target else "**missed**")
            body.append([shape, dtype, what, f"{provider} vs {baseline}", _times(value), f">= {_times(target)}",
                         verdict])
    peaks = [[shape, dtype, *(f"{p}: {_bytes(r.get('peak_mem_bytes'))}" for p, r in by_provider.items()
                             if r.get("peak_mem_bytes") is not None)]
             for (shape, dtype, _), by_provider in rows.items()]
    peaks = [row for row in peaks if len(row) > 2]
    header = ["model", "dtype", "target", "provider vs baseline", "ratio", "target", "verdict"]
    lines = _table(header, body) if body else []
    if peaks:
        width = max(len(row) for row in peaks)
        lines += ([""] if lines else []) + _table(["model", "dtype", *["peak memory"] * (width - 2)],
                                                  [row + [""] * (width - len(row)) for row in peaks])
    return lines


def headline(recs: list) -> list:
    ops, steps = headline_rows(recs)
    graphs = has_graphs(recs)
    lines = []
    if ops:
        lines += _table(["op", "shape", "dtype", "provider", "baseline", "fwd", "bwd", "fwd+bwd",
                         *(["fwd (graph)", "bwd (graph)", "fwd+bwd (graph)"] if graphs else []),
                         "fwd+bwd GB/s, % of copy", "saved for backward (provider vs baseline)"], ops)
    if steps:
        lines += [""] if lines else []
        lines += _table(["benchmark", "model", "dtype", "provider vs baseline", "step (img/s)", "speed-up",
                         *(["speed-up (graph)"] if graphs else []), "peak memory", "peak ratio"], steps)
    return lines


def op_section(rows: dict, stat: str) -> list:
    """Time table and memory table of one op (or training-step group)."""
    baselines, providers = columns(rows)
    reference = baselines[0] if baselines else None
    package = [p for p in PACKAGE if p in providers] if reference else []
    refs = references(rows, package, reference)
    throughput = is_throughput(rows)
    graphs = has_graphs(r for by_provider in rows.values() for r in by_provider.values())
    lines = []
    if reference:
        rate = "images/s" if throughput else "GB/s, % of copy bandwidth"
        others = "".join(f"; {p} against {refs[p]}" for p in package if refs[p] != reference)
        lines += [f"{stat.capitalize()} time ({rate}) per provider{', then its CUDA graph replay time' if graphs else ''};"
                  f" speed-up = {reference} time / provider time (> 1: this package is faster){others}"
                  f"{'; speed-up (graph): the same ratio of the graph replay times' if graphs else ''}.", ""]
    body = [[shape, dtype, pass_, *(_cell(by_provider.get(p), graphs) for p in providers),
             *(_times(speedup(by_provider, refs[p], p)) for p in package),
             *(_graph_times(by_provider, refs[p], p) for p in package if graphs)]
            for (shape, dtype, pass_), by_provider in rows.items()]
    lines += _table(["shape", "dtype", "pass", *providers, *(f"speed-up {p}" for p in package),
                     *(f"speed-up (graph) {p}" for p in package if graphs)], body)

    # memory: one row per (shape, dtype); saved bytes are the forward's (the same in every pass),
    # peak is that of the heaviest pass (fwd+bwd; the step), above the inputs for an op
    peak_key = "peak_mem_bytes" if throughput else "peak_over_inputs_bytes"
    has_peak = any(r.get(peak_key) is not None for by_provider in rows.values() for r in by_provider.values())
    has_saved = not throughput or any(r.get("saved_bytes") is not None for by_provider in rows.values()
                                      for r in by_provider.values())
    if not has_saved and not has_peak:
        return lines
    memory = []
    for shape, dtype in dict.fromkeys((s, d) for (s, d, _) in rows):
        heaviest = rows[(shape, dtype, _shown_pass(rows, shape, dtype))]
        same = [by_provider for (s, d, _), by_provider in rows.items() if (s, d) == (shape, dtype)]
        saved = {p: _first("saved_bytes", [r[p] for r in same if p in r]) for p in providers}
        cells = []
        for p in providers:
            parts = [_bytes((saved[p] or {}).get("saved_bytes"))] if has_saved else []
            if has_peak:
                parts.append(_bytes((heaviest.get(p) or {}).get(peak_key)))
            cells.append(" / ".join(parts))
        ratios = [_times(memory_ratio(saved.get(refs[p]), saved[p], "saved_bytes")) for p in package] if has_saved else []
        if has_peak:
            ratios += [_times(memory_ratio(heaviest.get(refs[p]), heaviest.get(p), peak_key)) for p in package]
        memory.append([shape, dtype, *cells, *ratios])
    names = ([f"saved {p}" for p in package] if has_saved else []) + ([f"peak {p}" for p in package] if has_peak else [])
    if throughput:
        title = (("Saved for backward by one forward" + (" / peak" if has_peak else "") if has_saved else "Peak")
                 + (" memory allocated during one step" if has_peak else "")
                 + "; ratios = baseline / provider (> 1: this package needs less):")
    else:
        title = ("Saved for backward by one forward" + (" / peak allocated during one fwd+bwd above its inputs"
                                                       if has_peak else "")
                 + "; ratios = baseline / provider (> 1: this package keeps less):")
    lines += ["", title, "", *_table(["shape", "dtype", *providers, *names], memory)]
    return lines


def to_markdown(recs: list, stat: str = "median", meta=(), chart=None) -> str:
    """The report. ``chart``: the image path to link (relative to the markdown), or a note why there is none."""
    lines = ["# effdrop_triton benchmarks", "", *header_lines(recs, stat, meta)]
    top = headline(recs)
    if top:
        graphs = "; (graph): the same ratio of the CUDA graph replay times, ✗: capture failed" if has_graphs(recs) else ""
        lines += ["", "## Headline", "",
                  f"Speed-up = baseline time / provider time (> 1: this package is faster), same run, same device{graphs}.",
                  "", *top]
    targets = e2e_targets(recs)
    if targets:
        lines += ["", "## Training-step targets", "",
                  "Ratios = baseline / package (time: > 1 is faster; peak memory: > 1 is less), same run.", "",
                  *targets]
    if chart:
        lines += ["", f"![speed-ups and memory ratios]({chart})" if chart.endswith(".png") else chart]
    for op, rows in group(recs).items():
        lines += ["", f"## {op}", "", *op_section(rows, stat)]
    return "\n".join(lines) + "\n"


def _series(provider: str) -> str:
    return f"{provider} backend" if provider in ("torch", "triton") else provider


def plot(recs: list, path: str) -> bool:
    """Bars of the package's forward+backward (or training step) speed-ups over each op's first baseline, and of
    its memory ratios (saved for backward; peak on CUDA); False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    speed = {p: {} for p in PACKAGE}
    memory = {}
    for op, rows in group(recs).items():
        baselines, providers = columns(rows)
        if not baselines:
            continue
        refs = references(rows, PACKAGE, baselines[0])
        throughput = is_throughput(rows)
        for shape, dtype in dict.fromkeys((s, d) for (s, d, _) in rows):
            row = rows[(shape, dtype, _shown_pass(rows, shape, dtype))]
            label = f"{op}\n{shape} {dtype}"
            for p in PACKAGE:
                if p in row:
                    reference = refs[p]
                    speed[p][label] = speedup(row, reference, p)
                    for key, name in (("saved_bytes", "saved for backward"), ("peak_mem_bytes" if throughput else
                                                                             "peak_over_inputs_bytes", "peak")):
                        x = memory_ratio(row.get(reference), row[p], key)
                        if x is not None:
                            memory.setdefault(f"{_series(p)}: {name}", {})[label] = x
    labels = list(dict.fromkeys(label for bars in speed.values() for label in bars))
    if not labels:
        return False
    fig, axes = plt.subplots(2, 1, figsize=(max(7.0, 0.8 * len(labels) + 2), 8.5))
    speed = {_series(p): bars for p, bars in speed.items() if bars}
    for ax, series, title in ((axes[0], speed, "speed-up (fwd+bwd or step)"),
                              (axes[1], memory, "memory ratio (baseline / provider)")):
        width = 0.8 / max(1, len(series))
        for i, (name, bars) in enumerate(series.items()):
            xs = [x + (i - (len(series) - 1) / 2) * width for x, label in enumerate(labels) if label in bars]
            ys = [bars[label] for label in labels if label in bars]
            ax.bar_label(ax.bar(xs, ys, width, label=name), labels=[_times(y) for y in ys], fontsize=6)
        ax.axhline(1.0, color="black", linewidth=0.8)
        values = [v for bars in series.values() for v in bars.values() if v]
        if values and (max(values) / min(values) > 20):
            ax.set_yscale("log")  # bytes-saved ratios span orders of magnitude
        ax.set_xticks(range(len(labels)), labels, fontsize=7, rotation=30, ha="right", rotation_mode="anchor")
        ax.set_ylabel(title)
        ax.grid(axis="y", alpha=0.3)
        if series:
            ax.legend(fontsize=8)
    devices = ", ".join(dict.fromkeys(str(r.get("device")) for r in recs))
    axes[0].set_title(f"effdrop_triton (this package's backends) vs each op's first baseline, same run: {devices}",
                      fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", help="pytest-benchmark JSON (--benchmark-json); several are merged")
    parser.add_argument("--out", help="write the markdown here instead of stdout")
    parser.add_argument("--stat", default="median", choices=("median", "mean", "min"),
                        help="time statistic (default median: a few preempted rounds move the mean on a shared machine)")
    parser.add_argument("--plot", help="bar chart path (default: --out with .png; needs matplotlib)")
    parser.add_argument("--no-plot", action="store_true", help="draw no chart")
    parser.add_argument("--headline", action="store_true", help="print only the headline table to stdout")
    args = parser.parse_args(argv)
    recs, meta = load(args.results, args.stat)
    if not recs:
        sys.exit(f"{', '.join(args.results)}: no timed effdrop_triton benchmarks "
                 "(written with --benchmark-json, and not with --benchmark-disable?)")
    if args.headline:
        targets = e2e_targets(recs)
        extra = ["", "Training-step targets (baseline / package):", *targets] if targets else []
        print("\n".join(headline(recs) + extra))
        return
    chart_path = None if args.no_plot else args.plot or (os.path.splitext(args.out)[0] + ".png" if args.out else None)
    chart = None
    if chart_path:
        if plot(recs, chart_path):
            where = os.path.dirname(os.path.abspath(args.out)) if args.out else os.getcwd()
            chart = os.path.relpath(os.path.abspath(chart_path), where)
            print(f"chart written: {chart_path}", file=sys.stderr)
        else:
            chart = "Chart skipped: matplotlib is not installed (`pip install matplotlib`, or the `bench` extra)."
            print(chart, file=sys.stderr)
    text = to_markdown(recs, args.stat, meta, chart)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    else:
        print(text, end="")


if __name__ == "__main__":
    main()
