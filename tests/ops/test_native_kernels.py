"""The native CPU kernels against the op contract (docs/ops.md), on every instruction-set clone.

Each float kernel is compared with a NumPy float64 evaluation of the contract's formula and
with the library's own double path (the plain row loops the library had before the blocked
kernels), on borders, odd sizes, images smaller than the window, batch > 1, 1 and 21+ classes
and k = 3..13. Each test runs once per clone this CPU has (``set_cpu_isa``); clones the CPU
lacks are skipped, so a CPU with AVX-512 tests all three.
"""
from __future__ import annotations

import ctypes

import numpy as np
import pytest

from convcrf_deploy import _native

lib = _native.cpu_library()
pytestmark = pytest.mark.skipif(lib is None, reason="native CPU library not built")

# (n, channels, h, w, k): borders, odd sizes, h or w below the window, batch 2, 1 and 21+
# channels, w not a multiple of any vector width.
SHAPES = [
    (1, 1, 5, 7, 3),
    (2, 21, 9, 13, 7),
    (1, 23, 3, 2, 13),
    (1, 33, 17, 37, 11),
    (2, 4, 1, 1, 5),
    (1, 3, 6, 40, 9),
    (1, 21, 12, 17, 13),
    (3, 2, 8, 19, 1),
]


@pytest.fixture(params=list(_native.CPU_ISAS))
def isa(request):
    """Force one clone for the test, then restore the automatic choice."""
    if lib is None or request.param not in _native.supported_cpu_isas():
        pytest.skip(f"this CPU has no {request.param} (supported: "
                    f"{_native.supported_cpu_isas() if lib else 'no library'})")
    _native.set_cpu_isa(request.param)
    yield request.param
    _native.set_cpu_isa("auto")


def _ptr(a: np.ndarray) -> int:
    return a.ctypes.data_as(ctypes.c_void_p).value


def _window(k):
    r = k // 2
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            yield (dy + r) * k + (dx + r), dy, dx


def _shifted(a, dy, dx):
    """b[..., y, x] = a[..., y+dy, x+dx], zero outside the image."""
    h, w = a.shape[-2:]
    out = np.zeros_like(a)
    if abs(dy) >= h or abs(dx) >= w:
        return out  # the whole window position is outside the image
    ys, yd = slice(max(dy, 0), h + min(dy, 0)), slice(max(-dy, 0), h + min(-dy, 0))
    xs, xd = slice(max(dx, 0), w + min(dx, 0)), slice(max(-dx, 0), w + min(-dx, 0))
    out[..., yd, xd] = a[..., ys, xs]
    return out


def contract_message_passing(q, K, k):
    m = np.zeros_like(q)
    for o, dy, dx in _window(k):
        m += K[:, o:o + 1] * _shifted(q, dy, dx)
    return m


def contract_transposed(g, K, k):
    out = np.zeros_like(g)
    for o, dy, dx in _window(k):
        out += _shifted(K[:, o:o + 1] * g, -dy, -dx)
    return out


def contract_kernel_grad(g, q, k):
    n, _, h, w = q.shape
    out = np.zeros((n, k * k, h, w))
    for o, dy, dx in _window(k):
        out[:, o] = (g * _shifted(q, dy, dx)).sum(axis=1)
    return out


def contract_gaussian(f, k):
    n, _, h, w = f.shape
    out = np.zeros((n, k * k, h, w))
    inside = np.ones((1, 1, h, w))
    for o, dy, dx in _window(k):
        if dy == 0 and dx == 0:
            continue
        d2 = ((f - _shifted(f, dy, dx)) ** 2).sum(axis=1)
        out[:, o] = np.exp(-0.5 * d2) * _shifted(inside, dy, dx)[:, 0]
    return out


def _call(name, a, b, n, c, h, w, k, out_shape, dtype=np.float32, threads=2):
    out = np.full(out_shape, np.nan, dtype=dtype)
    suffix = "f64" if dtype == np.float64 else "f32"
    fn = getattr(lib, f"convcrf_{name}_{suffix}")
    keep = [np.ascontiguousarray(x, dtype) for x in (a, b) if x is not None]  # alive in the call
    _native.check(fn(*map(_ptr, keep), n, c, h, w, k, _ptr(out), threads), name)
    return out


