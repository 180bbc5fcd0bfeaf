"""Results: per-direction figures, the summary, the printed tables, machine facts."""

from __future__ import annotations

import datetime
import math
import os
import platform
import sys
from typing import Any, Dict, List, Optional, Sequence

from .cases import DIRECTIONS
from .peers import PEERS

__all__ = ["direction_result", "summarize", "format_case", "format_summary",
           "format_markdown", "machine_info", "Progress", "OURS"]

# wnkernels' contender of a case, by preference: on torch tensors (what a framework
# sees), the grouped call, NumPy arrays.
OURS = ("wnkernels many torch", "wnkernels torch", "wnkernels many", "wnkernels")


def _ours(timings) -> str:
    return next(n for n in OURS if n in timings)


def direction_result(case, direction: str, timings: Dict[str, Dict[str, Any]]):
    """GB/s and % of the roofline of every contender; the speed-ups of wnkernels'
    headline contender (like with like: torch tensors against PyTorch and the compiled
    peers; the grouped call against PyTorch's loop and wnkernels' own loop), and of the
    NumPy-array call against PyTorch and NumPy."""
    nbytes = case.bytes_moved(direction)
    roof = timings["roofline"]["time_s"]
    for t in timings.values():
        t["gbps"] = nbytes / t["time_s"] / 1e9
        t["pct_roofline"] = 100.0 * roof / t["time_s"]
    res: Dict[str, Any] = {"bytes_moved": nbytes, "results": timings, "ours": _ours(timings)}
    ours = timings[res["ours"]]["time_s"]
    for peer, key in (("torch", "speedup_vs_torch"), ("torch loop", "speedup_vs_torch"),
                      ("wnkernels loop", "speedup_vs_own_loop")):
        if peer in timings:
            res[key] = timings[peer]["time_s"] / ours
    # the speed-up over PyTorch that a call running at exactly the roofline would show:
    # what the headline ratio can reach without beating a same-size copy / triad
    for peer in ("torch", "torch loop"):
        if peer in timings:
            res["roofline_speedup_vs_torch"] = timings[peer]["time_s"] / roof
    peers = {p: timings[p]["time_s"] / ours for p in PEERS if p in timings}
    if peers:
        res["speedup_vs_peers"] = peers
    if "wnkernels" in timings:
        wn = timings["wnkernels"]["time_s"]
        if "torch" in timings:
            res["numpy_speedup_vs_torch"] = timings["torch"]["time_s"] / wn
        if "numpy" in timings:
            res["speedup_vs_numpy"] = timings["numpy"]["time_s"] / wn
    return res


def _geomean(xs: Sequence[float]) -> Optional[float]:
    xs = [x for x in xs if x and x > 0]
    return math.exp(sum(map(math.log, xs)) / len(xs)) if xs else None


def _spread(items: List[tuple]) -> Dict[str, Any]:
    """Geometric mean per direction and over both, and the worst, of ``(speed-up, case,
    direction)`` items."""
    out: Dict[str, Any] = {"geomean": _geomean([s for s, _, _ in items]),
                           "cases": len({c for _, c, _ in items})}
    out.update({f"geomean_{d}": _geomean([s for s, _, dd in items if dd == d])
                for d in DIRECTIONS})
    if items:
        s, c, d = min(items)
        out["worst"] = {"case": c, "direction": d, "speedup": s}
        out["below_1x"] = sum(s < 1.0 for s, _, _ in items)
        out["measured"] = len(items)
    return out


