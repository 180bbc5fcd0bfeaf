"""The runner and the command line: ``wnkernels bench [options]``."""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from typing import Any, Dict, Optional, Sequence

from .cases import (CPU_CASES, CPU_GROUPS, CUDA_CASES, CUDA_GROUPS, DIRECTIONS, GroupCase,
                    select_cases)
from .report import (Progress, format_case, format_markdown, format_summary, machine_info,
                     summarize)
from .timing import SETTLE_S, OtherLoad, busy_warning, measure
from .workloads import (CheckError, CpuWorkload, CudaWorkload, GroupWorkload, SkipCase,
                        import_torch, require_cuda, roofline_primitives)
from .report import direction_result
from .peers import PEERS
from .plot import plot_results, require_matplotlib

__all__ = ["run_suite", "add_arguments", "run_from_args", "main"]


def _case_record(case) -> Dict[str, Any]:
    if isinstance(case, GroupCase):
        return {"case": case.name, "weights": len(case.shapes), "shapes": [list(s) for s in
                                                                          case.shapes],
                "dtype": case.dtype, "dim": case.dim, "elements": case.size,
                "bytes": case.nbytes, "large": False, "status": "ok"}
    return {"case": case.name, "shape": list(case.shape), "dtype": case.dtype,
            "dim": case.dim, "elements": case.size, "bytes": case.nbytes,
            "large": case.large, "status": "ok"}


