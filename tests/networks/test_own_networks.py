"""Issue 18's acceptance: users' own networks, unlike the demo's, through every tool.

For each network of ``user_networks.py`` (U-Net of output stride 32 returning a tensor,
DeepLabV3+ returning a torchvision-style dict with logits at 1/4, Hugging Face's Segformer
returning ``.logits`` at 1/4 and needing >= 32 px), with random weights and nothing
downloaded: a checkpoint whose unary lives in the user's module; ``convcrf-export`` in all
three flavours (constraints probed, verified against PyTorch); ``convcrf-run`` on frames of
77 x 101 with the labels of the PyTorch and ONNX Runtime backends agreeing; ``convcrf-bench``.

The checkpoints are written by a training script in its own process; the commands find the
architectures through ``--import user_networks.py``.

segmentation-models-pytorch 0.6 cannot be used here: it needs torchvision (through timm), and
PyPI's torchvision 0.28 for Linux is the CUDA build, which does not import beside the CPU build
of torch 2.13 ("operator torchvision::nms does not exist"). ``user_networks`` therefore rebuilds
smp's U-Net and DeepLabV3+ small; the Segformer is the real class (transformers, the test
extra).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from convcrf_deploy.metadata import ONNX_KEYS  # noqa: E402
# USER_MODULE: the user's module, which the commands load with ``--import`` (the commands
# run in their own processes, so their ``--import`` is what registers the architectures).
from onnx_unaries import USER_MODULE, export_onnx_unary  # noqa: E402

HERE = Path(__file__).resolve().parent
IMPORT = ["--import", str(USER_MODULE)]

CLASSES = ["background", "road", "car", "person"]
FRAME_SIZE = (77, 101)        # odd: no network here runs at it without padding

#: name -> (registered architecture, expected (pad_multiple, min_size))
NETWORKS = {
    "unet": ("test_unet32", (32, 1)),
    "deeplabv3plus": ("test_deeplabv3plus", (16, 1)),
    "segformer": ("test_segformer", (4, 32)),
}

#: The user's training script, cut short: the network from their module, a ConvCRF, saved
#: with save_model (no input constraints recorded: the tools find them). Random weights with
#: He initialisation, whose activations keep their variance through the layers, so that the
#: logits vary over the image as a trained network's do (with the default initialisation the
#: deep networks give one class everywhere, and label agreement would prove nothing).
TRAINING_SCRIPT = """
import sys
import torch
from convcrf_deploy import ConvCRF, CRFConfig, SegmentationModel, save_model
from convcrf_deploy.metadata import ModelMetadata
from convcrf_deploy.model import build_unary
import user_networks  # noqa: F401  (registers the architectures)

classes = sys.argv[1].split(",")
for architecture, path in zip(sys.argv[2::2], sys.argv[3::2]):
    torch.manual_seed(0)
    unary = build_unary({"name": architecture, "kwargs": {"num_classes": len(classes)}})
    for module in unary.modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    crf = ConvCRF(CRFConfig(num_classes=len(classes), filter_size=5, blur=4, iterations=3))
    model = SegmentationModel(unary, crf, ModelMetadata(classes, resize="none"))
    save_model(model.eval(), path)
"""


def _has_transformers() -> bool:
    import importlib.util
    return importlib.util.find_spec("transformers") is not None


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """``name -> checkpoint`` written by the user's training script in its own process."""
    folder = tmp_path_factory.mktemp("own-networks")
    wanted = [name for name in NETWORKS if name != "segformer" or _has_transformers()]
    argv = [",".join(CLASSES)]
    for name in wanted:
        (folder / name).mkdir()
        argv += [NETWORKS[name][0], str(folder / name / "model.pt")]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1",
                   "PYTHONPATH": os.pathsep.join(filter(None, [
                       str(HERE), _package_root(), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", TRAINING_SCRIPT, *argv], env=environment,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return {name: folder / name / "model.pt" for name in wanted}


def _package_root() -> str:
    import convcrf_deploy
    return str(Path(convcrf_deploy.__file__).resolve().parents[1])


@pytest.fixture(scope="module", params=sorted(NETWORKS))
def network(request, checkpoints):
    """``(name, folder, checkpoint)`` of one network."""
    name = request.param
    if name not in checkpoints:
        pytest.skip("transformers (the test extra) is needed for the Segformer network")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")    # nothing may be downloaded
    return name, checkpoints[name].parent, checkpoints[name]


def _export(checkpoint: Path, flavor: str, capsys) -> Path:
    from convcrf_deploy.cli.export import main as export
    out = checkpoint.with_name(f"model.{flavor}.onnx")
    if not out.exists():
        assert export([str(checkpoint), "-o", str(out), "--flavor", flavor, *IMPORT]) == 0, \
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
                "--view", "mask", "--resize", "none", "--save", str(out / "mask_%05d.png"),
                *IMPORT]) == 0, capsys.readouterr().err
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
                  "--iterations", "2", "--warmup", "1", "--threads", "1", *IMPORT]) == 0, \
        capsys.readouterr().err
    table = capsys.readouterr().out
    assert "torch" in table and "onnxruntime" in table