def summarize(case_results: List[Dict[str, Any]]) -> Dict[str, Any]:
    vs_torch, np_vs_torch, vs_numpy, roof_large, groups = [], [], [], [], []
    at_roof = []
    vs_peer: Dict[str, List[tuple]] = {p: [] for p in PEERS}
    vs_best = []
    peer_status: Dict[str, Dict[str, List[str]]] = {}
    for cr in case_results:
        for p, st in cr.get("peers", {}).items():
            peer_status.setdefault(p, {}).setdefault(st["status"], []).append(cr["case"])
        if cr["status"] != "ok":
            continue
        for d in DIRECTIONS:
            dr = cr[d]
            if "speedup_vs_torch" in dr:
                vs_torch.append((dr["speedup_vs_torch"], cr["case"], d))
            if "roofline_speedup_vs_torch" in dr:
                at_roof.append((dr["roofline_speedup_vs_torch"], cr["case"], d))
            for p, sp in dr.get("speedup_vs_peers", {}).items():
                vs_peer[p].append((sp, cr["case"], d))
            rivals = [dr[k] for k in ("speedup_vs_torch",) if k in dr]
            rivals += list(dr.get("speedup_vs_peers", {}).values())
            if rivals:
                vs_best.append((min(rivals), cr["case"], d))
            if "numpy_speedup_vs_torch" in dr:
                np_vs_torch.append(dr["numpy_speedup_vs_torch"])
            if "speedup_vs_numpy" in dr:
                vs_numpy.append(dr["speedup_vs_numpy"])
            if "speedup_vs_own_loop" in dr:
                groups.append((cr["case"], d, dr.get("speedup_vs_torch"),
                               dr["speedup_vs_own_loop"], dr.get("roofline_speedup_vs_torch")))
            if cr.get("large"):
                roof_large.append((dr["results"][dr["ours"]]["pct_roofline"], cr["case"], d))
    torch_spread = _spread(vs_torch)
    out: Dict[str, Any] = {
        "cases_ok": sum(cr["status"] == "ok" for cr in case_results),
        "cases_failed": [cr["case"] for cr in case_results if cr["status"] == "check failed"],
        "cases_error": [cr["case"] for cr in case_results if cr["status"] == "error"],
        "cases_skipped": [cr["case"] for cr in case_results if cr["status"] == "skipped"],
        # the headline: wnkernels on torch tensors (grouped calls: the grouped call)
        # against PyTorch's fused kernels (grouped: PyTorch's per-tensor loop)
        "geomean_speedup_vs_torch": torch_spread["geomean"],
        "geomean_speedup_vs_torch_by_direction": {d: torch_spread[f"geomean_{d}"]
                                                  for d in DIRECTIONS},
        "geomean_numpy_speedup_vs_torch": _geomean(np_vs_torch),
        "geomean_speedup_vs_numpy": _geomean(vs_numpy),
        "groups": [{"case": c, "direction": d, "speedup_vs_torch_loop": t,
                    "speedup_vs_own_loop": o, "roofline_speedup_vs_torch_loop": r}
                   for c, d, t, o, r in groups],
    }
    if vs_torch:
        out["worst_vs_torch"] = torch_spread["worst"]
        out["vs_torch"] = torch_spread
    if at_roof:
        # every call at exactly its same-size roofline: the headline's ceiling
        # short of beating a plain copy / triad
        out["vs_torch_at_roofline"] = _spread(at_roof)
    if peer_status:
        out["peers"] = {p: dict(_spread(vs_peer[p]), status=peer_status.get(p, {}))
                        for p in PEERS if p in peer_status}
        if vs_best:
            out["vs_best_rival"] = _spread(vs_best)
    if roof_large:
        p, c, d = min(roof_large)
        out["lowest_pct_roofline_large"] = {"case": c, "direction": d, "pct_roofline": p}
    return out


# ------------------------------------------------------------------------ output

