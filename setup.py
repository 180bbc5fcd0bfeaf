"""Build the wnkernels CPU extension: C kernels in csrc/ + a thin Cython binding.

OpenMP is detected at build time (clean serial fallback when the compiler lacks
it); set WNKERNELS_NO_OPENMP=1 to build without it.  No -march=native: the C
source is compiled for several instruction sets and dispatched at run time.
"""
import os
import sys
import tempfile
import textwrap

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join("csrc")


def _compiler_accepts(compiler, flags, source):
    """Compile and link a probe program with `flags`; True on success."""
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w") as f:
            f.write(source)
        try:
            objs = compiler.compile([src], output_dir=tmp, extra_postargs=flags)
            compiler.link_executable(objs, os.path.join(tmp, "probe"),
                                     extra_postargs=flags)
        except Exception:
            return False
    return True


OPENMP_PROBE = textwrap.dedent("""
    #include <omp.h>
    int main(void) {
        int n = 0;
        #pragma omp parallel reduction(+:n)
        n += omp_get_num_threads() > 0;
        return n > 0 ? 0 : 1;
    }
""")


class BuildExt(build_ext):
    def build_extensions(self):
        ctype = self.compiler.compiler_type
        if ctype == "msvc":
            base = ["/O2"]
            omp = ["/openmp"]
        else:
            # -ffp-contract=off: no FMA contraction, so every ISA variant
            # rounds identically; -fno-math-errno lets sqrt inline.
            # -fno-wrapv undoes the -fwrapv of Python's own CFLAGS (which
            # distutils puts first): with wrapping signed arithmetic GCC
            # cannot count the kernels' int64 loops, and the row backward on
            # 65536x64 float32 ran 1.7x slower (csrc/ab.c, same process).
            # Neither the kernels nor Cython's code rely on signed overflow.
            base = ["-O3", "-std=gnu11", "-ffp-contract=off", "-fno-math-errno",
                    "-fno-strict-aliasing", "-fno-wrapv", "-Wall", "-Wno-unused-function"]
            omp = ["-fopenmp"]
        use_omp = os.environ.get("WNKERNELS_NO_OPENMP", "") in ("", "0")
        if use_omp and not _compiler_accepts(self.compiler, omp, OPENMP_PROBE):
            print("wnkernels: compiler has no OpenMP; building serial kernels",
                  file=sys.stderr)
            use_omp = False
        for ext in self.extensions:
            ext.extra_compile_args = base + (omp if use_omp else [])
            ext.extra_link_args = omp if use_omp and ctype != "msvc" else []
        super().build_extensions()


CSRC_DEPS = [os.path.join(CSRC, f) for f in ("wn.h", "wn_common.h", "wn_impl.h", "wn_isa.h")]
NUMPY_API = [("NPY_NO_DEPRECATED_API", "NPY_2_0_API_VERSION")]

extensions = [
    # The dispatcher (keys, plan cache, public functions): no C kernels.
    Extension("wnkernels._dispatch", sources=["wnkernels/_dispatch.pyx"],
              include_dirs=[np.get_include()], define_macros=NUMPY_API),
    # The CPU backend's executables over the C kernels.
    Extension("wnkernels.cpu._kernels",
              sources=["wnkernels/cpu/_kernels.pyx", "csrc/wn.c"],
              include_dirs=[CSRC, np.get_include()], depends=CSRC_DEPS,
              define_macros=NUMPY_API),
]

setup(
    ext_modules=cythonize(extensions, compiler_directives={"language_level": 3},
                          include_path=[HERE]),
    cmdclass={"build_ext": BuildExt},
)
