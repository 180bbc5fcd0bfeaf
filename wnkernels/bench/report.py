"""Results: per-direction figures, the summary, the printed tables, machine facts."""

from __future__ import annotations

import datetime
import math
import os
import platform
import sys
from typing import Any, Dict, List, Optional, Sequence

from .cases import DIRECTIONS

__all__ = ["direction_result", "summarize", "format_case", "format_summary",
           "machine_info", "Progress", "OURS"]

# wnkernels' contender of a case, by preference: on torch tensors (what a framework
# sees), the grouped call, NumPy arrays.
OURS = ("wnkernels many torch", "wnkernels torch", "wnkernels many", "wnkernels")


def _ours(timings) -> str:
    return next(n for n in OURS if n in timings)


def direction_result(case, direction: str, timings: Dict[str, Dict[str, Any]]):
    """GB/s and % of the roofline of every contender; the speed-ups of wnkernels'
    headline contender (like with like: torch tensors against PyTorch; the grouped
    call against PyTorch's loop and wnkernels' own loop), and of the NumPy-array
    call against PyTorch and NumPy."""
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


def summarize(case_results: List[Dict[str, Any]]) -> Dict[str, Any]:
    vs_torch, np_vs_torch, vs_numpy, roof_large, groups = [], [], [], [], []
    for cr in case_results:
        if cr["status"] != "ok":
            continue
        for d in DIRECTIONS:
            dr = cr[d]
            if "speedup_vs_torch" in dr:
                vs_torch.append((dr["speedup_vs_torch"], cr["case"], d))
            if "numpy_speedup_vs_torch" in dr:
                np_vs_torch.append(dr["numpy_speedup_vs_torch"])
            if "speedup_vs_numpy" in dr:
                vs_numpy.append(dr["speedup_vs_numpy"])
            if "speedup_vs_own_loop" in dr:
                groups.append((cr["case"], d, dr.get("speedup_vs_torch"),
                               dr["speedup_vs_own_loop"]))
            if cr.get("large"):
                roof_large.append((dr["results"][dr["ours"]]["pct_roofline"], cr["case"], d))
    out: Dict[str, Any] = {
        "cases_ok": sum(cr["status"] == "ok" for cr in case_results),
        "cases_failed": [cr["case"] for cr in case_results if cr["status"] == "check failed"],
        "cases_error": [cr["case"] for cr in case_results if cr["status"] == "error"],
        "cases_skipped": [cr["case"] for cr in case_results if cr["status"] == "skipped"],
        "geomean_speedup_vs_torch": _geomean([s for s, _, _ in vs_torch]),
        "geomean_numpy_speedup_vs_torch": _geomean(np_vs_torch),
        "geomean_speedup_vs_numpy": _geomean(vs_numpy),
        "groups": [{"case": c, "direction": d, "speedup_vs_torch_loop": t,
                    "speedup_vs_own_loop": o} for c, d, t, o in groups],
    }
    if vs_torch:
        s, c, d = min(vs_torch)
        out["worst_vs_torch"] = {"case": c, "direction": d, "speedup": s}
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
    lines.append(f"  {'direction':<9} {'implementation':<21} {'time/call':>10} {'GB/s':>8} "
                 f"{'% roof':>7} {'vs torch':>9} {'vs NumPy':>9}")
    for d in DIRECTIONS:
        dr = cr[d]
        res = dr["results"]
        torch_t = (res.get("torch") or res.get("torch loop") or {}).get("time_s")
        first = True
        for name, t in res.items():
            label = ROOFLINE_LABEL[(device, d)] if name == "roofline" else name
            vt = vn = ""
            if name.startswith("wnkernels") and torch_t:
                vt = f"{torch_t / t['time_s']:8.2f}x"
            if name == "wnkernels" and "speedup_vs_numpy" in dr:
                vn = f"{dr['speedup_vs_numpy']:8.1f}x"
            lines.append(f"  {d if first else '':<9} {label:<21} {_fmt_time(t['time_s']):>10} "
                         f"{t['gbps']:8.1f} {t['pct_roofline']:6.1f}% {vt:>9} {vn:>9}")
            first = False
    fc = cr.get("first_call_s")
    if fc and device == "cuda":
        lines.append(f"  first call (includes compile): forward {fc['forward']:.3f} s, "
                     f"backward {fc['backward']:.3f} s")
    return "\n".join(lines)


def format_summary(summary: Dict[str, Any], threads: Optional[int]) -> str:
    parts = []
    gt = summary.get("geomean_speedup_vs_torch")
    if not summary["cases_ok"]:
        parts.append("no case was measured")
    elif gt is not None:
        w = summary["worst_vs_torch"]
        parts.append(f"geometric-mean speed-up vs torch (wnkernels on torch tensors) "
                     f"{gt:.2f}x; worst {w['case']} {w['direction']} {w['speedup']:.2f}x")
        gnt = summary.get("geomean_numpy_speedup_vs_torch")
        if gnt is not None:
            parts.append(f"on NumPy arrays vs torch {gnt:.2f}x")
    else:
        parts.append("no torch comparison (torch not installed or --no-torch)")
    gn = summary.get("geomean_speedup_vs_numpy")
    if gn is not None:
        parts.append(f"vs NumPy {gn:.1f}x")
    lo = summary.get("lowest_pct_roofline_large")
    if lo:
        parts.append(f"lowest % of roofline on a large case: {lo['case']} {lo['direction']} "
                     f"{lo['pct_roofline']:.1f}%")
    line = "Summary" + (f" ({threads} threads)" if threads else "") + ": " + "; ".join(parts)
    for g in summary.get("groups", []):
        t = g["speedup_vs_torch_loop"]
        line += (f"\n  grouped {g['case']} {g['direction']}: "
                 + (f"{t:.2f}x torch's loop, " if t else "")
                 + f"{g['speedup_vs_own_loop']:.2f}x wnkernels' own loop")
    if summary.get("warning"):
        line += "\n" + summary["warning"]
    if summary["cases_failed"]:
        line += f"\nCHECK FAILED (not timed): {', '.join(summary['cases_failed'])}"
    if summary["cases_error"]:
        line += f"\nERROR (not timed): {', '.join(summary['cases_error'])}"
    if summary["cases_skipped"]:
        line += f"\nskipped: {', '.join(summary['cases_skipped'])}"
    return line


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
                     ("wnkernels", "numpy", "torch", "ml_dtypes", "numba-cuda", "numba")},
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
