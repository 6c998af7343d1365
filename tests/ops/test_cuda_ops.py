"""The CUDA kernels of both ops against the native CPU library, on a real GPU.

Skipped where PyTorch sees no CUDA device (CI collects and skips them); `scripts/gpu_check.sh`
runs them on a machine with an NVIDIA GPU. With CONVCRF_REQUIRE_NATIVE=1 a missing CUDA
library fails instead of silently testing the PyTorch reference on the GPU.

Covered: fp32 and fp16, image borders (every case has them), odd sizes, windows larger than
the image, batch sizes and class counts beyond the CUDA grid limits (65535 in y and z), the
tiled and the global-memory kernels (many feature channels / classes), and ConvCRF end to end.
"""
import os

import pytest

torch = pytest.importorskip("torch")

from convcrf_deploy import CRFConfig, ConvCRF, ops  # noqa: E402

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

GRID_LIMIT = 65535


@pytest.fixture(autouse=True)
def cuda_library():
    if not ops.native_available("cuda"):
        if os.environ.get("CONVCRF_REQUIRE_NATIVE") == "1":
            pytest.fail("libconvcrf_cuda is not built/installed but CONVCRF_REQUIRE_NATIVE=1")
        pytest.skip("libconvcrf_cuda is not built")
    if not ops.native_available("cpu"):
        pytest.skip("the CPU library (the reference of these tests) is not built")


def cpu_gaussian_kernel(features, k):
    return ops.gaussian_kernel(features.float().cpu(), k)


def cpu_message_passing(q, kernel, k):
    return ops.message_passing(q.float().cpu(), kernel.float().cpu(), k)


def tolerance(dtype):
    # fp16 stores inputs and outputs in half precision (fp32 accumulation inside): relative
    # error ~ 2^-11 per value, summed over up to k*k terms.
    return {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 2e-2, "rtol": 1e-2}


SHAPES = [  # (n, d or c, h, w, k)
    (1, 5, 1, 1, 3),        # one pixel: every neighbour is outside the image
    (2, 5, 61, 83, 7),      # odd sizes, batch 2
    (1, 5, 7, 500, 11),     # thin and wide
    (1, 3, 5, 6, 31),       # window far larger than the image
    (3, 21, 33, 17, 13),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("n, d, h, w, k", SHAPES)
def test_gaussian_kernel_matches_cpu(n, d, h, w, k, dtype):
    generator = torch.Generator().manual_seed(n * 1000 + h + w + k)
    features = (torch.randn(n, d, h, w, generator=generator) * 0.5).to(dtype)
    gpu = ops.gaussian_kernel(features.cuda(), k)
    assert gpu.dtype == dtype and gpu.shape == (n, k * k, h, w)
    torch.testing.assert_close(gpu.float().cpu(), cpu_gaussian_kernel(features, k), **tolerance(dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("n, c, h, w, k", SHAPES)
def test_message_passing_matches_cpu(n, c, h, w, k, dtype):
    generator = torch.Generator().manual_seed(n * 7 + c + h + w + k)
    q = torch.rand(n, c, h, w, generator=generator).to(dtype)
    kernel = torch.rand(n, k * k, h, w, generator=generator).to(dtype)
    gpu = ops.message_passing(q.cuda(), kernel.cuda(), k)
    assert gpu.dtype == dtype and gpu.shape == q.shape
    torch.testing.assert_close(gpu.float().cpu(), cpu_message_passing(q, kernel, k), **tolerance(dtype))


def test_many_feature_channels_and_classes_use_the_global_memory_kernels():
    # Too many channels for a shared-memory tile: the fallback kernels must agree too.
    features = torch.randn(1, 300, 19, 23) * 0.05  # scaled so that K is not all underflow
    torch.testing.assert_close(ops.gaussian_kernel(features.cuda(), 11).cpu(),
                               cpu_gaussian_kernel(features, 11), atol=1e-5, rtol=1e-5)
    q, kernel = torch.rand(2, 600, 9, 11), torch.rand(2, 121, 9, 11)
    torch.testing.assert_close(ops.message_passing(q.cuda(), kernel.cuda(), 11).cpu(),
                               cpu_message_passing(q, kernel, 11), atol=1e-4, rtol=1e-5)


def test_batch_beyond_the_grid_limit():
    n = GRID_LIMIT + 3  # images are looped over beyond grid z
    features = torch.randn(n, 2, 2, 3)
    gpu = ops.gaussian_kernel(features.cuda(), 3).cpu()
    torch.testing.assert_close(gpu, cpu_gaussian_kernel(features, 3), atol=1e-5, rtol=1e-5)
    q = torch.rand(n, 2, 2, 3)
    torch.testing.assert_close(ops.message_passing(q.cuda(), gpu.cuda(), 3).cpu(),
                               cpu_message_passing(q, gpu, 3), atol=1e-5, rtol=1e-5)


def test_classes_beyond_the_grid_limit():
    q, kernel = torch.rand(1, GRID_LIMIT + 5, 2, 3), torch.rand(1, 9, 2, 3)
    torch.testing.assert_close(ops.message_passing(q.cuda(), kernel.cuda(), 3).cpu(),
                               cpu_message_passing(q, kernel, 3), atol=1e-5, rtol=1e-5)


def test_height_beyond_the_grid_limit():
    h = GRID_LIMIT * 16 + 7  # more y tiles than grid y for any tile height <= 16
    features = torch.randn(1, 2, h, 1)
    gpu = ops.gaussian_kernel(features.cuda(), 3).cpu()
    torch.testing.assert_close(gpu, cpu_gaussian_kernel(features, 3), atol=1e-5, rtol=1e-5)


def test_empty_tensors():
    assert ops.gaussian_kernel(torch.randn(0, 5, 4, 4).cuda(), 3).shape == (0, 9, 4, 4)
    assert ops.message_passing(torch.rand(1, 0, 4, 4).cuda(), torch.rand(1, 9, 4, 4).cuda(), 3).shape == (1, 0, 4, 4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_convcrf_on_the_gpu_matches_the_cpu(dtype):
    crf = ConvCRF(CRFConfig(num_classes=21, filter_size=7)).eval()
    generator = torch.Generator().manual_seed(5)
    logits = torch.randn(2, 21, 61, 83, generator=generator) * 3
    image = torch.rand(2, 3, 61, 83, generator=generator) * 255
    with torch.inference_mode():
        expected = crf(logits, image)
        gpu = crf.cuda()(logits.to(dtype).cuda(), image.to(dtype).cuda()).float().cpu()
    atol = 1e-4 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(gpu, expected, atol=atol, rtol=0)
    assert (gpu.argmax(1) == expected.argmax(1)).float().mean() > (0.9999 if dtype == torch.float32 else 0.99)
