"""The benchmark package runs, reports what it measured, and refuses wrong answers.

A smoke test (tiny cases, one round, no timing claims): `wnkernels.bench.run_suite`
on a single case and a small weight set, the ``wnkernels bench`` command line
(``--list`` and a short run), and the check that a wrong result is caught before
anything is timed.
"""

import json
import math
import subprocess
import sys

import pytest

import wnkernels
from wnkernels import bench


def _run(cases, **kw):
    import io
    out = io.StringIO()
    res = bench.run_suite(cases, repeat=1, min_time=0.0, progress=False, out=out, **kw)
    return res, out.getvalue()


def test_a_case_and_a_group_are_measured():
    cases = [bench.Case((33, 17), "float32"), bench.Case((8, 5), "bfloat16", dim=-1),
             bench.GroupCase("tiny", ((4, 3), (2, 5, 3), (7, 1)))]
    res, text = _run(cases)
    assert [c["status"] for c in res["cases"]] == ["ok"] * 3, res["cases"]
    for cr in res["cases"]:
        for d in bench.DIRECTIONS:
            dr = cr[d]
            assert dr["ours"] in dr["results"] and "roofline" in dr["results"]
            for t in dr["results"].values():
                assert t["time_s"] > 0 and t["gbps"] > 0
        assert all(v <= 1.0 for v in cr["check"].values())
    group = res["cases"][2]
    assert "speedup_vs_own_loop" in group["forward"]
    assert "tiny" in text and "Summary" in text
    s = res["summary"]
    assert s["cases_ok"] == 3 and not s["cases_failed"] and not s["cases_error"]
    if bench.import_torch() is not None:
        assert s["geomean_speedup_vs_torch"] > 0
        assert {g["case"] for g in s["groups"]} == {group["case"]}
        # the ceiling: PyTorch's time over the roofline's, per case and in the summary
        for cr in res["cases"]:
            for d in bench.DIRECTIONS:
                r = cr[d]["results"]
                torch_t = (r.get("torch") or r["torch loop"])["time_s"]
                assert math.isclose(cr[d]["roofline_speedup_vs_torch"],
                                    torch_t / r["roofline"]["time_s"])
        ceiling = [cr[d]["roofline_speedup_vs_torch"] for cr in res["cases"]
                   for d in bench.DIRECTIONS]
        assert math.isclose(s["vs_torch_at_roofline"]["geomean"],
                            math.exp(sum(map(math.log, ceiling)) / len(ceiling)))
        assert "100% of the same-size roofline" in text
        assert s["groups"][0]["roofline_speedup_vs_torch_loop"] > 0


def test_a_wrong_answer_is_not_timed(monkeypatch):
    real = wnkernels.weight_norm

    def wrong(v, g, dim=0, **kw):
        w, n = real(v, g, dim, **kw)
        return w * 1.01, n
    monkeypatch.setattr(wnkernels, "weight_norm", wrong)
    res, text = _run([bench.Case((16, 9), "float64")], use_torch=False)
    assert res["cases"][0]["status"] == "check failed"
    assert "differs from the float64 reference" in res["cases"][0]["message"]
    assert res["summary"]["cases_failed"] == [res["cases"][0]["case"]]


def test_the_suites_hold_the_real_models():
    assert len(bench.DAC_44KHZ) == 78 and len(bench.ENCODEC_24KHZ) == 36
    names = " ".join(c.name for c in bench.CPU_CASES)
    for model in ("DAC quantizer", "HiFi-GAN", "Wav2Vec2", "latency"):
        assert model in names
    assert [g.label for g in bench.CPU_GROUPS] == ["DAC 44kHz", "Encodec 24kHz",
                                                   "50 small layers"]


def test_the_suites_name_the_models_of_the_issue():
    names = {c.label: c for c in bench.CPU_CASES if c.label}
    assert names["BigVGAN upsample"].shape == (1536, 768, 16)
    assert names["HuBERT-large pos-conv"].shape == (1024, 64, 128)
    assert names["HuBERT-large pos-conv"].dim == 2
    assert "Encodec conv" in names and "DAC decoder" in names


