"""The bad-input matrix of CONTRACT.md: the right exception, a message that names
the argument (and the shapes), and nothing written -- neither the inputs nor a
sentinel-filled ``out``.
"""

import re

import numpy as np
import pytest

import wnkernels
import zoo

SENTINEL = -7.0
V_SHAPE = (5, 7)  # distinctive sizes, so a shape in a message is unambiguous


def _mentions_shape(msg, shape):
    """True if ``shape`` appears in ``msg`` as (5, 7), [5, 7], 5x7, torch.Size([5, 7])..."""
    if len(shape) == 0:
        return "()" in msg or "[]" in msg or "scalar" in msg or "0-d" in msg
    body = r"\s*(?:,|x|×)\s*".join(str(n) for n in shape)
    return re.search(rf"(?<![\d.]){body}(?!\s*\d)", msg) is not None


def _names(msg, name):
    return re.search(rf"(?<![\w.]){re.escape(name)}(?!\w)", msg) is not None


def _np(shape, dtype="float64", seed=0, kind="v"):
    rng = np.random.default_rng([seed, *shape])
    return zoo.random_values(rng, shape, dtype, kind)


def _raises_cleanly(exc, fn, *args, out=None, names=(), shapes=(), **kwargs):
    """Call fn expecting ``exc``; check nothing changed and the message. Returns the message."""
    watched = [a for a in args if a is not None and hasattr(a, "shape")]
    if out is not None:
        watched.append(out)
        kwargs["out"] = out
    before = zoo.snapshot(*watched)
    with pytest.raises(exc) as info:
        fn(*args, **kwargs)
    assert zoo.snapshot(*watched) == before, "an input or out was modified by a failing call"
    msg = str(info.value)
    for name in names:
        assert _names(msg, name), f"message does not name {name!r}: {msg!r}"
    for shape in shapes:
        assert _mentions_shape(msg, shape), f"message does not show shape {shape}: {msg!r}"
    return msg


def _out(shape=V_SHAPE, dtype="float64"):
    return np.full(shape, SENTINEL).astype(zoo.np_dtype(dtype))


# --------------------------------------------------------------------------- TypeError

NON_ARRAYS = [
    pytest.param(lambda a: a.tolist(), id="list"),
    pytest.param(lambda a: tuple(map(tuple, a.tolist())) if a.ndim == 2 else tuple(a.tolist()),
                 id="tuple"),
    pytest.param(lambda a: 1.5, id="python-float"),
    pytest.param(lambda a: None, id="None"),
    pytest.param(lambda a: "v", id="str"),
]


@pytest.mark.parametrize("make", NON_ARRAYS)
@pytest.mark.parametrize("which", ["v", "g"])
def test_forward_non_array(which, make):
    v, g = _np(V_SHAPE), _np((5, 1), kind="g")
    args = {"v": v, "g": g}
    args[which] = make(args[which])
    out = _out()
    _raises_cleanly(TypeError, wnkernels.weight_norm, args["v"], args["g"], 0, out=out,
                    names=[which])


def test_scalar_g_is_not_an_array():
    """g is an array, not a Python scalar -- even for the whole-array case."""
    v = _np(V_SHAPE)
    for g in [2.0, 2, np.float64(2.0)]:
        _raises_cleanly(TypeError, wnkernels.weight_norm, v, g, None, out=_out(), names=["g"])


@pytest.mark.parametrize("make", NON_ARRAYS)
@pytest.mark.parametrize("which", ["grad_w", "v", "g", "norms"])
def test_backward_non_array(which, make):
    args = {"grad_w": _np(V_SHAPE, kind="grad"), "v": _np(V_SHAPE), "g": _np((5, 1), kind="g"),
            "norms": _np((5, 1), kind="g")}
    args[which] = make(args[which])
    _raises_cleanly(TypeError, wnkernels.weight_norm_backward, args["grad_w"], args["v"],
                    args["g"], args["norms"], 0, names=[which])


BAD_DTYPES = ["int8", "int32", "int64", "uint8", "bool", "complex64", "complex128", "object",
              "datetime64[s]", "U3"]