def _inputs(shape, seed):
    n, c, h, w, k = shape
    rng = np.random.default_rng(seed)
    q = rng.random((n, c, h, w))
    K = rng.random((n, k * k, h, w))
    g = rng.standard_normal((n, c, h, w))
    return q, K, g


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_message_passing_matches_contract(isa, shape):
    n, c, h, w, k = shape
    q, K, _ = _inputs(shape, 1)
    got = _call("message_passing", q, K, n, c, h, w, k, (n, c, h, w))
    want = contract_message_passing(q, K, k)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)
    legacy = _call("message_passing", q, K, n, c, h, w, k, (n, c, h, w), dtype=np.float64)
    np.testing.assert_allclose(got, legacy, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_transposed_matches_contract(isa, shape):
    n, c, h, w, k = shape
    _, K, g = _inputs(shape, 2)
    got = _call("message_passing_transposed", g, K, n, c, h, w, k, (n, c, h, w))
    np.testing.assert_allclose(got, contract_transposed(g, K, k), rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_kernel_grad_matches_contract(isa, shape):
    n, c, h, w, k = shape
    q, _, g = _inputs(shape, 3)
    got = _call("message_passing_kernel_grad", g, q, n, c, h, w, k, (n, k * k, h, w))
    np.testing.assert_allclose(got, contract_kernel_grad(g, q, k), rtol=2e-5, atol=5e-5)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_gaussian_kernel_matches_contract(isa, shape):
    n, d, h, w, k = shape
    d = min(d, 5)  # features: positions and colours
    f = np.random.default_rng(4).standard_normal((n, d, h, w)) * 0.7
    got = _call("gaussian_kernel", f, None, n, d, h, w, k, (n, k * k, h, w))
    np.testing.assert_allclose(got, contract_gaussian(f, k), rtol=2e-6, atol=1e-6)
    legacy = _call("gaussian_kernel", f, None, n, d, h, w, k, (n, k * k, h, w), dtype=np.float64)
    np.testing.assert_allclose(got, legacy, rtol=2e-6, atol=1e-6)


def test_kernel_grad_without_classes_is_zero(isa):
    out = _call("message_passing_kernel_grad", np.zeros(1), np.zeros(1), 1, 0, 4, 5, 3,
                (1, 9, 4, 5))
    assert not out.any()


def test_results_do_not_depend_on_threads(isa):
    n, c, h, w, k = 2, 21, 23, 31, 7
    q, K, _ = _inputs((n, c, h, w, k), 5)
    one = _call("message_passing", q, K, n, c, h, w, k, (n, c, h, w), threads=1)
    for threads in (2, 3, 7, 0):
        many = _call("message_passing", q, K, n, c, h, w, k, (n, c, h, w), threads=threads)
        np.testing.assert_array_equal(one, many)


def _mean_field(unary, messages, scale, blur, threads=2):
    n, c, h, w = unary.shape
    hl, wl = -(-h // blur), -(-w // blur)
    q_low = np.full((n, c, hl, wl), np.nan, np.float32)
    q_full = np.full_like(unary, np.nan)
    status = lib.convcrf_mean_field_step_f32(
        _ptr(unary), _ptr(messages), _ptr(scale), n, c, h, w, blur, None, None, None, None,
        _ptr(q_low), _ptr(q_full), threads)
    _native.check(status, "mean-field step")
    return q_low, q_full


def test_mean_field_step_matches_its_definition(isa):
    """softmax(unary + scale * upsample(messages)), pooled: checked with NumPy (odd sizes,
    widths that are no multiple of 8 or 16)."""
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(6)
    n, c, h, w, blur = 2, 21, 19, 45, 4
    hl, wl = -(-h // blur), -(-w // blur)
    unary = (rng.standard_normal((n, c, h, w)) * 3).astype(np.float32)
    messages = (rng.standard_normal((n, c, hl, wl)) * 2).astype(np.float32)
    scale = rng.random(c).astype(np.float32)
    q_low, q_full = _mean_field(unary, messages, scale, blur)
    up = F.interpolate(torch.from_numpy(messages), scale_factor=blur, mode="bilinear",
                       align_corners=False)[:, :, :h, :w]
    logits = torch.from_numpy(unary) + torch.from_numpy(scale).view(1, -1, 1, 1) * up
    want = torch.softmax(logits.double(), dim=1)
    np.testing.assert_allclose(q_full, want.numpy(), rtol=1e-5, atol=2e-6)
    pooled = F.avg_pool2d(want, blur, ceil_mode=True, count_include_pad=False)
    np.testing.assert_allclose(q_low, pooled.numpy(), rtol=1e-5, atol=2e-6)


def test_clones_agree_with_each_other():
    """Every clone this CPU has gives the same messages within fp32 rounding."""
    isas = _native.supported_cpu_isas()
    if len(isas) < 2:
        pytest.skip("only one instruction set on this CPU")
    n, c, h, w, k = 1, 21, 30, 45, 7
    q, K, _ = _inputs((n, c, h, w, k), 7)
    results = {}
    try:
        for name in isas:
            _native.set_cpu_isa(name)
            results[name] = _call("message_passing", q, K, n, c, h, w, k, (n, c, h, w))
    finally:
        _native.set_cpu_isa("auto")
    for name, got in results.items():
        np.testing.assert_allclose(got, results["baseline"], rtol=1e-5, atol=1e-5, err_msg=name)


def test_unavailable_or_unknown_isa_is_refused():
    if "avx512" not in _native.supported_cpu_isas():
        with pytest.raises(_native.NativeError, match="instruction set"):
            _native.set_cpu_isa("avx512")
    with pytest.raises(ValueError, match="unknown instruction set"):
        _native.set_cpu_isa("sse9")
    assert _native.cpu_isa() in _native.supported_cpu_isas()


@pytest.mark.parametrize("shape", SHAPES[:6], ids=lambda s: "x".join(map(str, s)))
def test_pairwise_kernel_is_the_weighted_sum_of_two_kernels(isa, shape):
    n, _, h, w, k = shape
    rng = np.random.default_rng(8)
    fa, fb = rng.standard_normal((n, 5, h, w)) * 0.6, rng.standard_normal((n, 2, h, w)) * 0.6
    features = np.ascontiguousarray(np.concatenate([fa, fb], axis=1), np.float32)
    out = np.full((n, k * k, h, w), np.nan, np.float32)
    status = lib.convcrf_pairwise_kernel_f32(_ptr(features), n, 7, h, w, k, 5, 0.7, 3.0,
                                             _ptr(out), 2)
    _native.check(status, "pairwise kernel")
    want = 0.7 * contract_gaussian(fa, k) + 3.0 * contract_gaussian(fb, k)
    np.testing.assert_allclose(out, want, rtol=2e-6, atol=4e-6)


@pytest.mark.parametrize("shape", [(2, 5, 19, 23, 4), (1, 21, 37, 50, 4), (1, 3, 8, 9, 1),
                                   (1, 4, 11, 13, 3), (1, 2, 3, 2, 4)],
                         ids=lambda s: "x".join(map(str, s)))
def test_full_resolution_step_gradients_match_pytorch(isa, shape):
    """The native training op (forward and backward) against the PyTorch ops it replaces."""
    import torch

    from convcrf_deploy.model.convcrf import pool, upsample
    from convcrf_deploy.ops.mean_field import full_resolution_step

    n, c, h, w, blur = shape
    hl, wl = -(-h // blur), -(-w // blur)
    g = torch.Generator().manual_seed(9)
    unary = (torch.randn(n, c, h, w, generator=g) * 2).requires_grad_()
    messages = torch.randn(n, c, hl, wl, generator=g).requires_grad_()
    a_full, a_low = torch.randn(n, c, h, w, generator=g), torch.randn(n, c, hl, wl, generator=g)
    q_full, q_low = full_resolution_step(unary, messages, blur)
    got = torch.autograd.grad((q_full * a_full).sum() + (q_low * a_low).sum(), (unary, messages))
    q = torch.softmax(unary + upsample(messages, blur, h, w), dim=1)
    want = torch.autograd.grad((q * a_full).sum() + (pool(q, blur) * a_low).sum(),
                               (unary, messages))
    torch.testing.assert_close(q_full, q, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(q_low, pool(q, blur), rtol=1e-5, atol=1e-6)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=2e-6)
    # Only one of the two outputs used: the other gradient is absent (None), not zero.
    (only_low,) = torch.autograd.grad((full_resolution_step(unary, messages, blur)[1]
                                       * a_low).sum(), (messages,))
    q = torch.softmax(unary + upsample(messages, blur, h, w), dim=1)
    (want_low,) = torch.autograd.grad((pool(q, blur) * a_low).sum(), (messages,))
    torch.testing.assert_close(only_low, want_low, rtol=1e-4, atol=2e-6)