# ---- an ONNX unary (the input of ``convcrf-export --unary``, issue 18 item 4) -----------------

def test_an_onnx_unary_exported_by_torch_onnx_runs_like_its_network(tmp_path):
    import onnxruntime as ort
    path = tmp_path / "unet.onnx"
    network = export_onnx_unary("test_unet32", path, size=(96, 160), num_classes=len(CLASSES))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    image = torch.randn(1, 3, 64, 128)
    (logits,) = session.run(None, {"input": image.numpy()})
    with torch.no_grad():
        expected = network(image).numpy()
    assert logits.shape == (1, len(CLASSES), 64, 128)
    np.testing.assert_allclose(logits, expected, atol=1e-4)


# ---- eval and train pad like the backends (third new-user trial) -----------------------------

def _labelled_folder(folder: Path) -> Path:
    """Two labelled frames of the synthetic scene at FRAME_SIZE, labels in the networks'
    classes (the sample layout: NAME_0img.png + NAME_5labels.png)."""
    from convcrf_deploy.data.scenes import SyntheticScene
    folder.mkdir()
    scene = SyntheticScene(*FRAME_SIZE, seed=5)
    for t in range(2):
        image, labels = scene.render(7 * t)
        cv2.imwrite(str(folder / f"f{t}_0img.png"), image[:, :, ::-1])
        cv2.imwrite(str(folder / f"f{t}_5labels.png"),
                    (np.asarray(labels) % len(CLASSES)).astype(np.uint8))
    return folder


def test_convcrf_eval_and_train_pad_frames_the_network_cannot_take(network, tmp_path, capsys):
    """Before: ``convcrf-eval dataset`` and ``convcrf-train --unary-model`` ran the unary at the
    images' own size (77 x 101), which these networks refuse ("input must be multiple of 32",
    status 2), while run, bench and export probed the sizes and padded."""
    from convcrf_deploy.cli.eval import main as evaluate
    from convcrf_deploy.cli.train import main as train
    _, _, checkpoint = network
    data = _labelled_folder(tmp_path / "data")
    report = tmp_path / "eval.json"
    assert evaluate(["dataset", str(checkpoint), "--data", str(data), "--quiet",
                     "--json", str(report), *IMPORT]) == 0, capsys.readouterr().err
    import json
    methods = json.loads(report.read_text())["methods"]
    assert set(methods) == {"unary", "crf"}
    assert train(["crf", "--unary-model", str(checkpoint), "--data", str(data), "--epochs", "1",
                  "--holdout", "0.5", "--quiet", "--out", str(tmp_path / "trained.pt"),
                  *IMPORT]) == 0, capsys.readouterr().err
    assert (tmp_path / "trained.pt").is_file()
    # The library functions behind them probe a copy: the caller's model is not changed.
    # (The commands' --import registered the architectures in this process.)
    from convcrf_deploy.data.folder import LabelledFolder
    from convcrf_deploy.evaluation import evaluate_model
    from convcrf_deploy.model import load_model
    model = load_model(checkpoint)
    before = model.metadata
    result = evaluate_model(model, LabelledFolder(data, num_classes=len(CLASSES)))
    assert result["num_images"] == 2 and model.metadata == before