def _fmt_time(s: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if s >= scale:
            return f"{s / scale:7.3f} {unit}"
    return f"{s / 1e-9:7.1f} ns"


def _fmt_bytes(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


ROOFLINE_LABEL = {("cpu", "forward"): "roofline (copy)", ("cpu", "backward"): "roofline (triad)",
                  ("cuda", "forward"): "roofline (copy_)", ("cuda", "backward"): "roofline (triad)"}


# Rows whose "wn x" column shows how much faster wnkernels' headline contender is.
RIVALS = ("torch", "torch loop", "wnkernels loop") + PEERS + ("numpy",)


def _fmt_x(x: Optional[float]) -> str:
    return "" if x is None else f"{x:8.2f}x"


def format_case(cr: Dict[str, Any], device: str) -> str:
    if "shape" in cr:
        head = (f"== {cr['case']}  ({'x'.join(map(str, cr['shape']))} {cr['dtype']}, "
                f"dim={cr['dim']}, {cr['elements']:,} elements, {_fmt_bytes(cr['bytes'])}) ==")
    else:
        head = (f"== {cr['case']}  ({cr['weights']} weights, {cr['dtype']}, dim={cr['dim']}, "
                f"{cr['elements']:,} elements, {_fmt_bytes(cr['bytes'])}) ==")
    if cr["status"] != "ok":
        return f"{head}\n  {cr['status'].upper()}: {cr['message']}"
    lines = [head]
    timer = cr.get("timer")
    if timer:
        lines[0] += f"  [{timer}]"
    # vs torch: PyTorch's time / this row's (above 1: faster than PyTorch);
    # wn speedup: this row's time / wnkernels' headline contender's (marked *; above 1:
    # wnkernels is faster).
    lines.append(f"  {'direction':<9} {'implementation':<21} {'time/call':>10} {'GB/s':>8} "
                 f"{'% roof':>7} {'vs torch':>9} {'wn speedup':>10}")
    for d in DIRECTIONS:
        dr = cr[d]
        res = dr["results"]
        torch_t = (res.get("torch") or res.get("torch loop") or {}).get("time_s")
        ours_t = res[dr["ours"]]["time_s"]
        first = True
        for name, t in res.items():
            label = ROOFLINE_LABEL[(device, d)] if name == "roofline" else name
            if name == dr["ours"]:
                label += " *"
            vt = wx = None
            if torch_t and name not in ("roofline", "torch", "torch loop"):
                vt = torch_t / t["time_s"]
            if name in RIVALS:
                wx = t["time_s"] / ours_t
            lines.append(f"  {d if first else '':<9} {label:<21} {_fmt_time(t['time_s']):>10} "
                         f"{t['gbps']:8.1f} {t['pct_roofline']:6.1f}% {_fmt_x(vt):>9} "
                         f"{_fmt_x(wx):>10}")
            first = False
    fc = cr.get("first_call_s")
    if fc and device == "cuda":
        lines.append(f"  first call (includes compile): forward {fc['forward']:.3f} s, "
                     f"backward {fc['backward']:.3f} s")
    for name, st in cr.get("peers", {}).items():
        if st["status"] == "ok":
            fc = st["first_call_s"]
            lines.append(f"  {name}: compiled (first call, not timed) forward "
                         f"{fc['forward']:.2f} s, backward {fc['backward']:.2f} s")
        else:
            lines.append(f"  {name}: {st['status']}: {st['message']}")
    return "\n".join(lines)


def _fmt_spread(sp: Dict[str, Any], worst: bool = True) -> str:
    """'forward 2.10x, backward 1.50x, both 1.78x; worst <case> <dir> 0.80x'."""
    parts = [f"{d} {sp[f'geomean_{d}']:.2f}x" for d in DIRECTIONS
             if sp.get(f"geomean_{d}") is not None]
    text = ", ".join(parts) + f", both {sp['geomean']:.2f}x"
    w = sp.get("worst") if worst else None
    if w:
        text += (f"; worst {w['case']} {w['direction']} {w['speedup']:.2f}x"
                 f" ({sp['below_1x']} of {sp['measured']} below 1x)")
    return text


def _plural(n: int, what: str) -> str:
    return f"{n} {what}" + ("" if n == 1 else "s")


def _cases(n: int) -> str:
    return _plural(n, "case")


def format_summary(summary: Dict[str, Any], threads: Optional[int]) -> str:
    lines = []
    gt = summary.get("geomean_speedup_vs_torch")
    head = "Summary" + (f" ({_plural(threads, 'thread')})" if threads else "") + ": "
    if not summary["cases_ok"]:
        lines.append(head + "no case was measured")
    elif gt is not None:
        lines.append(head + "wnkernels on torch tensors vs PyTorch (geometric mean over "
                     f"{_cases(summary['vs_torch']['cases'])}): "
                     + _fmt_spread(summary["vs_torch"]))
    else:
        lines.append(head + "no torch comparison (torch not installed or --no-torch)")
    ar = summary.get("vs_torch_at_roofline")
    if gt is not None and ar and ar.get("geomean") is not None:
        lines.append("  at exactly 100% of the same-size roofline on every case, the "
                     "geometric mean vs PyTorch would be " + _fmt_spread(ar, worst=False)
                     + " (PyTorch's time over the roofline's)")
    extra = []
    gnt = summary.get("geomean_numpy_speedup_vs_torch")
    gn = summary.get("geomean_speedup_vs_numpy")
    np_parts = ([f"vs PyTorch {gnt:.2f}x"] if gnt is not None else []) + (
        [f"vs NumPy {gn:.1f}x"] if gn is not None else [])
    if np_parts:
        extra.append("wnkernels on NumPy arrays " + ", ".join(np_parts))
    lo = summary.get("lowest_pct_roofline_large")
    if lo:
        extra.append(f"lowest % of roofline on a large case: {lo['case']} {lo['direction']} "
                     f"{lo['pct_roofline']:.1f}%")
    if extra:
        lines.append("  " + "; ".join(extra))
    for name, sp in summary.get("peers", {}).items():
        if sp.get("geomean") is not None:
            lines.append(f"  vs {name} ({_cases(sp['cases'])}): " + _fmt_spread(sp))
        notes = [f"{st} on {_cases(len(cs))}"
                 for st, cs in sp["status"].items() if st != "ok"]
        if notes:
            lines.append(f"  {name}: " + ", ".join(notes))
    best = summary.get("vs_best_rival")
    if best and best.get("geomean") is not None:
        lines.append("  vs the fastest of PyTorch and the compiled peers, per case: "
                     + _fmt_spread(best))
    for g in summary.get("groups", []):
        t, r = g["speedup_vs_torch_loop"], g.get("roofline_speedup_vs_torch_loop")
        lines.append(f"  grouped {g['case']} {g['direction']}: "
                     + (f"{t:.2f}x torch's loop, " if t else "")
                     + f"{g['speedup_vs_own_loop']:.2f}x wnkernels' own loop"
                     + (f" (at the roofline: {r:.2f}x torch's loop)" if r else ""))
    if summary.get("warning"):
        lines.append(summary["warning"])
    if summary["cases_failed"]:
        lines.append(f"CHECK FAILED (not timed): {', '.join(summary['cases_failed'])}")
    if summary["cases_error"]:
        lines.append(f"ERROR (not timed): {', '.join(summary['cases_error'])}")
    if summary["cases_skipped"]:
        lines.append(f"skipped: {', '.join(summary['cases_skipped'])}")
    return "\n".join(lines)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(mod: str) -> Optional[str]:
    try:
        from importlib.metadata import version
        return version(mod)
    except Exception:
        return None


def machine_info(device: str, threads: Optional[int]) -> Dict[str, Any]:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    info: Dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "platform": platform.platform(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "threads": threads,
        "python": platform.python_version(),
        "versions": {m: _version(m) for m in
                     ("wnkernels", "numpy", "torch", "ml_dtypes", "numba-cuda", "numba",
                      "jax", "jaxlib")},
    }
    wn_mod = sys.modules.get("wnkernels")
    if wn_mod is not None and getattr(wn_mod, "__version__", None):
        info["versions"]["wnkernels"] = wn_mod.__version__
    try:
        from ..cpu import _kernels
        info["cpu_isa"] = _kernels.isa()
    except ImportError:
        pass
    if device == "cuda":
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            p = torch.cuda.get_device_properties(torch.cuda.current_device())
            info["gpu"] = {"name": p.name, "memory_bytes": p.total_memory,
                           "multiprocessors": p.multi_processor_count,
                           "capability": f"{p.major}.{p.minor}",
                           "torch_cuda": torch.version.cuda}
    return info


class Progress:
    """tqdm when installed, else a one-line stderr counter; or nothing."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.done, self.bar = total, 0, None
        self.enabled = enabled
        if enabled:
            try:
                from tqdm import tqdm
                self.bar = tqdm(total=total, unit="round", file=sys.stderr, leave=False,
                                dynamic_ncols=True)
            except ImportError:
                self.bar = None
        self.desc = ""

    def describe(self, text: str) -> None:
        self.desc = text
        if self.bar is not None:
            self.bar.set_description(text, refresh=True)
        elif self.enabled:
            self._counter()

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.enabled:
            self._counter()

    def _counter(self):
        sys.stderr.write(f"\r[{self.done}/{self.total}] {self.desc}\033[K")
        sys.stderr.flush()

    def write(self, text: str, file=None) -> None:
        file = file or sys.stdout
        if self.bar is not None:
            self.bar.write(text, file=file)
        else:
            if self.enabled:
                sys.stderr.write("\r\033[K")
                sys.stderr.flush()
            print(text, file=file, flush=True)
            if self.enabled and self.done < self.total:
                self._counter()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()


# ------------------------------------------------------------------------ markdown

_MD_DIR = {"forward": "fwd", "backward": "bwd"}


def _md_time(s: float) -> str:
    return _fmt_time(s).strip().replace("us", "µs")


def _md_x(x: Optional[float]) -> str:
    return "" if x is None else f"{x:.2f}×"


def format_markdown(results: Dict[str, Any]) -> str:
    """The run as GitHub-flavoured Markdown (the README's Results section): a line
    on the machine, one table of the single cases -- per direction wnkernels' time
    on torch tensors, % of the roofline and its speed-up against PyTorch and each
    measured peer -- and one of the weight sets' grouped calls against PyTorch's
    and wnkernels' own per-tensor loops."""
    m, cfg = results.get("machine", {}), results.get("config", {})
    where = m.get("gpu", {}).get("name") if results.get("device") == "cuda" else m.get("cpu_model")
    vers = ", ".join(f"{k} {v}" for k, v in (m.get("versions") or {}).items() if v)
    lines = [f"`wnkernels bench` on {(m.get('date') or '')[:10]}: {where or 'unknown'}, "
             f"ISA {m.get('cpu_isa', '?')}, {_plural(m.get('threads') or 1, 'thread')}; "
             f"{vers}; medians of {cfg.get('repeat', '?')} interleaved rounds.", ""]
    singles = [c for c in results["cases"] if "shape" in c]
    groups = [c for c in results["cases"] if "shape" not in c]
    peers = [p for p in PEERS if any(p in c[d]["results"] for c in singles
                                     if c["status"] == "ok" for d in DIRECTIONS)]
    if singles:
        cols = ["time", "% roof", "vs torch"] + [f"vs {p}" for p in peers]
        head = ["case"] + [f"{_MD_DIR[d]} {c}" for d in DIRECTIONS for c in cols]
        lines += ["| " + " | ".join(head) + " |",
                  "|---|" + "---:|" * (len(head) - 1)]
        for c in singles:
            row = [c["case"]]
            for d in DIRECTIONS:
                if c["status"] != "ok":
                    row += [c["status"]] + [""] * (len(cols) - 1)
                    continue
                dr = c[d]
                t = dr["results"][dr["ours"]]
                row += [_md_time(t["time_s"]), f"{t['pct_roofline']:.0f}%",
                        _md_x(dr.get("speedup_vs_torch"))]
                row += [_md_x(dr.get("speedup_vs_peers", {}).get(p)) for p in peers]
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    if groups:
        head = ["weight set (grouped call)"] + [
            f"{_MD_DIR[d]} {c}" for d in DIRECTIONS
            for c in ("time", "% roof", "vs torch's loop", "vs own loop")]
        lines += ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
        for c in groups:
            row = [c["case"]]
            for d in DIRECTIONS:
                if c["status"] != "ok":
                    row += [c["status"], "", "", ""]
                    continue
                dr = c[d]
                t = dr["results"][dr["ours"]]
                row += [_md_time(t["time_s"]), f"{t['pct_roofline']:.0f}%",
                        _md_x(dr.get("speedup_vs_torch")), _md_x(dr.get("speedup_vs_own_loop"))]
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    s = results.get("summary", {})
    vt = s.get("vs_torch") or {}
    if vt.get("geomean"):
        lines.append(f"Geometric mean vs PyTorch over {_cases(vt.get('cases', 0))}: "
                     f"{vt['geomean']:.2f}× (forward {vt.get('geomean_forward', 0):.2f}×, "
                     f"backward {vt.get('geomean_backward', 0):.2f}×).")
        ar = s.get("vs_torch_at_roofline") or {}
        if ar.get("geomean"):
            lines.append("")
            lines.append(f"At exactly 100% of the same-size roofline on every case it would be "
                         f"{ar['geomean']:.2f}× (forward {ar.get('geomean_forward', 0):.2f}×, "
                         f"backward {ar.get('geomean_backward', 0):.2f}×).")
    return "\n".join(lines) + "\n"
