"""The two ops against a brute-force loop over the contract in docs/ops.md.

Every implementation (native CPU in fp32 and fp64, the PyTorch reference) must equal the
literal double loop below on random shapes: borders, odd sizes, images smaller than the
window, batch > 1, 1 and 21+ classes, filter sizes 3..13.
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from convcrf_deploy import ops

NATIVE = ops.native_available("cpu")
IMPLEMENTATIONS = ["reference"] + (["native"] if NATIVE else [])


def brute_force_kernel(features: np.ndarray, k: int) -> np.ndarray:
    n, d, h, w = features.shape
    r = k // 2
    out = np.zeros((n, k * k, h, w), dtype=np.float64)
    for b, y, x, dy, dx in itertools.product(range(n), range(h), range(w), range(-r, r + 1),
                                             range(-r, r + 1)):
        yy, xx = y + dy, x + dx
        if (dy, dx) == (0, 0) or not (0 <= yy < h and 0 <= xx < w):
            continue
        diff = features[b, :, y, x].astype(np.float64) - features[b, :, yy, xx]
        out[b, (dy + r) * k + (dx + r), y, x] = math.exp(-0.5 * float(diff @ diff))
    return out


def brute_force_messages(q: np.ndarray, kernel: np.ndarray, k: int) -> np.ndarray:
    n, c, h, w = q.shape
    r = k // 2
    out = np.zeros((n, c, h, w), dtype=np.float64)
    for b, y, x, dy, dx in itertools.product(range(n), range(h), range(w), range(-r, r + 1),
                                             range(-r, r + 1)):
        yy, xx = y + dy, x + dx
        if 0 <= yy < h and 0 <= xx < w:
            out[b, :, y, x] += kernel[b, (dy + r) * k + (dx + r), y, x] * q[b, :, yy, xx]
    return out


SHAPES = [  # (n, channels, h, w, k)
    (1, 1, 1, 1, 3),      # a single pixel: everything is outside the window
    (2, 5, 9, 13, 7),     # batch, odd sizes, borders
    (1, 3, 3, 2, 5),      # smaller than the window in both directions
    (1, 21, 6, 11, 3),    # 21 classes
    (1, 24, 4, 17, 9),    # more classes, h < k
    (2, 2, 15, 4, 13),    # w < k, largest paper filter size
    (1, 7, 12, 12, 11),
]


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("n,channels,h,w,k", SHAPES)
def test_gaussian_kernel_matches_brute_force(implementation, n, channels, h, w, k):
    rng = np.random.default_rng(n * 1000 + h * 10 + k)
    features = rng.normal(scale=0.8, size=(n, channels, h, w)).astype(np.float32)
    expected = brute_force_kernel(features, k)
    got = ops.gaussian_kernel(torch.from_numpy(features), k, implementation=implementation)
    assert got.shape == (n, k * k, h, w) and got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), expected, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("n,channels,h,w,k", SHAPES)
def test_message_passing_matches_brute_force(implementation, n, channels, h, w, k):
    rng = np.random.default_rng(n * 1000 + w * 10 + k)
    q = rng.random((n, channels, h, w), dtype=np.float32)
    kernel = rng.random((n, k * k, h, w), dtype=np.float32)  # not symmetric, centre non-zero
    expected = brute_force_messages(q, kernel, k)
    got = ops.message_passing(torch.from_numpy(q), torch.from_numpy(kernel), k,
                              implementation=implementation)
    assert got.shape == q.shape
    np.testing.assert_allclose(got.numpy(), expected, rtol=2e-5, atol=2e-5)


@pytest.mark.skipif(not NATIVE, reason="native CPU library not built")
@pytest.mark.parametrize("k", [3, 5, 7, 9, 11, 13])
def test_native_equals_reference_on_larger_images(k):
    torch.manual_seed(k)
    features = torch.randn(2, 5, 37, 53) * 2
    q = torch.softmax(torch.randn(2, 21, 37, 53), dim=1)
    k_native = ops.gaussian_kernel(features, k, implementation="native")
    k_ref = ops.gaussian_kernel(features, k, implementation="reference")
    torch.testing.assert_close(k_native, k_ref, rtol=1e-5, atol=1e-6)
    m_native = ops.message_passing(q, k_ref, k, implementation="native")
    m_ref = ops.message_passing(q, k_ref, k, implementation="reference")
    torch.testing.assert_close(m_native, m_ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_float64_computes_in_float64(implementation):
    features = torch.randn(1, 3, 6, 7, dtype=torch.float64) * 3
    got = ops.gaussian_kernel(features, 5, implementation=implementation)
    expected = brute_force_kernel(features.numpy(), 5)
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_are_accumulated_in_float32(dtype):
    torch.manual_seed(0)
    q = torch.rand(1, 21, 9, 10).to(dtype)
    kernel = torch.rand(1, 49, 9, 10).to(dtype)
    got = ops.message_passing(q, kernel, 7)
    assert got.dtype == dtype
    expected = brute_force_messages(q.float().numpy(), kernel.float().numpy(), 7)
    # Sums of up to 49 terms ~ 12: a half-precision accumulator would be off by ~0.05.
    np.testing.assert_allclose(got.float().numpy(), expected, rtol=1e-2, atol=0)


def test_kernel_is_symmetric_so_messages_are_self_adjoint():
    # K[o(dy,dx), p] == K[o(-dy,-dx), p + (dy,dx)]: <M(q), g> == <q, M(g)>.
    torch.manual_seed(1)
    kernel = ops.gaussian_kernel(torch.randn(1, 4, 11, 9), 5)
    q, g = torch.rand(1, 3, 11, 9), torch.rand(1, 3, 11, 9)
    lhs = (ops.message_passing(q, kernel, 5) * g).sum()
    rhs = (q * ops.message_passing(g, kernel, 5)).sum()
    torch.testing.assert_close(lhs, rhs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_gradcheck_gaussian_kernel(implementation):
    features = torch.randn(2, 3, 5, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda f: ops.gaussian_kernel(f, 5, implementation=implementation), (features,))


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_gradcheck_message_passing(implementation):
    # A random (non-symmetric) kernel: the q-gradient must be the transposed passing.
    q = torch.rand(2, 3, 5, 6, dtype=torch.float64, requires_grad=True)
    kernel = torch.rand(2, 9, 5, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda a, b: ops.message_passing(a, b, 3, implementation=implementation), (q, kernel))


def test_gradcheck_composition_through_both_ops():
    features = torch.randn(1, 2, 6, 5, dtype=torch.float64, requires_grad=True)
    q = torch.rand(1, 2, 6, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda f, x: ops.message_passing(x, ops.gaussian_kernel(f, 3), 3), (features, q))


def test_empty_tensors_give_empty_results():
    assert ops.gaussian_kernel(torch.zeros(0, 3, 4, 5), 3).shape == (0, 9, 4, 5)
    assert ops.message_passing(torch.zeros(1, 0, 4, 5), torch.zeros(1, 9, 4, 5), 3).shape == (1, 0, 4, 5)


@pytest.mark.parametrize("filter_size", [0, 2, 8, 33, -3, 7.0, True])
def test_invalid_filter_size_is_a_value_error(filter_size):
    with pytest.raises(ValueError, match="filter_size"):
        ops.gaussian_kernel(torch.zeros(1, 2, 4, 4), filter_size)
    with pytest.raises(ValueError, match="filter_size"):
        ops.message_passing(torch.zeros(1, 2, 4, 4), torch.zeros(1, 9, 4, 4), filter_size)


def test_bad_shapes_are_value_errors():
    with pytest.raises(ValueError, match=r"\[N, D, h, w\]"):
        ops.gaussian_kernel(torch.zeros(2, 4, 4), 3)
    with pytest.raises(ValueError, match="k\\*k"):
        ops.message_passing(torch.zeros(1, 2, 4, 4), torch.zeros(1, 25, 4, 4), 3)
    with pytest.raises(ValueError, match="k\\*k"):
        ops.message_passing(torch.zeros(1, 2, 4, 4), torch.zeros(1, 9, 4, 5), 3)
    with pytest.raises(ValueError, match="floating"):
        ops.gaussian_kernel(torch.zeros(1, 2, 4, 4, dtype=torch.int64), 3)


def test_unknown_implementation_is_rejected():
    with pytest.raises(ValueError, match="implementation"):
        ops.gaussian_kernel(torch.zeros(1, 2, 4, 4), 3, implementation="fast")


@pytest.mark.skipif(not NATIVE, reason="native CPU library not built")
def test_native_library_validates_sizes_itself():
    # The C API must refuse bad sizes before touching memory, whatever Python checked.
    from convcrf_deploy import _native

    lib = _native.cpu_library()
    out = np.zeros(9, dtype=np.float32)
    feats = np.zeros(4, dtype=np.float32)
    assert lib.convcrf_gaussian_kernel_f32(feats.ctypes.data, 1, 1, 2, 2, 4, out.ctypes.data, 1) == 1
    assert lib.convcrf_gaussian_kernel_f32(feats.ctypes.data, 1, 1, -2, 2, 3, out.ctypes.data, 1) == 2
    assert lib.convcrf_message_passing_f32(None, None, 1, 1, 2, 2, 3, out.ctypes.data, 1) == 3
    assert lib.convcrf_mean_field_step_f32(feats.ctypes.data, None, None, 1, 1, 2, 2, 0, None,
                                           None, None, None, None, None, 1) == 4
    # A log-unary output without the scale that defines it.
    assert lib.convcrf_mean_field_step_f32(feats.ctypes.data, None, None, 1, 1, 2, 2, 1, None,
                                           None, out.ctypes.data, None, None, None, 1) == 3
