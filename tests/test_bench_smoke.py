"""The benchmark package runs, reports what it measured, and refuses wrong answers.

A smoke test (tiny cases, one round, no timing claims): `wnkernels.bench.run_suite`
on a single case and a small weight set, the ``wnkernels bench`` command line
(``--list`` and a short run), and the check that a wrong result is caught before
anything is timed.
"""

import json
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