@pytest.mark.skipif(bench.import_torch() is None, reason="needs torch")
def test_the_headline_is_torch_tensors_against_torch():
    """Like with like: the speed-up and the summary's geometric means (per direction)
    compare wnkernels called on torch tensors with PyTorch; the NumPy-array call is a
    secondary figure."""
    res, text = _run([bench.Case((40, 6), "float32"), bench.Case((9, 130), "float64", dim=-1)])
    fwd, bwd = ([cr[d] for cr in res["cases"]] for d in bench.DIRECTIONS)
    for dr in fwd + bwd:
        t = dr["results"]
        assert dr["ours"] == "wnkernels torch"
        assert dr["speedup_vs_torch"] == pytest.approx(
            t["torch"]["time_s"] / t["wnkernels torch"]["time_s"])
        assert dr["numpy_speedup_vs_torch"] == pytest.approx(
            t["torch"]["time_s"] / t["wnkernels"]["time_s"])
    s = res["summary"]
    by_dir = s["geomean_speedup_vs_torch_by_direction"]
    for d, drs in (("forward", fwd), ("backward", bwd)):
        x, y = (dr["speedup_vs_torch"] for dr in drs)
        assert by_dir[d] == pytest.approx((x * y) ** 0.5)
    assert s["geomean_speedup_vs_torch"] == pytest.approx(
        math.prod(dr["speedup_vs_torch"] for dr in fwd + bwd) ** 0.25)
    summary_line = text[text.index("Summary"):].splitlines()[0]
    assert "wnkernels on torch tensors vs PyTorch" in summary_line
    assert f"forward {by_dir['forward']:.2f}x" in summary_line
    assert "*" in text  # the headline row is marked in each table


def _check_png(path):
    image = pytest.importorskip("matplotlib.image")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = image.imread(str(path))
    assert pixels.ndim == 3 and pixels.shape[0] > 200 and pixels.shape[1] > 800
    assert pixels.std() > 0.05  # not a blank canvas


def test_plot_draws_the_table(tmp_path):
    pytest.importorskip("matplotlib")
    cases = [bench.Case((33, 17), "float32"), bench.Case((8, 5), "float32", dim=-1),
             bench.GroupCase("tiny", ((4, 3), (2, 5, 3)))]
    res, _ = _run(cases)
    res["cases"].append({"case": "broken", "status": "check failed", "message": "x"})
    path = tmp_path / "bench.png"
    bench.plot_results(res, str(path))
    _check_png(path)