@pytest.mark.parametrize("dtype", BAD_DTYPES)
def test_forward_bad_dtype(dtype):
    v = np.ones(V_SHAPE, dtype=dtype) if dtype != "datetime64[s]" else np.zeros(V_SHAPE, dtype)
    g = np.ones((5, 1), dtype=v.dtype)
    _raises_cleanly(TypeError, wnkernels.weight_norm, v, g, 0)
    # also with a float g: the bad dtype of v alone is a TypeError
    _raises_cleanly(TypeError, wnkernels.weight_norm, v, _np((5, 1)), 0, out=_out(), names=["v"])
    _raises_cleanly(TypeError, wnkernels.weight_norm, _np(V_SHAPE), g, 0, out=_out(), names=["g"])


@pytest.mark.parametrize("dtype", BAD_DTYPES[:7])
@pytest.mark.parametrize("which", ["grad_w", "v", "g"])
def test_backward_bad_dtype(which, dtype):
    args = {"grad_w": _np(V_SHAPE, kind="grad"), "v": _np(V_SHAPE), "g": _np((5, 1), kind="g"),
            "norms": _np((5, 1), kind="g")}
    args[which] = args[which].astype(dtype)
    _raises_cleanly(TypeError, wnkernels.weight_norm_backward, args["grad_w"], args["v"],
                    args["g"], args["norms"], 0, names=[which])


MIXED = [("float32", "float64"), ("float64", "float32"), ("float16", "float32"),
         ("float16", "bfloat16"), ("bfloat16", "float32")]


@pytest.mark.parametrize("v_dtype, g_dtype", MIXED)
def test_forward_mixed_dtypes(v_dtype, g_dtype):
    v = _np(V_SHAPE, v_dtype)
    g = _np((5, 1), g_dtype, kind="g")
    _raises_cleanly(TypeError, wnkernels.weight_norm, v, g, 0, out=_out(dtype=v_dtype),
                    names=["g"])


@pytest.mark.parametrize("v_dtype, other_dtype", MIXED)
@pytest.mark.parametrize("which", ["grad_w", "g"])
def test_backward_mixed_dtypes(which, v_dtype, other_dtype):
    args = {"grad_w": _np(V_SHAPE, v_dtype, kind="grad"), "v": _np(V_SHAPE, v_dtype),
            "g": _np((5, 1), v_dtype, kind="g"),
            "norms": _np((5, 1), zoo.NORM_DTYPE[v_dtype], kind="g")}
    args[which] = args[which].astype(zoo.np_dtype(other_dtype))
    _raises_cleanly(TypeError, wnkernels.weight_norm_backward, args["grad_w"], args["v"],
                    args["g"], args["norms"], 0, names=[which])


def test_mixed_numpy_and_torch():
    torch = pytest.importorskip("torch")
    v, g = _np(V_SHAPE), _np((5, 1), kind="g")
    tv, tg = torch.from_numpy(v.copy()), torch.from_numpy(g.copy())
    out, tout = _out(), torch.full(V_SHAPE, SENTINEL, dtype=torch.float64)
    _raises_cleanly(TypeError, wnkernels.weight_norm, v, tg, 0, out=out)
    _raises_cleanly(TypeError, wnkernels.weight_norm, tv, g, 0, out=tout)
    _raises_cleanly(TypeError, wnkernels.weight_norm, v, g, 0, out=tout)
    _raises_cleanly(TypeError, wnkernels.weight_norm, tv, tg, 0, out=out)
    n = _np((5, 1), kind="g")
    tn = torch.from_numpy(n.copy())
    gw = _np(V_SHAPE, kind="grad")
    tgw = torch.from_numpy(gw.copy())
    _raises_cleanly(TypeError, wnkernels.weight_norm_backward, tgw, v, g, n, 0)
    _raises_cleanly(TypeError, wnkernels.weight_norm_backward, gw, v, g, tn, 0)
    _raises_cleanly(TypeError, wnkernels.weight_norm_backward, gw, tv, tg, tn, 0)


