"""``wnkernels bench --plot PATH``: the results as one chart.

Four panels side by side, one row of bars per case (the suite's order, top to bottom),
one bar per contender: % of the same-size roofline (forward, backward) and speed-up
over PyTorch's fused kernels (forward, backward), both on log scales with the 100% / 1x
line drawn. matplotlib is an optional extra (``pip install 'wnkernels[plot]'``); only
its object API is used (no pyplot, no global backend change).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

from .cases import DIRECTIONS
from .report import _plural

__all__ = ["require_matplotlib", "plot_results", "SERIES"]

# (legend label, colour, the contenders that stand for it, first present wins).
# "ours" is each case's headline contender: wnkernels on torch tensors (the grouped
# call for a weight set); wnkernels on NumPy arrays is drawn beside it.
SERIES: Tuple[Tuple[str, str, Tuple[str, ...]], ...] = (
    ("wnkernels (torch tensors)", "#1f5fbf", ("ours",)),
    ("wnkernels (NumPy arrays)", "#8fb3e8", ("wnkernels",)),
    ("PyTorch", "#e8833a", ("torch", "torch loop")),
    ("torch.compile", "#8e44ad", ("torch.compile",)),
    ("jax.jit", "#2e9e5b", ("jax.jit",)),
    ("NumPy", "#9a9a9a", ("numpy",)),
)


def require_matplotlib():
    """The ``matplotlib.figure`` module, or a RuntimeError saying how to install it."""
    try:
        import matplotlib
        from matplotlib import figure
    except ImportError:
        raise RuntimeError("--plot needs matplotlib, which is not installed: "
                           "pip install 'wnkernels[plot]' (or pip install matplotlib)") from None
    major, minor = (int(x) for x in matplotlib.__version__.split(".")[:2])
    if (major, minor) < (3, 7):
        raise RuntimeError(f"--plot needs matplotlib >= 3.7, found {matplotlib.__version__}: "
                           "pip install -U 'wnkernels[plot]'")
    return figure


def _series_time(dr: Dict[str, Any], names: Sequence[str]) -> Optional[float]:
    res = dr["results"]
    for n in names:
        key = dr["ours"] if n == "ours" else n
        if key == dr["ours"] and n != "ours":
            continue  # drawn as "ours" already (no torch: ours is the NumPy-array call)
        if key in res:
            return res[key]["time_s"]
    return None


def _label(cr: Dict[str, Any]) -> str:
    """A case's name on two lines when long: the shape and dtype, then the rest (the
    model, dim, a weight set's count), and its status when not measured."""
    name = cr["case"]
    head, _, rest = name.partition(" ")
    dtype, _, rest = rest.partition(" ")
    if "shape" in cr and rest:
        name = f"{head} {dtype}\n{rest}"
    elif "shape" not in cr and len(name) > 22 and "(" in name:
        name = name.replace(" (", "\n(", 1)
    return name + ("" if cr["status"] == "ok" else f"\n({cr['status']})")


def _table(results: Dict[str, Any]):
    """Case labels and, per series, per direction, (% of roofline, speed-up vs torch)
    per case (None where not measured)."""
    cases = results["cases"]
    labels = [_label(cr) for cr in cases]
    data: Dict[str, Dict[str, List[Tuple[Optional[float], Optional[float]]]]] = {}
    for label, _, names in SERIES:
        per_dir = {d: [] for d in DIRECTIONS}
        for cr in cases:
            for d in DIRECTIONS:
                pair: Tuple[Optional[float], Optional[float]] = (None, None)
                if cr["status"] == "ok":
                    dr = cr[d]
                    t = _series_time(dr, names)
                    torch_t = _series_time(dr, ("torch", "torch loop"))
                    if t is not None:
                        roof = dr["results"]["roofline"]["time_s"]
                        pair = (100.0 * roof / t, torch_t / t if torch_t else None)
                per_dir[d].append(pair)
        if any(p[0] is not None for d in DIRECTIONS for p in per_dir[d]):
            data[label] = per_dir
    ours = {cr[d]["ours"] for cr in cases if cr["status"] == "ok" for d in DIRECTIONS}
    if ours and not any("torch" in o for o in ours):  # --no-torch: ours is on NumPy arrays
        data = {("wnkernels (NumPy arrays)" if k == SERIES[0][0] else k): v
                for k, v in data.items()}
    return labels, data