def test_plot_without_matplotlib_says_how_to_install(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    rc = bench.main(["bench", "--cases", "latency", "--plot", str(tmp_path / "x.png")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "needs matplotlib" in err and "wnkernels[plot]" in err
    assert not (tmp_path / "x.png").exists()


def test_an_absent_peer_is_reported_not_an_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "jax", None)
    res, text = _run([bench.Case((16, 4), "float32")], peers=("jax.jit",))
    cr = res["cases"][0]
    assert cr["status"] == "ok"
    assert cr["peers"]["jax.jit"]["status"] == "absent"
    assert "jax.jit" not in cr["forward"]["results"]
    assert "jax.jit: absent" in text
    assert res["summary"]["peers"]["jax.jit"]["status"] == {"absent": [cr["case"]]}


def test_jax_jit_is_a_checked_peer():
    pytest.importorskip("jax")
    cases = [bench.Case((24, 5, 3), "float32"), bench.Case((6, 40), "float64", dim=-1),
             bench.Case((16, 33), "bfloat16")]
    res, text = _run(cases, peers=("jax.jit",))
    for cr in res["cases"]:
        st = cr["peers"]["jax.jit"]
        assert st["status"] == "ok", st
        assert all(v <= 1.0 for v in st["check"].values())
        for d in bench.DIRECTIONS:
            assert cr[d]["results"]["jax.jit"]["time_s"] > 0
            assert cr[d]["speedup_vs_peers"]["jax.jit"] > 0
    assert res["summary"]["peers"]["jax.jit"]["geomean"] > 0
    assert "vs jax.jit" in text


def test_a_wrong_peer_is_not_timed(monkeypatch):
    from wnkernels.bench import peers

    def wrong(name, case, v, g, grad_w, **kw):
        w = lambda: (v * 1.01, g)  # noqa: E731
        return peers.Peer(name, w, lambda: (grad_w, g), bench.workloads._to_numpy)
    monkeypatch.setattr(peers, "build_peer", wrong)
    res, text = _run([bench.Case((16, 9), "float64")], use_torch=False, peers=("jax.jit",))
    cr = res["cases"][0]
    assert cr["status"] == "ok" and cr["peers"]["jax.jit"]["status"] == "check failed"
    assert "jax.jit" not in cr["forward"]["results"]


@pytest.mark.slow
@pytest.mark.skipif(bench.import_torch() is None, reason="needs torch")
def test_compare_compiles_torch_compile(tmp_path):
    """--compare's torch.compile peer (Inductor's C++ code: a compiler run, hence slow)
    compiles, passes the check and is timed on a tiny case, in-process under pytest's
    warnings-as-errors; the JSON record and the chart hold it."""
    res, text = _run([bench.Case((12, 7, 3), "float32")], peers=bench.PEERS)
    cr = res["cases"][0]
    st = cr["peers"]["torch.compile"]
    assert cr["status"] == "ok" and st["status"] == "ok", cr
    assert all(v <= 1.0 for v in st["check"].values())
    assert st["first_call_s"]["forward"] > 0
    for d in bench.DIRECTIONS:
        assert cr[d]["results"]["torch.compile"]["time_s"] > 0
        assert cr[d]["speedup_vs_peers"]["torch.compile"] > 0
    data = json.loads(json.dumps(res))
    assert set(data["cases"][0]["peers"]) == set(bench.PEERS)
    assert data["summary"]["peers"]["torch.compile"]["geomean"] > 0
    assert "vs torch.compile" in text and "vs the fastest of PyTorch" in text
    if _installed("matplotlib"):
        bench.plot_results(res, str(tmp_path / "c.png"))
        _check_png(tmp_path / "c.png")


@pytest.mark.slow
def test_compare_from_the_command_line(tmp_path):
    """``--compare --json``: every peer has a status in the record (torch.compile absent
    with --no-torch; jax.jit measured where installed), and --plot draws them."""
    out, png = tmp_path / "r.json", tmp_path / "r.png"
    args = ["--cases", "latency", "--repeat", "1", "--min-time", "0", "--no-progress",
            "--compare", "--no-torch", "--json", str(out)]
    if _installed("matplotlib"):
        args += ["--plot", str(png)]
    r = subprocess.run([sys.executable, "-m", "wnkernels", "bench"] + args,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    data = json.loads(out.read_text())
    peers = data["cases"][0]["peers"]
    assert set(peers) == set(bench.PEERS) and data["config"]["peers"] == list(bench.PEERS)
    assert peers["torch.compile"]["status"] == "absent"
    assert peers["jax.jit"]["status"] == ("ok" if _installed("jax") else "absent")
    assert "torch.compile: absent" in r.stdout
    if _installed("jax"):
        assert data["cases"][0]["forward"]["results"]["jax.jit"]["time_s"] > 0
    if _installed("matplotlib"):
        _check_png(png)


def _installed(mod):
    import importlib.util
    return importlib.util.find_spec(mod) is not None


def test_command_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "wnkernels", "bench", "--list"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "4096x4096 f32" in r.stdout and "DAC 44kHz" in r.stdout
    out = tmp_path / "r.json"
    r = subprocess.run([sys.executable, "-m", "wnkernels", "bench", "--cases", "latency",
                        "--repeat", "1", "--min-time", "0", "--no-progress", "--json",
                        str(out)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    data = json.loads(out.read_text())
    assert data["cases"][0]["status"] == "ok" and data["machine"]["cpu_isa"]
    r = subprocess.run([sys.executable, "-m", "wnkernels", "bench", "--cases", "nothing-x"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "no case matches" in r.stderr


@pytest.mark.parametrize("bad", [["--repeat", "0"], ["--threads", "0"]])
def test_bad_options(bad):
    r = subprocess.run([sys.executable, "-m", "wnkernels", "bench", "--cases", "latency"] + bad,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2


def test_reference_is_importable_without_the_compiled_extensions(tmp_path):
    """wnkernels.reference needs only NumPy: with the extensions hidden, it still
    imports and computes, and the API says what is missing."""
    code = (
        "import sys\n"
        "sys.modules['wnkernels._dispatch'] = None\n"
        "sys.modules['wnkernels.cpu._kernels'] = None\n"
        "import numpy as np\n"
        "from wnkernels import reference\n"
        "w, n = reference.weight_norm(np.ones((2, 3)), np.ones((2, 1)))\n"
        "assert np.allclose(n, 3 ** 0.5)\n"
        "import wnkernels\n"
        "try:\n"
        "    wnkernels.weight_norm\n"
        "except ImportError as e:\n"
        "    assert 'compiled extensions are missing' in str(e)\n"
        "else:\n"
        "    raise SystemExit('no ImportError')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr


def test_markdown_writes_the_results_tables(tmp_path):
    """``--markdown``: the README's Results tables, one row per case measured, with
    wnkernels' time, % of roofline and speed-ups per direction, and the geomean."""
    md = tmp_path / "r.md"
    rc = bench.main(["bench", "--cases", "latency", "Encodec 24kHz", "--repeat", "1",
                     "--min-time", "0", "--no-progress", "--markdown", str(md)])
    assert rc == 0
    text = md.read_text()
    rows = [ln for ln in text.splitlines() if ln.startswith("| ")]
    assert rows[0].startswith("| case | fwd time | fwd % roof | fwd vs torch")
    assert any(r.startswith("| 64x64 f32 latency |") for r in rows)
    assert any(r.startswith("| Encodec 24kHz (36 weights) f32 |") for r in rows)
    latency = next(r for r in rows if r.startswith("| 64x64 f32 latency |")).split(" | ")
    assert latency[1].endswith("s") and latency[2].endswith("%")
    if _installed("torch"):
        assert latency[3].endswith("×") and "Geometric mean vs PyTorch" in text