def test_torch_bad_dtypes():
    torch = pytest.importorskip("torch")
    for dtype in [torch.int32, torch.int64, torch.bool, torch.complex64, torch.uint8]:
        v = torch.ones(V_SHAPE, dtype=dtype)
        g = torch.ones((5, 1), dtype=dtype)
        _raises_cleanly(TypeError, wnkernels.weight_norm, v, g, 0)
    v = torch.ones(V_SHAPE)
    _raises_cleanly(TypeError, wnkernels.weight_norm, v, torch.ones((5, 1), dtype=torch.float64), 0,
                    names=["g"])
    _raises_cleanly(TypeError, wnkernels.weight_norm, v.half(), torch.ones((5, 1)).bfloat16(), 0,
                    names=["g"])


# --------------------------------------------------------------------------- ValueError: shapes

BAD_G = [
    # (v shape, dim, bad g shape)
    (V_SHAPE, 0, (6,)),          # wrong size
    (V_SHAPE, 0, (6, 1)),
    (V_SHAPE, 0, (1, 5)),        # right size, wrong shape
    (V_SHAPE, 0, (5, 1, 1)),
    (V_SHAPE, 0, (5, 7)),
    (V_SHAPE, 1, (7, 1)),
    (V_SHAPE, -1, (5,)),
    (V_SHAPE, None, (2,)),
    (V_SHAPE, None, (5, 7)),
    (V_SHAPE, (), (1, 1, 1)),
    ((2, 3, 4), (0, 2), (4, 2)),  # flat shape must follow increasing axis order
    ((2, 3, 4), (0, 2), (2, 3, 1)),
    ((2, 3, 4), (2, 0), (8,)),
    ((2, 3, 4), 1, (1, 3)),
]


@pytest.mark.parametrize("v_shape, dim, g_shape", BAD_G)
def test_forward_bad_g_shape(v_shape, dim, g_shape):
    v = _np(v_shape)
    g = _np(g_shape, kind="g")
    _raises_cleanly(ValueError, wnkernels.weight_norm, v, g, dim, out=_out(v_shape),
                    names=["g"], shapes=[g_shape, v_shape])


@pytest.mark.parametrize("v_shape, dim, g_shape", BAD_G)
def test_backward_bad_g_and_norms_shape(v_shape, dim, g_shape):
    from wnkernels import reference
    v, gw = _np(v_shape), _np(v_shape, kind="grad")
    good = reference.g_shapes(v_shape, dim)[0]
    bad = _np(g_shape, kind="g")
    _raises_cleanly(ValueError, wnkernels.weight_norm_backward, gw, v, bad, _np(good), dim,
                    names=["g"], shapes=[g_shape])
    if int(np.prod(g_shape)) != int(np.prod(good)):  # a norms shape that cannot be right
        _raises_cleanly(ValueError, wnkernels.weight_norm_backward, gw, v, _np(good, kind="g"),
                        bad, dim, names=["norms"], shapes=[g_shape])


@pytest.mark.parametrize("gw_shape", [(7, 5), (5, 8), (5, 7, 1), (35,), (1, 7)])
def test_backward_grad_w_shape(gw_shape):
    v, g, n = _np(V_SHAPE), _np((5, 1), kind="g"), _np((5, 1), kind="g")
    gw = _np(gw_shape, kind="grad")
    _raises_cleanly(ValueError, wnkernels.weight_norm_backward, gw, v, g, n, 0,
                    names=["grad_w"], shapes=[gw_shape, V_SHAPE])


@pytest.mark.parametrize("out_shape", [(7, 5), (5, 8), (5, 7, 1), (35,), (1, 7)])
def test_out_wrong_shape(out_shape):
    v, g = _np(V_SHAPE), _np((5, 1), kind="g")
    _raises_cleanly(ValueError, wnkernels.weight_norm, v, g, 0, out=_out(out_shape),
                    names=["out"], shapes=[out_shape, V_SHAPE])


@pytest.mark.parametrize("v_dtype, out_dtype", [("float32", "float64"), ("float64", "float32"),
                                                ("float16", "bfloat16"), ("float32", "float16"),
                                                ("float64", "int64")])
