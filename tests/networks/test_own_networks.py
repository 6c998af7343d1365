"""Issue 18's acceptance: users' own networks, unlike the demo's, through every tool.

For each network of ``user_networks.py`` (U-Net of output stride 32 returning a tensor,
DeepLabV3+ returning a torchvision-style dict with logits at 1/4, Hugging Face's Segformer
returning ``.logits`` at 1/4 and needing >= 32 px), with random weights and nothing
downloaded: a checkpoint whose unary lives in the user's module; ``convcrf-export`` in all
three flavours (constraints probed, verified against PyTorch); ``convcrf-run`` on frames of
77 x 101 with the labels of the PyTorch and ONNX Runtime backends agreeing; ``convcrf-bench``.

The user's module is registered by importing it in this process, as ``--import
user_networks.py`` does for the CLIs.

segmentation-models-pytorch 0.6 cannot be used here: it needs torchvision (through timm), and
PyPI's torchvision 0.28 for Linux is the CUDA build, which does not import beside the CPU build
of torch 2.13 ("operator torchvision::nms does not exist"). ``user_networks`` therefore rebuilds
smp's U-Net and DeepLabV3+ small; the Segformer is the real class (transformers, the test
extra).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from convcrf_deploy import ConvCRF, CRFConfig, SegmentationModel  # noqa: E402
from convcrf_deploy.metadata import ONNX_KEYS, ModelMetadata  # noqa: E402
from convcrf_deploy.model import build_unary, save_model  # noqa: E402

HERE = Path(__file__).resolve().parent
#: the user's module (what ``--import`` names on the command line).
USER_MODULE = HERE / "user_networks.py"
sys.path.insert(0, str(HERE))
import user_networks  # noqa: E402,F401  - registers the architectures

CLASSES = ["background", "road", "car", "person"]
FRAME_SIZE = (77, 101)        # odd: no network here runs at it without padding

#: name -> (registered architecture, expected (pad_multiple, min_size))
NETWORKS = {
    "unet": ("test_unet32", (32, 1)),
    "deeplabv3plus": ("test_deeplabv3plus", (16, 1)),
    "segformer": ("test_segformer", (4, 32)),
}


def _needs(name: str) -> None:
    if name == "segformer":
        os.environ.setdefault("HF_HUB_OFFLINE", "1")    # nothing may be downloaded
        pytest.importorskip("transformers", reason="transformers (the test extra) is needed "
                                                   "for the Segformer network")


def _spread(network: torch.nn.Module) -> None:
    """Random weights whose activations keep their variance through the layers (He
    initialisation), so that the logits vary over the image as a trained network's do; with
    the default initialisation deep networks give one class everywhere, and label agreement
    between backends would prove nothing."""
    for module in network.modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")


@pytest.fixture(scope="module", params=sorted(NETWORKS))
def network(request, tmp_path_factory):
    """``(name, folder, checkpoint)``: the user's network with a ConvCRF, saved as a user
    would (no constraints recorded: the tools find them)."""
    name = request.param
    _needs(name)
    architecture, _ = NETWORKS[name]
    torch.manual_seed(0)
    unary = build_unary({"name": architecture, "kwargs": {"num_classes": len(CLASSES)}})
    _spread(unary)
    crf = ConvCRF(CRFConfig(num_classes=len(CLASSES), filter_size=5, blur=4, iterations=3))
    model = SegmentationModel(unary, crf, ModelMetadata(CLASSES, resize="none")).eval()
    folder = tmp_path_factory.mktemp(name)
    save_model(model, folder / "model.pt")
    return name, folder, folder / "model.pt"


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    """A folder of two 77 x 101 frames of the synthetic street-like scene."""
    from convcrf_deploy.data.scenes import SyntheticScene
    folder = tmp_path_factory.mktemp("frames")
    scene = SyntheticScene(*FRAME_SIZE, seed=3)
    for t in range(2):
        cv2.imwrite(str(folder / f"frame_{t}.png"), scene.render(10 * t)[0][:, :, ::-1])
    return folder


def _export(checkpoint: Path, flavor: str, capsys) -> Path:
    from convcrf_deploy.cli.export import main as export
    out = checkpoint.with_name(f"model.{flavor}.onnx")
    if not out.exists():
        assert export([str(checkpoint), "-o", str(out), "--flavor", flavor]) == 0, \
            capsys.readouterr().err
        printed = capsys.readouterr().out
        assert "parity PASSED" in printed, printed
        assert "probed at" in printed
    return out


@pytest.mark.parametrize("flavor", ["single-file", "plugin", "portable"])
def test_exports_in_every_flavour_with_the_probed_constraints(network, flavor, capsys):
    name, _, checkpoint = network
    out = _export(checkpoint, flavor, capsys)
    props = {p.key: p.value for p in onnx.load(str(out), load_external_data=False).metadata_props}
    found = (int(props[ONNX_KEYS["pad_multiple"]]), int(props[ONNX_KEYS["min_size"]]))
    assert found == NETWORKS[name][1]


def _run(model: Path, frames: Path, out: Path, capsys) -> list[np.ndarray]:
    from convcrf_deploy.cli.run import main as run
    out.mkdir()
    assert run(["--video", str(frames), "--model", str(model), "--headless", "--no-hud",
                "--view", "mask", "--resize", "none",
                "--save", str(out / "mask_%05d.png")]) == 0, capsys.readouterr().err
    masks = [cv2.imread(str(path)) for path in sorted(out.glob("mask_*.png"))]
    assert len(masks) == 2 and all(m.shape[:2] == FRAME_SIZE for m in masks)
    return masks


def test_convcrf_run_labels_agree_between_pytorch_and_onnx_runtime(network, frames, capsys):
    _, folder, checkpoint = network
    onnx_file = _export(checkpoint, "single-file", capsys)
    torch_masks = _run(checkpoint, frames, folder / "run-torch", capsys)
    onnx_masks = _run(onnx_file, frames, folder / "run-onnx", capsys)
    for a, b in zip(torch_masks, onnx_masks):
        agreement = (a == b).all(axis=2).mean()
        assert agreement > 0.999, agreement
    # not a blank mask: the random network and the CRF give several classes
    assert len(np.unique(torch_masks[0].reshape(-1, 3), axis=0)) >= 2


def test_convcrf_bench_runs(network, capsys):
    from convcrf_deploy.cli.bench import main as bench
    _, _, checkpoint = network
    size = f"{FRAME_SIZE[1]}x{FRAME_SIZE[0]}"
    assert bench([str(checkpoint), "--backends", "torch,onnxruntime", "--sizes", size,
                  "--iterations", "2", "--warmup", "1", "--threads", "1"]) == 0, \
        capsys.readouterr().err
    table = capsys.readouterr().out
    assert "torch" in table and "onnxruntime" in table


# ---- an ONNX unary (the input of ``convcrf-export --unary``, issue 18 item 4) -----------------

def export_onnx_unary(architecture: str, path: Path, size: tuple[int, int],
                      num_classes: int = len(CLASSES)) -> torch.nn.Module:
    """The user's network alone, exported by ``torch.onnx`` as users do before they come to
    us: input ``input`` float32 ``[N, 3, H, W]`` normalised, output its raw logits (at 1/4
    for the DeepLabV3+ and Segformer), N, H and W dynamic, traced at ``size`` (which must meet
    the network's input constraints). Returns the PyTorch network (eval mode).

    ``convcrf-export --unary FILE`` (attaching the CRF to an ONNX unary) is built by another
    change; its tests take their ONNX unary from here."""
    from convcrf_deploy.model.outputs import select_logits

    class Logits(torch.nn.Module):
        def __init__(self, network):
            super().__init__()
            self.network = network

        def forward(self, x):
            return select_logits(self.network(x))

    torch.manual_seed(0)
    network = build_unary({"name": architecture, "kwargs": {"num_classes": num_classes}}).eval()
    example = (torch.randn(2, 3, *size),)
    dims = {axis: torch.export.Dim(name) for axis, name in ((0, "batch"), (2, "height"),
                                                            (3, "width"))}
    torch.onnx.export(Logits(network), example, str(path), dynamo=True, input_names=["input"],
                      output_names=["logits"], dynamic_shapes={"x": dims}, verbose=False)
    return network


def test_an_onnx_unary_exported_by_torch_onnx_runs_like_its_network(tmp_path):
    import onnxruntime as ort
    path = tmp_path / "unet.onnx"
    network = export_onnx_unary("test_unet32", path, size=(96, 160))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    image = torch.randn(1, 3, 64, 128)
    (logits,) = session.run(None, {"input": image.numpy()})
    with torch.no_grad():
        expected = network(image).numpy()
    assert logits.shape == (1, len(CLASSES), 64, 128)
    np.testing.assert_allclose(logits, expected, atol=1e-4)
