"""The benchmark cases: square matrices, real models' weights, per-call latency,
and whole models' weight sets for the grouped calls."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

__all__ = ["Case", "GroupCase", "CPU_CASES", "CUDA_CASES", "CPU_GROUPS", "CUDA_GROUPS",
           "DAC_44KHZ", "ENCODEC_24KHZ", "SMALL_50", "select_cases", "benchmark_matrix",
           "DIRECTIONS", "TRAFFIC", "ITEMSIZE"]

DIRECTIONS = ("forward", "backward")
# Bytes a direction must move, in units of N·itemsize: the forward reads v and writes w;
# the backward reads grad_w and v and writes grad_v (g, norms and grad_g are one value per
# row: negligible on every case of the suite).
TRAFFIC = {"forward": 2, "backward": 3}
ITEMSIZE = {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8}
SHORT_DTYPE = {"float16": "f16", "bfloat16": "bf16", "float32": "f32", "float64": "f64"}


@dataclass(frozen=True)
class Case:
    """One benchmark shape: ``v`` of ``shape`` and ``dtype``, kept axis ``dim``."""

    shape: Tuple[int, ...]
    dtype: str = "float32"
    dim: int = 0
    large: bool = False      # a bandwidth case (held to the roofline targets)
    wall_clock: bool = False  # a latency case: GPU timing by wall clock, not CUDA events
    label: str = ""          # extra words for the name (a model, "latency")

    @property
    def name(self) -> str:
        parts = ["x".join(map(str, self.shape)), SHORT_DTYPE[self.dtype]]
        if self.dim != 0:
            parts.append(f"dim={self.dim}")
        if self.label:
            parts.append(self.label)
        return " ".join(parts)

    @property
    def id(self) -> str:
        """The name as a pytest id (no spaces or '=')."""
        return self.name.replace(" ", "-").replace("=", "")

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def kept_axis(self) -> int:
        return self.dim % self.ndim

    @property
    def reduced_axes(self) -> Tuple[int, ...]:
        return tuple(a for a in range(self.ndim) if a != self.kept_axis)

    @property
    def g_shape(self) -> Tuple[int, ...]:
        """Keep-dims shape of g (size 1 on every reduced axis), what PyTorch passes."""
        return tuple(n if a == self.kept_axis else 1 for a, n in enumerate(self.shape))

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def itemsize(self) -> int:
        return ITEMSIZE[self.dtype]

    @property
    def nbytes(self) -> int:
        return self.size * self.itemsize

    def bytes_moved(self, direction: str) -> int:
        return TRAFFIC[direction] * self.nbytes


@dataclass(frozen=True)
class GroupCase:
    """A model's set of weight-normed weights, all ``dtype``, normalized over ``dim``."""

    label: str
    shapes: Tuple[Tuple[int, ...], ...]
    dtype: str = "float32"
    dim: int = 0

    @property
    def name(self) -> str:
        return f"{self.label} ({len(self.shapes)} weights) {SHORT_DTYPE[self.dtype]}"

    @property
    def id(self) -> str:
        return self.name.replace(" ", "-").replace("(", "").replace(")", "")

    @property
    def cases(self) -> List[Case]:
        return [Case(s, self.dtype, self.dim) for s in self.shapes]

    @property
    def size(self) -> int:
        return sum(math.prod(s) for s in self.shapes)

    @property
    def nbytes(self) -> int:
        return self.size * ITEMSIZE[self.dtype]

    def bytes_moved(self, direction: str) -> int:
        return TRAFFIC[direction] * self.nbytes


# ---------------------------------------------------------------- real models' weights
# The weight-normed weights of models built from their default configs in
# transformers 5.24 (DacModel(DacConfig()).apply_weight_norm(),
# EncodecModel(EncodecConfig())), in module order; all normalized over dim 0.

DAC_44KHZ = (
    (64, 1, 7), (64, 64, 7), (64, 64, 1), (64, 64, 7), (64, 64, 1), (64, 64, 7), (64, 64, 1),
    (128, 64, 4), (128, 128, 7), (128, 128, 1), (128, 128, 7), (128, 128, 1), (128, 128, 7),
    (128, 128, 1), (256, 128, 8), (256, 256, 7), (256, 256, 1), (256, 256, 7), (256, 256, 1),
    (256, 256, 7), (256, 256, 1), (512, 256, 16), (512, 512, 7), (512, 512, 1), (512, 512, 7),
    (512, 512, 1), (512, 512, 7), (512, 512, 1), (1024, 512, 16), (1024, 1024, 3),
    (1536, 1024, 7), (1536, 768, 16), (768, 768, 7), (768, 768, 1), (768, 768, 7),
    (768, 768, 1), (768, 768, 7), (768, 768, 1), (768, 384, 16), (384, 384, 7), (384, 384, 1),
    (384, 384, 7), (384, 384, 1), (384, 384, 7), (384, 384, 1), (384, 192, 8), (192, 192, 7),
    (192, 192, 1), (192, 192, 7), (192, 192, 1), (192, 192, 7), (192, 192, 1), (192, 96, 4),
    (96, 96, 7), (96, 96, 1), (96, 96, 7), (96, 96, 1), (96, 96, 7), (96, 96, 1), (1, 96, 7),
) + ((8, 1024, 1), (1024, 8, 1)) * 9