def test_out_wrong_dtype(v_dtype, out_dtype):
    v, g = _np(V_SHAPE, v_dtype), _np((5, 1), v_dtype, kind="g")
    out = np.full(V_SHAPE, -7).astype(zoo.np_dtype(out_dtype))
    # contract: ValueError for an out of the wrong dtype (an integer out may also count
    # as "an integer dtype", a TypeError)
    exc = (ValueError, TypeError) if out_dtype == "int64" else ValueError
    _raises_cleanly(exc, wnkernels.weight_norm, v, g, 0, out=out, names=["out"])


def test_out_read_only():
    v, g = _np(V_SHAPE), _np((5, 1), kind="g")
    out = _out()
    out.setflags(write=False)
    _raises_cleanly(ValueError, wnkernels.weight_norm, v, g, 0, out=out, names=["out"])
    ro = v.copy()
    ro.setflags(write=False)  # out=v with a read-only v
    _raises_cleanly(ValueError, wnkernels.weight_norm, ro, g, 0, out=ro, names=["out"])
    _raises_cleanly(ValueError, wnkernels.weight_norm, v, g, 0, out=np.broadcast_to(out, V_SHAPE),
                    names=["out"])


def test_out_partly_overlapping_an_input():
    buf = np.full((6, 7), SENTINEL)
    buf[:5] = _np(V_SHAPE)
    v, out = buf[:5], buf[1:]
    g = _np((5, 1), kind="g")
    _raises_cleanly(ValueError, wnkernels.weight_norm, v, g, 0, out=out, names=["out"])
    # shifted by one element
    flat = np.concatenate([_np((35,)), [SENTINEL]])
    _raises_cleanly(ValueError, wnkernels.weight_norm, flat[:35].reshape(V_SHAPE), g, 0,
                    out=flat[1:].reshape(V_SHAPE), names=["out"])
    # out over g
    store = np.full(V_SHAPE, SENTINEL)
    store[:, 0] = 1.5
    g_in_out = store[:, :1]
    _raises_cleanly(ValueError, wnkernels.weight_norm, _np(V_SHAPE), g_in_out, 0, out=store,
                    names=["out"])


def test_interleaved_out_is_fine():
    """out in the gaps of v's buffer shares no element with v: allowed, and correct."""
    inter = np.full((5, 14), SENTINEL)
    inter[:, ::2] = _np(V_SHAPE)
    v, out = inter[:, ::2], inter[:, 1::2]
    values = v.copy()
    g = _np((5, 1), kind="g")
    try:
        w, n = wnkernels.weight_norm(v, g, 0, out=out)
    except ValueError:  # a conservative (extent-based) overlap test may refuse it
        np.testing.assert_array_equal(inter[:, 1::2], SENTINEL)
        return
    assert w is out
    np.testing.assert_array_equal(v, values)
    assert zoo.check_forward(w, n, values, g, 0) is None


@pytest.mark.parametrize("eps", [-1e-12, -1.0, -np.inf])
def test_negative_eps(eps):
    v, g = _np(V_SHAPE), _np((5, 1), kind="g")
    _raises_cleanly(ValueError, wnkernels.weight_norm, v, g, 0, out=_out(), eps=eps,
                    names=["eps"])


def test_nan_eps_is_refused_or_nan():
    """eps=NaN is not >= 0: a ValueError, or (at least) NaN everywhere -- never a silent 0."""
    v, g = _np(V_SHAPE), _np((5, 1), kind="g")
    try:
        w, n = wnkernels.weight_norm(v, g, 0, eps=float("nan"))
    except ValueError:
        return
    assert np.isnan(n).all()


# --------------------------------------------------------------------------- AxisError

BAD_DIMS = [(V_SHAPE, 2), (V_SHAPE, -3), (V_SHAPE, (0, 2)), (V_SHAPE, (0, 0)), (V_SHAPE, (1, -1)),
            (V_SHAPE, (-2, 0)), ((), 0), ((), -1), ((3,), 1), ((2, 3, 4), (0, 1, 3)),
            ((2, 3, 4), (2, 2))]