def run_suite(cases: Sequence, *, device: str = "cpu", repeat: int = 7,
              min_time: float = 0.1, threads: Optional[int] = None, use_torch: bool = True,
              progress: bool = True, out=None, seed: int = 0,
              peers: Sequence[str] = ()) -> Dict[str, Any]:
    """Check, then time, every case (`Case` or `GroupCase`); print a table per case
    to ``out``; return the data. ``peers`` (names from `PEERS`: ``--compare``) adds
    compiled peers to the single cases, each reported absent when not installed."""
    if repeat < 1:
        raise ValueError("repeat must be at least 1")
    out = out or sys.stdout
    if device == "cuda":
        torch = require_cuda()
    elif device == "cpu":
        torch = import_torch() if use_torch else None
    else:
        raise ValueError(f"device must be 'cpu' or 'cuda', not {device!r}")
    import wnkernels as wn
    if device == "cpu":
        roofline_primitives()  # fail early and clearly without the extension
    saved_torch_threads = torch.get_num_threads() if torch is not None else None
    if threads is not None:
        wn.set_num_threads(threads)
    n_threads = wn.get_num_threads()
    if torch is not None and device == "cpu":
        torch.set_num_threads(n_threads)

    load = OtherLoad()
    time.sleep(0.3)
    busy_before = load.cpus()
    msg = busy_warning(busy_before, "just before the run")
    if msg:
        print(msg, file=sys.stderr, flush=True)
    load = OtherLoad()

    results: Dict[str, Any] = {
        "device": device,
        "machine": machine_info(device, n_threads),
        "config": {"repeat": repeat, "min_time_s": min_time, "threads": n_threads,
                   "torch": torch is not None and use_torch, "seed": seed,
                   "settle_s": SETTLE_S, "peers": list(peers)},
        "cases": [],
    }
    bar = Progress(total=len(cases) * len(DIRECTIONS) * repeat, enabled=progress)
    try:
        for case in cases:
            cr = _case_record(case)
            single = not isinstance(case, GroupCase)
            bar.describe(f"{case.name}: preparing"
                         + (" and compiling peers" if peers and single else ""))
            done_before = bar.done
            workload = None
            try:
                if not single:
                    workload = GroupWorkload(case, device=device, use_torch=use_torch,
                                             seed=seed)
                elif device == "cuda":
                    workload = CudaWorkload(case, use_torch=use_torch, seed=seed, torch=torch,
                                            peers=peers)
                else:
                    workload = CpuWorkload(case, use_torch=use_torch, seed=seed, peers=peers)
                bar.describe(f"{case.name}: checking")
                cr["check"] = workload.check()
                if workload.peer_status:
                    cr["peers"] = workload.peer_status
                cr["first_call_s"] = workload.first_call_s
                cr["timer"] = workload.timer.kind
                for d in DIRECTIONS:
                    bar.describe(f"{case.name} {d}")
                    timings = measure(workload.contenders(d), workload.timer, repeat=repeat,
                                      min_time=min_time, on_round=bar.update)
                    cr[d] = direction_result(case, d, timings)
            except CheckError as exc:
                cr["status"], cr["message"] = "check failed", str(exc)
            except SkipCase as exc:
                cr["status"], cr["message"] = "skipped", str(exc)
            except Exception as exc:  # a crash in one case must not hide the others
                cr["status"] = "error"
                cr["message"] = f"{type(exc).__name__}: {exc}"
            if cr["status"] != "ok":
                bar.update(len(DIRECTIONS) * repeat - (bar.done - done_before))
            if workload is not None:
                workload.close()
            del workload
            gc.collect()
            if device == "cuda":
                torch.cuda.empty_cache()
            results["cases"].append(cr)
            bar.write(format_case(cr, device) + "\n", file=out)
    finally:
        bar.close()
        if saved_torch_threads is not None and device == "cpu":
            torch.set_num_threads(saved_torch_threads)
    results["summary"] = summarize(results["cases"])
    busy_during = load.cpus()
    results["machine"]["other_load_cpus"] = {"before": busy_before, "during": busy_during}
    msg = busy_warning(busy_during, "on average during the run")
    if msg:
        results["summary"]["warning"] = msg
    print(format_summary(results["summary"], n_threads if device == "cpu" else None),
          file=out, flush=True)
    return results


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``wnkernels bench``."""
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="which suite to run (default: cpu)")
    p.add_argument("--json", metavar="PATH",
                   help="also write every measurement and the machine info to PATH")
    p.add_argument("--cases", metavar="SUBSTR", nargs="+",
                   help="run only the cases whose name contains one of these substrings "
                        "(e.g. --cases 4096x4096 latency DAC); see --list")
    p.add_argument("--list", action="store_true", help="list the suite's cases and exit")
    p.add_argument("--no-groups", action="store_true",
                   help="leave out the models' weight sets (grouped calls)")
    p.add_argument("--repeat", type=int, default=7, metavar="N",
                   help="interleaved rounds per contender; the median is reported (default: 7)")
    p.add_argument("--min-time", type=float, default=0.1, metavar="SECONDS",
                   help="shortest timing sample; fast calls are looped to fill it (default: 0.1)")
    p.add_argument("--threads", type=int, metavar="N",
                   help="CPU threads for wnkernels, the roofline and torch "
                        "(default: wnkernels' default, all cores)")
    p.add_argument("--no-torch", action="store_true",
                   help="do not import or time PyTorch on the CPU")
    p.add_argument("--compare", action="store_true",
                   help="add compiled peers to the single cases: torch.compile (Inductor) and "
                        "jax.jit of the formula and its autodiff backward, each compiled once "
                        "and warmed up, its compile time excluded and its results checked; "
                        "a peer not installed is reported absent")
    p.add_argument("--plot", metavar="PATH",
                   help="also draw the results as a chart (%% of roofline and speed-up vs "
                        "PyTorch per case and contender, forward and backward) to PATH "
                        "(.png, .svg, .pdf; needs matplotlib: pip install 'wnkernels[plot]')")
    p.add_argument("--markdown", metavar="PATH",
                   help="also write the results as Markdown tables (the README's Results "
                        "section) to PATH")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)


def run_from_args(args: argparse.Namespace) -> int:
    suite = list(CUDA_CASES if args.device == "cuda" else CPU_CASES)
    if not args.no_groups:
        suite += list(CUDA_GROUPS if args.device == "cuda" else CPU_GROUPS)
    if args.list:
        width = max(len(c.name) for c in suite)
        for c in suite:
            if isinstance(c, GroupCase):
                print(f"{c.name:<{width}} {len(c.shapes)} weights, {c.size:,} elements, "
                      f"dtype={c.dtype} dim={c.dim} (grouped call)")
            else:
                print(f"{c.name:<{width}} shape={c.shape} dtype={c.dtype} dim={c.dim}"
                      f"{' (large)' if c.large else ''}")
        return 0
    cases = select_cases(suite, args.cases)
    if not cases:
        print(f"wnkernels bench: no case matches {args.cases}; --list shows them",
              file=sys.stderr)
        return 2
    if args.repeat < 1 or args.min_time < 0 or (args.threads is not None and args.threads < 1):
        print("wnkernels bench: --repeat and --threads must be >= 1, --min-time >= 0",
              file=sys.stderr)
        return 2
    if args.plot:
        try:
            require_matplotlib()  # before minutes of measuring, not after
        except RuntimeError as exc:
            print(f"wnkernels bench: {exc}", file=sys.stderr)
            return 2
    try:
        results = run_suite(cases, device=args.device, repeat=args.repeat,
                            min_time=args.min_time, threads=args.threads,
                            use_torch=args.device == "cuda" or not args.no_torch,
                            progress=not args.no_progress, seed=args.seed,
                            peers=PEERS if args.compare else ())
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
            f.write("\n")
        print(f"wrote {args.json}", file=sys.stderr)
    if args.plot:
        plot_results(results, args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(format_markdown(results))
        print(f"wrote {args.markdown}", file=sys.stderr)
    summary = results["summary"]
    return 1 if summary["cases_failed"] or summary["cases_error"] else 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``wnkernels`` console script: ``wnkernels bench [options]``."""
    parser = argparse.ArgumentParser(prog="wnkernels", description="wnkernels command line")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    bench = sub.add_parser("bench", help="benchmark wnkernels against the memory roofline, "
                                         "PyTorch and NumPy",
                           description="Time wnkernels' forward and backward on every "
                           "case of the suite (--list) beside a same-size memory roofline "
                           "(all-core copy / triad), PyTorch's fused kernels, NumPy and, with "
                           "--compare, torch.compile and jax.jit, and "
                           "its grouped calls on real models' weight sets against per-tensor "
                           "loops, after checking its results against wnkernels.reference.")
    add_arguments(bench)
    args = parser.parse_args(argv)
    if args.command == "bench":
        return run_from_args(args)
    parser.error(f"unknown command {args.command!r}")  # pragma: no cover
    return 2
