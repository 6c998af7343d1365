"""Issue 18's acceptance for ``--unary``: an ONNX unary exported by ``torch.onnx`` from one of
the acceptance networks (the DeepLabV3+ of ``user_networks.py``: a dilated encoder of output
stride 16, ASPP, logits at 1/4 returned in a dict), the CRF attached in all three flavours,
``convcrf-run`` on 77 x 101 frames, and its labels against the PyTorch path (the network in
PyTorch + the same ConvCRF, padded alike).
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from onnx_unaries import export_onnx_unary  # noqa: E402

CLASSES = ["background", "road", "car", "person"]
FRAME_SIZE = (77, 101)


@pytest.fixture(scope="module")
def deeplab(tmp_path_factory):
    """``(folder, network, unary.onnx, crf.pt)``: the network with He-initialised random
    weights (so that its labels vary over the image), exported as users do."""
    from convcrf_deploy import ConvCRF, CRFConfig
    from convcrf_deploy.model import save_crf
    folder = tmp_path_factory.mktemp("onnx-deeplab")
    network = export_onnx_unary("test_deeplabv3plus", folder / "unary.onnx", size=(96, 160),
                                num_classes=len(CLASSES), he_init=True)
    save_crf(ConvCRF(CRFConfig(num_classes=len(CLASSES), filter_size=5, blur=4, iterations=3)),
             folder / "crf.pt")
    return folder, network, folder / "unary.onnx", folder / "crf.pt"


@pytest.mark.parametrize("flavor", ["single-file", "plugin", "portable"])
def test_deeplab_onnx_unary_through_export_and_run(deeplab, frames, flavor, tmp_path, capsys):
    from convcrf_deploy import SegmentationModel
    from convcrf_deploy.cli.export import main as export
    from convcrf_deploy.cli.run import main as run
    from convcrf_deploy.exported_model import ExportedModel
    from convcrf_deploy.model import load_crf
    from convcrf_deploy.runtime.visualize import palette_lut

    folder, network, unary, crf = deeplab
    model = folder / f"model.{flavor}.onnx"
    assert export(["--unary", str(unary), "--crf", str(crf), "--flavor", flavor,
                   "--class-names", ",".join(CLASSES), "--metadata",
                   str(_resize_none(folder)), "-o", str(model)]) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "parity PASSED" in printed and "multiples of 16" in printed, printed
    out = tmp_path / "masks"
    out.mkdir()
    assert run(["--video", str(frames), "--model", str(model), "--headless", "--no-hud",
                "--view", "mask", "--save", str(out / "mask_%05d.png")]) == 0, \
        capsys.readouterr().err
    metadata = ExportedModel.open(model).metadata
    reference = SegmentationModel(network, load_crf(crf), metadata).eval()
    lut = palette_lut(metadata.palette)
    masks = sorted(out.glob("mask_*.png"))
    assert len(masks) == 2
    for frame_path, mask_path in zip(sorted(frames.glob("*.png")), masks):
        rgb = cv2.imread(str(frame_path))[:, :, ::-1].copy()
        with torch.no_grad():     # pads 77x101 to 80x112 and crops back, as the runtime does
            labels = reference(torch.from_numpy(rgb).permute(2, 0, 1)[None].float())[0]
        expected = lut[labels.argmax(0).numpy()]
        mask = cv2.imread(str(mask_path))
        assert mask.shape[:2] == FRAME_SIZE
        assert (mask == expected).all(axis=2).mean() >= 0.999, flavor
    assert len(np.unique(mask.reshape(-1, 3), axis=0)) >= 2


def _resize_none(folder: Path) -> Path:
    """Metadata: frames fed at their own size (padded to the constraints), not stretched."""
    path = folder / "meta.json"
    path.write_text('{"resize": "none"}')
    return path