@pytest.mark.parametrize("shape, dim", BAD_DIMS)
def test_bad_dim(shape, dim):
    v = _np(shape)
    g = _np((1,) * len(shape), kind="g")
    _raises_cleanly(np.exceptions.AxisError, wnkernels.weight_norm, v, g, dim, out=_out(shape))
    _raises_cleanly(np.exceptions.AxisError, wnkernels.weight_norm_backward,
                    _np(shape, kind="grad"), v, g, g.copy(), dim)


@pytest.mark.parametrize("dim", [1.0, "0", [0.5], True])
def test_dim_of_wrong_type(dim):
    """Not an int, a tuple of ints or None: a TypeError (AxisError is for values)."""
    v, g = _np(V_SHAPE), _np((5, 1), kind="g")
    _raises_cleanly((TypeError, ValueError), wnkernels.weight_norm, v, g, dim, out=_out())


# --------------------------------------------------------------------------- order of checks

def test_every_error_leaves_out_untouched_even_when_out_is_fine():
    """Errors found after out= is validated still write nothing into it."""
    v, out = _np(V_SHAPE), _out()
    _raises_cleanly(ValueError, wnkernels.weight_norm, v, _np((6,), kind="g"), 0, out=out)
    _raises_cleanly(np.exceptions.AxisError, wnkernels.weight_norm, v, _np((5, 1), kind="g"), 3,
                    out=out)
    _raises_cleanly(ValueError, wnkernels.weight_norm, v, _np((5, 1), kind="g"), 0, out=out,
                    eps=-1.0)
    _raises_cleanly(TypeError, wnkernels.weight_norm, v, _np((5, 1), "float32", kind="g"), 0,
                    out=out)


def test_out_is_keyword_only_and_eps_too():
    v, g = _np(V_SHAPE), _np((5, 1), kind="g")
    with pytest.raises(TypeError):
        wnkernels.weight_norm(v, g, 0, 0.0)
    with pytest.raises(TypeError):
        wnkernels.weight_norm(v, g, 0, 0.0, _out())


def test_set_num_threads_rejects_nonpositive():
    for n in [0, -1]:
        with pytest.raises(ValueError):
            wnkernels.set_num_threads(n)
    for n in [1.5, "2", None]:
        with pytest.raises(TypeError):
            wnkernels.set_num_threads(n)


# --------------------------------------------------------------------------- torch tensors

def test_torch_shape_errors_write_nothing():
    torch = pytest.importorskip("torch")
    v = torch.from_numpy(_np(V_SHAPE))
    g = torch.from_numpy(_np((5, 1), kind="g"))
    out = torch.full(V_SHAPE, SENTINEL, dtype=torch.float64)
    _raises_cleanly(ValueError, wnkernels.weight_norm, v, torch.ones(6, dtype=torch.float64), 0,
                    out=out, names=["g"], shapes=[(6,), V_SHAPE])
    _raises_cleanly(ValueError, wnkernels.weight_norm, v, g, 0,
                    out=torch.full((7, 5), SENTINEL, dtype=torch.float64), names=["out"])
    _raises_cleanly(ValueError, wnkernels.weight_norm, v, g, 0,
                    out=torch.full(V_SHAPE, SENTINEL, dtype=torch.float32), names=["out"])
    _raises_cleanly(ValueError, wnkernels.weight_norm, v, g, 0, out=out, eps=-1.0, names=["eps"])
    _raises_cleanly(np.exceptions.AxisError, wnkernels.weight_norm, v, g, 2, out=out)
    _raises_cleanly(np.exceptions.AxisError, wnkernels.weight_norm, v, g, (1, -1), out=out)
    buf = torch.full((6, 7), SENTINEL, dtype=torch.float64)
    buf[:5] = v
    _raises_cleanly(ValueError, wnkernels.weight_norm, buf[:5], g, 0, out=buf[1:], names=["out"])
    gw = torch.from_numpy(_np((7, 5), kind="grad"))
    _raises_cleanly(ValueError, wnkernels.weight_norm_backward, gw, v, g, g.clone(), 0,
                    names=["grad_w"], shapes=[(7, 5), V_SHAPE])
    _raises_cleanly(ValueError, wnkernels.weight_norm_backward, v.clone(), v, g,
                    torch.ones(4, dtype=torch.float64), 0, names=["norms"])