def _title(results: Dict[str, Any]) -> str:
    m = results.get("machine", {})
    dev = results.get("device", "cpu")
    where = (m.get("gpu", {}).get("name") if dev == "cuda" else m.get("cpu_model")) or dev
    bits = [f"wnkernels bench ({dev}): {where}"]
    if dev == "cpu" and m.get("threads"):
        bits.append(_plural(m["threads"], "thread"))
    if m.get("date"):
        bits.append(m["date"][:10])
    title = ", ".join(bits)
    s = results.get("summary", {})
    vt = s.get("vs_torch")
    if vt and vt.get("geomean"):
        title += ("\nwnkernels on torch tensors vs PyTorch, geometric mean: " + ", ".join(
            f"{d} {vt[f'geomean_{d}']:.2f}x" for d in DIRECTIONS if vt.get(f"geomean_{d}")))
        peers = [f"vs {name} {sp['geomean']:.2f}x" for name, sp in s.get("peers", {}).items()
                 if sp.get("geomean")]
        if peers:
            title += "; both directions " + ", ".join(peers)
    return title


def plot_results(results: Dict[str, Any], path: str) -> None:
    """Draw `run_suite`'s results to ``path`` (the format from its extension)."""
    figure = require_matplotlib()
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
    labels, data = _table(results)
    n = len(labels)
    series = list(data)
    colours = {label: c for label, c, _ in SERIES}
    if series and series[0] != SERIES[0][0]:  # ours relabelled (--no-torch)
        colours[series[0]] = SERIES[0][1]
    panels = [(d, 0) for d in DIRECTIONS] + [(d, 1) for d in DIRECTIONS]
    has_speedup = any(p[1] is not None for s in series for d in DIRECTIONS for p in data[s][d])
    if not has_speedup:
        panels = panels[:2]
    height = 1.9 + n * (0.14 * max(len(series), 3) + 0.16)
    fig = figure.Figure(figsize=(4.3 * len(panels) + 2.8, height), layout="constrained")
    axes = fig.subplots(1, len(panels), sharey=True)
    bar_h = 0.8 / max(len(series), 1)
    for ax, (d, metric) in zip(axes, panels):
        drawn = [s for s in series if not (metric == 1 and s == "PyTorch")]
        for k, s in enumerate(drawn):
            vals = [p[metric] for p in data[s][d]]
            ys = [i - 0.4 + bar_h * (k + 0.5) for i in range(n)]
            pts = [(y, v) for y, v in zip(ys, vals) if v is not None and v > 0]
            if not pts:
                continue
            bars = ax.barh([y for y, _ in pts], [v for _, v in pts], height=bar_h * 0.92,
                           color=colours[s], label=s, left=1e-9)
            if k == 0:  # the headline bar carries its figure
                ax.bar_label(bars, labels=[(f"{v:.0f}%" if metric == 0 else f"{v:.2f}x")
                                           for _, v in pts], padding=2, fontsize=7)
        ref = 100.0 if metric == 0 else 1.0
        ax.axvline(ref, color="black", lw=1.0, ls="--", zorder=0)
        ax.set_xscale("log")
        allv = [p[metric] for s in drawn for p in data[s][d] if p[metric]]
        lo, hi = min(allv + [ref]), max(allv + [ref])
        ax.set_xlim(lo / 1.6, hi * 2.2)
        # 1-2-5 ticks over a few decades; only powers of ten over a wide range.
        subs = (1.0, 2.0, 5.0) if hi / lo < 1e3 else (1.0,)
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=subs))
        ax.xaxis.set_major_formatter(FuncFormatter(
            lambda x, _, m=metric: (f"{x:g}" if x < 1e5 else f"{x:.0e}") + "%x"[m]))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.grid(axis="x", which="major", color="#dddddd", lw=0.6)
        ax.set_axisbelow(True)
        what = "% of same-size roofline" if metric == 0 else "speed-up vs PyTorch"
        ax.set_title(f"{d}: {what}", fontsize=10)
        ax.set_xlabel("higher is better", fontsize=8)
        ax.tick_params(axis="x", labelsize=8)
        for i in range(1, n):
            ax.axhline(i - 0.5, color="#eeeeee", lw=0.6, zorder=0)
    axes[0].set_yticks(range(n), labels, fontsize=9)
    axes[0].set_ylim(n - 0.5, -0.5)
    handles, names = [], []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in names:
                handles.append(h)
                names.append(lab)
    order = [s for s in series if s in names]
    handles = [handles[names.index(s)] for s in order]
    fig.legend(handles, order, loc="outside lower center", ncol=len(order), fontsize=9,
               frameon=False)
    fig.suptitle(_title(results), fontsize=11)
    fig.savefig(path, dpi=110)
