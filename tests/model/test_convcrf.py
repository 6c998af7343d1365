"""ConvCRF layer: configuration, shapes, dtypes, code paths and input validation."""
from __future__ import annotations

import math

import pytest
import torch

from convcrf_deploy import CRFConfig, ConvCRF, ops
from convcrf_deploy.model import pool, upsample

NATIVE = ops.native_available("cpu")


def random_inputs(n=1, c=4, h=23, w=31, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, h, w, generator=g) * 3, torch.rand(n, 3, h, w, generator=g) * 255


# ---- CRFConfig ----------------------------------------------------------------------------

def test_defaults_follow_the_paper():
    cfg = CRFConfig()
    assert (cfg.filter_size, cfg.blur, cfg.iterations) == (11, 4, 5)
    assert (cfg.appearance_position_bandwidth, cfg.appearance_color_bandwidth) == (80.0, 13.0)
    assert (cfg.smoothness_bandwidth, cfg.appearance_weight, cfg.smoothness_weight) == (3.0, 10.0, 3.0)
    assert cfg.compatibility == "potts" and not cfg.learned_features


@pytest.mark.parametrize("field,value", [
    ("filter_size", 6), ("filter_size", 0), ("filter_size", 33), ("filter_size", 7.0),
    ("blur", 0), ("iterations", -1), ("num_classes", 0), ("appearance_color_bandwidth", 0.0),
    ("smoothness_bandwidth", -3.0), ("appearance_weight", float("nan")),
    ("compatibility", "dense"), ("trainable", ("bandwidth",)), ("learned_features", 1),
])
def test_invalid_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=f"CRFConfig.{field}"):
        CRFConfig(**{field: value})


def test_config_round_trips_through_json():
    cfg = CRFConfig(num_classes=3, filter_size=5, compatibility="learned", learned_features=True,
                    trainable=("kernel_weights",))
    assert CRFConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(ValueError, match="unknown field"):
        CRFConfig.from_dict({**cfg.to_dict(), "colour": 1})


# ---- forward ------------------------------------------------------------------------------

@pytest.mark.parametrize("h,w,blur,k", [
    (23, 31, 4, 7),    # not divisible by blur
    (5, 3, 4, 11),     # smaller than blur and than the window
    (1, 1, 1, 3),      # a single pixel
    (16, 16, 1, 5),    # no blur
    (30, 18, 3, 5),    # odd blur
])
def test_output_is_a_distribution_of_the_input_shape(h, w, blur, k):
    crf = ConvCRF(CRFConfig(num_classes=4, filter_size=k, blur=blur))
    z, img = random_inputs(2, 4, h, w)
    q = crf(z, img)
    assert q.shape == z.shape
    torch.testing.assert_close(q.sum(dim=1), torch.ones(2, h, w))
    assert bool((q >= 0).all())


@pytest.mark.skipif(not NATIVE, reason="native CPU library not built")
@pytest.mark.parametrize("h,w,blur,k", [(23, 31, 4, 7), (61, 83, 4, 11), (5, 3, 4, 5), (20, 22, 2, 3),
                                       (17, 9, 1, 5), (26, 40, 3, 7)])
def test_fused_inference_equals_differentiable_path_and_reference(h, w, blur, k):
    cfg = CRFConfig(num_classes=6, filter_size=k, blur=blur)
    crf = ConvCRF(cfg)
    z, img = random_inputs(2, 6, h, w, seed=h)
    with torch.no_grad():
        fused = crf(z, img)  # no grad + CPU + native library -> the fused native path
    differentiable = crf(z, img)
    reference = ConvCRF(cfg, implementation="reference")(z, img)
    # Messages sum up to k*k terms of size ~10: summation order moves probabilities by ~1e-6.
    torch.testing.assert_close(fused, differentiable.detach(), rtol=0, atol=2e-5)
    torch.testing.assert_close(differentiable, reference, rtol=0, atol=2e-5)