ENCODEC_24KHZ = (
    (32, 1, 7), (16, 32, 3), (32, 16, 1), (32, 32, 1), (64, 32, 4), (32, 64, 3), (64, 32, 1),
    (64, 64, 1), (128, 64, 8), (64, 128, 3), (128, 64, 1), (128, 128, 1), (256, 128, 10),
    (128, 256, 3), (256, 128, 1), (256, 256, 1), (512, 256, 16), (128, 512, 7), (512, 128, 7),
    (512, 256, 16), (128, 256, 3), (256, 128, 1), (256, 256, 1), (256, 128, 10), (64, 128, 3),
    (128, 64, 1), (128, 128, 1), (128, 64, 8), (32, 64, 3), (64, 32, 1), (64, 64, 1),
    (64, 32, 4), (16, 32, 3), (32, 16, 1), (32, 32, 1), (1, 32, 7),
)

SMALL_50 = ((256, 256), (512, 256, 3)) * 25

assert len(DAC_44KHZ) == 78 and len(ENCODEC_24KHZ) == 36 and len(SMALL_50) == 50


# ---------------------------------------------------------------- the suites
# Single weights of real models, named by model (dim=0 unless stated): DAC's quantizer
# projections (1024x8x1: rows of 8) and its widest decoder conv; HiFi-GAN's first
# ConvTranspose1d (512x256x16); Encodec 24 kHz's encoder output conv (128x512x7);
# BigVGAN-v2's first ConvTranspose1d (1536x768x16, upsample_initial_channel=1536);
# the grouped positional convs of Wav2Vec2-base / HuBERT-base (768x48x128) and
# Wav2Vec2-large / HuBERT-large (1024x64x128), weight-normed over their kernel axis (dim=2).

CPU_CASES: Tuple[Case, ...] = (
    Case((4096, 4096), "float32", large=True),
    Case((4096, 4096), "float64", large=True),
    Case((4096, 4096), "bfloat16", large=True),
    Case((4096, 4096), "float32", dim=-1, large=True),
    Case((65536, 64), "float32"),
    Case((8, 1048576), "float32", large=True),
    Case((512, 256, 3, 3), "float32"),
    Case((256, 2304), "float32"),
    Case((1024, 8, 1), "float32", label="DAC quantizer"),
    Case((8192, 8), "float32"),
    Case((512, 256, 16), "float32", label="HiFi-GAN upsample"),
    Case((1536, 1024, 7), "float32", label="DAC decoder"),
    Case((768, 48, 128), "float32", dim=2, label="Wav2Vec2 pos-conv"),
    Case((1024, 64, 128), "float32", dim=2, label="HuBERT-large pos-conv"),
    Case((128, 512, 7), "float32", label="Encodec conv"),
    Case((1536, 768, 16), "float32", label="BigVGAN upsample"),
    Case((64, 64), "float32", wall_clock=True, label="latency"),
)

# The GPU suite.
CUDA_CASES: Tuple[Case, ...] = (
    Case((4096, 4096), "float32", large=True),
    Case((4096, 4096), "float16", large=True),
    Case((4096, 4096), "bfloat16", large=True),
    Case((4096, 4096), "float64", large=True),
    Case((16384, 4096), "bfloat16", large=True),
    Case((1024, 262144), "float32", large=True),
    Case((1048576, 64), "float32", large=True),
    Case((8, 16777216), "float32", large=True),
    Case((64, 512, 512), "float16", large=True),
    Case((512, 256, 3, 3), "float32"),
    Case((4096, 4096), "float32", dim=-1, large=True),
    Case((1536, 768, 16), "float32", label="BigVGAN upsample"),
    Case((768, 48, 128), "float32", dim=2, label="Wav2Vec2 pos-conv"),
    Case((64, 64), "float32", wall_clock=True, label="latency"),
)

CPU_GROUPS: Tuple[GroupCase, ...] = (
    GroupCase("DAC 44kHz", DAC_44KHZ),
    GroupCase("Encodec 24kHz", ENCODEC_24KHZ),
    GroupCase("50 small layers", SMALL_50),
)
CUDA_GROUPS = CPU_GROUPS


def select_cases(cases: Sequence, patterns: Optional[Sequence[str]]) -> list:
    """Cases whose name contains any of ``patterns`` (case-insensitive; all if none)."""
    if not patterns:
        return list(cases)
    pats = [p.lower() for p in patterns]
    return [c for c in cases if any(p in c.name.lower() for p in pats)]


def benchmark_matrix(cases: Sequence, impls: Sequence[str]) -> list:
    """``(case, direction, impl, test id)`` in run order (a case's tests back to back), for
    the pytest-benchmark suite in ``bench/``; ``"wnkernels out="`` is forward only."""
    return [(c, d, i, f"{c.id}-{d}-{i.replace(' out=', '_out').replace(' ', '_')}")
            for c in cases for d in DIRECTIONS for i in impls
            if not (i == "wnkernels out=" and d == "backward")]
