"""csrc/ab.c, the paired A/B timer of two builds of the C kernels: it builds,
runs, and reports the same bits for one build against itself (rows and
columns, forward and backward), and it says so when two builds differ."""
import os
import re
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CSRC = os.path.join(ROOT, "csrc")
FLAGS = ["-O1", "-std=gnu11", "-ffp-contract=off", "-fno-math-errno",
         "-fno-strict-aliasing", "-fno-wrapv", "-fopenmp", "-fPIC", "-shared"]

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")

LINE = re.compile(r"A median ([\d.]+) min ([\d.]+) us \| B median ([\d.]+) min ([\d.]+) us"
                  r" \| A/B ([\d.]+) \(quartiles ([\d.]+) ([\d.]+)\) \| bits (\w+)")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    d = tmp_path_factory.mktemp("ab")
    lib = str(d / "libwn.so")
    subprocess.run(["gcc", *FLAGS, "-I" + CSRC, os.path.join(CSRC, "wn.c"), "-o", lib],
                   check=True)
    # a build whose forward scale differs by one ulp: w = v * (g / n) * (1 + 2^-23)
    with open(os.path.join(CSRC, "wn_impl.h")) as f:
        impl = f.read()
    src = "return LDF(g) / (CT)norm;"
    assert src in impl
    alt = d / "alt"
    shutil.copytree(CSRC, alt)
    (alt / "wn_impl.h").write_text(impl.replace(src, "return LDF(g) / (CT)norm * (CT)(1 + 0x1p-23);"))
    bad = str(d / "libbad.so")
    subprocess.run(["gcc", *FLAGS, "-I" + str(alt), str(alt / "wn.c"), "-o", bad], check=True)
    exe = str(d / "ab")
    subprocess.run(["gcc", "-O2", "-I" + CSRC, os.path.join(CSRC, "ab.c"), "-o", exe, "-ldl"],
                   check=True)
    return exe, lib, bad


@pytest.mark.parametrize("args", [["300", "64", "fwd", "1"], ["300", "64", "bwd", "2"],
                                  ["500", "96", "fwd", "2", "1"], ["500", "96", "bwd", "1", "1"],
                                  ["300", "64", "bwd", "2", "0", "bf16"],
                                  ["500", "96", "fwd", "1", "1", "bf16"],
                                  ["300", "64", "fwd", "2", "0", "f64"]])
def test_one_build_against_itself(built, args):
    exe, lib, _ = built
    r = subprocess.run([exe, lib, lib, *args], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    m = LINE.search(r.stdout)
    assert m, r.stdout
    a_med, a_min, b_med, b_min, ratio, q1, q3, bits = m.groups()
    assert bits == "same"
    assert 0 < float(a_min) <= float(a_med) and 0 < float(b_min) <= float(b_med)
    assert float(q1) <= float(ratio) <= float(q3)


def test_builds_that_differ_are_reported(built):
    exe, lib, bad = built
    r = subprocess.run([exe, lib, bad, "300", "64", "fwd", "1"], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 3 and "bits DIFFER" in r.stdout, (r.returncode, r.stdout)


def test_bad_arguments(built):
    exe, lib, _ = built
    r = subprocess.run([exe, lib, lib, "0", "64", "fwd", "1"], capture_output=True, text=True)
    assert r.returncode == 2 and "ROWS" in r.stderr
    r = subprocess.run([exe, lib, lib, "4", "4", "fwd", "1", "0", "f16"], capture_output=True,
                       text=True)
    assert r.returncode == 2 and "DTYPE" in r.stderr
    r = subprocess.run([exe, lib, "/nonexistent.so", "4", "4", "fwd", "1"], capture_output=True,
                       text=True)
    assert r.returncode == 1 and "/nonexistent.so" in r.stderr