def test_batch_elements_are_independent():
    crf = ConvCRF(CRFConfig(num_classes=4, filter_size=5))
    z, img = random_inputs(3, 4, 19, 21)
    with torch.no_grad():
        batched = crf(z, img)
        single = torch.cat([crf(z[i:i + 1], img[i:i + 1]) for i in range(3)])
    torch.testing.assert_close(batched, single, rtol=0, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs(dtype):
    crf = ConvCRF(CRFConfig(num_classes=4, filter_size=5))
    z, img = random_inputs(1, 4, 17, 18)
    with torch.no_grad():
        q_half = crf(z.to(dtype), img.to(dtype))
        q_full = crf(z.to(dtype).float(), img.to(dtype).float())
    assert q_half.dtype == dtype
    # Computed in fp32 internally: only the final rounding to `dtype` differs.
    torch.testing.assert_close(q_half.float(), q_full, rtol=0, atol=1e-2)


def test_zero_iterations_is_softmax_of_the_unary():
    crf = ConvCRF(CRFConfig(num_classes=4, iterations=0))
    z, img = random_inputs()
    torch.testing.assert_close(crf(z, img), torch.softmax(z, dim=1))


def test_messages_pull_a_noisy_pixel_towards_its_neighbours():
    # A uniform image whose unary is confidently class 0 everywhere but one pixel, which
    # prefers class 1 weakly: the CRF must flip that pixel to class 0.
    z = torch.zeros(1, 2, 15, 15)
    z[:, 0] = 2.0
    z[0, :, 7, 7] = torch.tensor([0.0, 0.5])
    img = torch.full((1, 3, 15, 15), 128.0)
    q = ConvCRF(CRFConfig(num_classes=2, filter_size=5, blur=1))(z, img)
    assert q[0, 0, 7, 7] > 0.5
    assert torch.softmax(z, 1)[0, 0, 7, 7] < 0.5


def test_pool_and_upsample_shapes():
    x = torch.rand(1, 2, 9, 10)
    assert pool(x, 4).shape == (1, 2, 3, 3)
    torch.testing.assert_close(pool(x, 4)[0, 0, 2, 2], x[0, 0, 8:, 8:].mean())
    assert upsample(pool(x, 4), 4, 9, 10).shape == x.shape


# ---- training -------------------------------------------------------------------------------

def test_parameters_respect_trainable_groups():
    crf = ConvCRF(CRFConfig(num_classes=3, trainable=("kernel_weights",), compatibility="learned",
                            learned_features=True))
    trainable = {name for name, p in crf.named_parameters() if p.requires_grad}
    assert trainable == {"appearance_weight", "smoothness_weight"}


def test_gradients_reach_every_trainable_parameter():
    cfg = CRFConfig(num_classes=3, filter_size=5, compatibility="learned", learned_features=True)
    crf = ConvCRF(cfg)
    z, img = random_inputs(1, 3, 14, 18)
    z.requires_grad_(True)
    crf(z, img)[:, 0].sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    for name, p in crf.named_parameters():
        assert p.grad is not None and bool(torch.isfinite(p.grad).all()), name
        if name != "feature_transform.bias":  # the bias shifts both positions: no effect
            assert p.grad.abs().sum() > 0, name


def test_bandwidths_stay_positive_and_are_read_back():
    crf = ConvCRF(CRFConfig(smoothness_bandwidth=2.5))
    assert math.isclose(crf.log_smoothness_bandwidth.exp().item(), 2.5, rel_tol=1e-6)


# ---- bad input ------------------------------------------------------------------------------

@pytest.mark.parametrize("make,match", [
    (lambda z, i: (z[0], i), r"unary_logits must have shape \[N, C, H, W\]"),
    (lambda z, i: (z, i[0]), r"image must have shape \[N, 3, H, W\]"),
    (lambda z, i: (z, i[:, :2]), "3 \\(RGB\\) channels"),
    (lambda z, i: (z[:, :, :-1], i), "disagree on N, H or W"),
    (lambda z, i: (z, torch.cat([i, i])), "disagree on N, H or W"),
    (lambda z, i: (z[:, :3], i), "4 classes|3 classes"),
    (lambda z, i: (z[:, :, :0], i[:, :, :0]), "empty"),
    (lambda z, i: (z.long(), i), "floating point"),
    (lambda z, i: (z.numpy(), i), "torch.Tensor"),
])
def test_bad_inputs_are_value_errors(make, match):
    crf = ConvCRF(CRFConfig(num_classes=4, filter_size=5))
    z, img = random_inputs()
    with pytest.raises(ValueError, match=match):
        crf(*make(z, img))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("grad", [False, True])
def test_non_finite_unary_is_a_value_error_on_both_paths(bad, grad):
    crf = ConvCRF(CRFConfig(num_classes=4, filter_size=5))
    z, img = random_inputs()
    z[0, 2, 5, 7] = bad
    with torch.set_grad_enabled(grad), pytest.raises(ValueError, match="NaN or infinite"):
        crf(z, img)


# ---- warm start (video) ---------------------------------------------------------------------

@pytest.mark.parametrize("weight", [1.0, 0.5])
def test_warm_start_from_a_previous_result_on_both_paths(weight):
    crf = ConvCRF(CRFConfig(num_classes=4, filter_size=5))
    z, img = random_inputs(1, 4, 21, 26)
    previous = torch.softmax(torch.randn(1, 4, 21, 26), dim=1)
    with torch.no_grad():
        fused = crf(z, img, initial_q=previous, initial_q_weight=weight, iterations=2)
    differentiable = crf(z, img, initial_q=previous, initial_q_weight=weight, iterations=2)
    torch.testing.assert_close(fused, differentiable.detach(), rtol=0, atol=2e-5)
    # Starting from softmax(z) with the same iteration count is the ordinary forward.
    cold = crf(z, img, initial_q=torch.softmax(z, 1), iterations=2)
    torch.testing.assert_close(cold, crf(z, img, iterations=2), rtol=0, atol=1e-6)
    assert not torch.allclose(fused, crf(z, img, iterations=2), atol=1e-3)


def test_warm_start_arguments_are_validated():
    crf = ConvCRF(CRFConfig(num_classes=4, filter_size=5))
    z, img = random_inputs()
    with pytest.raises(ValueError, match="initial_q must have the shape"):
        crf(z, img, initial_q=torch.rand(1, 4, 5, 5))
    with pytest.raises(ValueError, match="initial_q_weight"):
        crf(z, img, initial_q=torch.softmax(z, 1), initial_q_weight=1.5)
    with pytest.raises(ValueError, match="iterations"):
        crf(z, img, iterations=-1)


# ---- fast mode: intermediate iterations on the blurred grid ------------------------------------

@pytest.mark.parametrize("iterations", [1, 3])
def test_blurred_intermediate_iterations_on_both_paths(iterations):
    cfg = CRFConfig(num_classes=5, filter_size=5, iterations=iterations,
                    intermediate_resolution="blurred")
    crf = ConvCRF(cfg)
    z, img = random_inputs(2, 5, 27, 38)
    with torch.no_grad():
        fused = crf(z, img)
    differentiable = crf(z, img)
    torch.testing.assert_close(fused, differentiable.detach(), rtol=0, atol=2e-5)
    exact = ConvCRF(cfg.replace(intermediate_resolution="full"))(z, img)
    if iterations == 1:  # a single iteration is the last one: identical to the full mode
        torch.testing.assert_close(differentiable, exact, rtol=0, atol=1e-6)
    else:  # an approximation: close to, but not the same as, the exact algorithm
        assert not torch.allclose(differentiable, exact, atol=1e-4)
        agree = (differentiable.argmax(1) == exact.argmax(1)).float().mean()
        assert agree > 0.9


@pytest.mark.skipif(not ops.native_available(), reason="native CPU library not built")
@pytest.mark.parametrize("learned_features, fast_path", [
    (False, "native_pairwise_kernel_from_image"), (True, "native_kernel_pair")])
def test_inference_builds_the_pairwise_kernel_natively(monkeypatch, learned_features, fast_path):
    """Under no_grad the trained weights (nn.Parameters) must not push inference off the native
    pairwise kernel (the whole kernel from the image, or with a learned feature transform the
    fused kernel pair); its result equals the composed differentiable ops."""
    crf = ConvCRF(CRFConfig(num_classes=3, filter_size=5, blur=2,
                            learned_features=learned_features))
    image = torch.rand(2, 3, 17, 23) * 255
    with torch.enable_grad():
        composed = crf.pairwise_kernel(image, 17, 23).detach()
    calls = []
    original = getattr(ops, fast_path)

    def spy(*args, **kwargs):
        out = original(*args, **kwargs)
        calls.append(out is not None)
        return out

    monkeypatch.setattr(ops, fast_path, spy)
    with torch.no_grad():
        fused = crf.pairwise_kernel(image, 17, 23)
    assert calls == [True]
    torch.testing.assert_close(fused, composed, rtol=1e-5, atol=2e-6)


@pytest.mark.skipif(not ops.native_available(), reason="native CPU library not built")
def test_training_path_gradients_match_the_reference_implementation():
    """The differentiable path with the native full-resolution op gives the gradients of the
    pure-PyTorch reference (unary and every trainable parameter)."""
    cfg = CRFConfig(num_classes=4, filter_size=5, blur=4, iterations=3)
    torch.manual_seed(0)
    native, reference = ConvCRF(cfg), ConvCRF(cfg, implementation="reference")
    reference.load_state_dict(native.state_dict())
    z = torch.randn(2, 4, 21, 26) * 2
    image = torch.rand(2, 3, 21, 26) * 255
    weights = torch.rand(2, 4, 21, 26)
    grads = []
    for model in (native, reference):
        zz = z.clone().requires_grad_(True)
        (model(zz, image) * weights).sum().backward()
        grads.append([zz.grad] + [p.grad for p in model.parameters() if p.requires_grad])
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want, rtol=2e-4, atol=2e-5)
