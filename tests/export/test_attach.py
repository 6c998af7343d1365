"""``convcrf-export --unary``: the CRF attached to an ONNX unary the user already has (issue 18
item 4), and what the verification reports about it (item 5: peak memory, the failing part).

The unary is a network unlike the demo's (logits at 1/4 resolution) exported by ``torch.onnx``;
the reference for ``convcrf-run``'s labels is the PyTorch path: that network in PyTorch + the
ConvCRF from the same CRF checkpoint.
"""
from __future__ import annotations

import json

import cv2
import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")

from onnx_unary_fixtures import (CLASSES, MEAN, STD, export_torch_unary,  # noqa: E402
                                 quarter_net, write_helper_unary)

from convcrf_deploy import ConvCRF, CRFConfig, SegmentationModel  # noqa: E402
from convcrf_deploy.cli.export import main as export_main  # noqa: E402
from convcrf_deploy.export import FLAVORS, attach_crf  # noqa: E402
from convcrf_deploy.export.attach import UNARY_SOURCE_KEY  # noqa: E402
from convcrf_deploy.metadata import ONNX_KEYS  # noqa: E402
from convcrf_deploy.model import UnarySettings, load_crf, save_crf  # noqa: E402
from convcrf_deploy.runtime.visualize import palette_lut  # noqa: E402

FRAME_SIZE = (77, 101)      # odd: the 1/4-resolution logits are cropped and resized
CRF_CONFIG = CRFConfig(num_classes=len(CLASSES), filter_size=5, blur=2, iterations=3)
SETTINGS = ["--class-names", ",".join(CLASSES), "--mean", ",".join(map(str, MEAN)),
            "--std", ",".join(map(str, STD))]


@pytest.fixture(scope="module")
def user_files(tmp_path_factory):
    """``(folder, network, unary.onnx, crf.pt)``: the user's network exported by torch.onnx
    and a CRF-only checkpoint (trained parameters moved off their defaults)."""
    folder = tmp_path_factory.mktemp("onnx-unary")
    net = quarter_net()
    unary = export_torch_unary(net, folder / "unary.onnx")
    torch.manual_seed(1)
    crf = ConvCRF(CRF_CONFIG)
    with torch.no_grad():
        crf.message_weight.mul_(torch.linspace(0.6, 1.4, len(CLASSES)))
        crf.smoothness_weight.mul_(1.5)
    save_crf(crf, folder / "crf.pt")
    return folder, net, unary, folder / "crf.pt"


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    """Two 77 x 101 frames of the synthetic street-like scene."""
    from convcrf_deploy.data.scenes import SyntheticScene
    folder = tmp_path_factory.mktemp("frames")
    scene = SyntheticScene(*FRAME_SIZE, seed=3)
    for t in range(2):
        cv2.imwrite(str(folder / f"frame_{t}.png"), scene.render(10 * t)[0][:, :, ::-1])
    return folder


def _attached(user_files, flavor, capsys) -> tuple:
    folder, _, unary, crf = user_files
    out = folder / f"model.{flavor}.onnx"
    if not out.exists():
        code = export_main(["--unary", str(unary), "--crf", str(crf), "--flavor", flavor,
                            "-o", str(out), *SETTINGS])
        captured = capsys.readouterr()
        assert code == 0, captured.err
        assert "parity PASSED" in captured.out and "peak memory" in captured.out, captured.out
        assert "4 classes at 1/4 resolution (resized bilinearly)" in captured.out
        assert "input constraints: height and width multiples of 4" in captured.out
    return out


def _pytorch_labels(net, crf_path, frame_bgr, metadata) -> np.ndarray:
    """The PyTorch path: the network in PyTorch + the ConvCRF of the same checkpoint, with the
    metadata of the exported file (its input constraints: both pad the frame alike)."""
    model = SegmentationModel(net, load_crf(crf_path), metadata).eval()
    image = torch.from_numpy(frame_bgr[:, :, ::-1].copy()).permute(2, 0, 1)[None].float()
    with torch.no_grad():
        return model(image)[0].argmax(0).numpy()


@pytest.mark.parametrize("flavor", FLAVORS)
def test_attached_graph_runs_in_convcrf_run_like_the_pytorch_path(user_files, frames, flavor,
                                                                  tmp_path, capsys):
    from convcrf_deploy.cli.run import main as run
    folder, net, _, crf = user_files
    model = _attached(user_files, flavor, capsys)
    out = tmp_path / "masks"
    out.mkdir()
    assert run(["--video", str(frames), "--model", str(model), "--headless", "--no-hud",
                "--view", "mask", "--resize", "none", "--save", str(out / "mask_%05d.png")]) == 0, \
        capsys.readouterr().err
    masks = sorted(out.glob("mask_*.png"))
    from convcrf_deploy.exported_model import ExportedModel
    metadata = ExportedModel.open(model).metadata
    assert (metadata.pad_multiple, metadata.min_size) == (4, 1)   # probed: logits at 1/4
    lut = palette_lut(metadata.palette)
    for frame_path, mask_path in zip(sorted(frames.glob("*.png")), masks):
        expected = lut[_pytorch_labels(net, crf, cv2.imread(str(frame_path)), metadata)]
        mask = cv2.imread(str(mask_path))
        assert mask.shape[:2] == FRAME_SIZE
        agreement = (mask == expected).all(axis=2).mean()
        assert agreement >= 0.999, (flavor, agreement)
    assert len(masks) == 2
    assert len(np.unique(mask.reshape(-1, 3), axis=0)) >= 2     # not one class everywhere


def test_attached_file_carries_the_metadata_the_runtime_needs(user_files, capsys):
    from convcrf_deploy.exported_model import ExportedModel
    from convcrf_deploy.runtime.backends.onnxrt import OnnxRuntimeBackend
    _, _, unary, crf_path = user_files
    model = ExportedModel.open(_attached(user_files, "single-file", capsys))
    assert model.metadata.class_names == CLASSES
    assert model.metadata.mean == pytest.approx(MEAN) and model.metadata.std == pytest.approx(STD)
    assert model.crf_config == load_crf(crf_path).config
    assert set(model.outputs) == {"probabilities", "labels", "unary_labels"}
    props = {p.key: p.value for p in model.proto.metadata_props}
    source = json.loads(props[UNARY_SOURCE_KEY])
    assert source["file"] == "unary.onnx" and source["logits"]["resized"] is True
    assert ONNX_KEYS["crf_state"] in props
    backend = OnnxRuntimeBackend(model.path, threads=1)
    assert backend.crf_executor == "native"       # the CRF runs natively from the metadata


def test_a_fixed_size_nhwc_unary_of_an_older_opset(tmp_path, capsys):
    """tf2onnx style: NHWC input and logits, batch 1 at 40x56, opset 13 (converted)."""
    unary = write_helper_unary("nhwc-fixed", tmp_path / "tf.onnx")
    report = attach_crf(unary, tmp_path / "tf.crf.onnx",
                        settings=UnarySettings(crf_config={"filter_size": 3, "blur": 2}))
    assert report.ok, report.summary()
    assert report.inputs["image"] == [1, 3, 40, 56]
    assert report.verification.size == (40, 56) and report.verification.batch == 1
    assert "NHWC" in report.unary_source and "1/2 resolution" in report.unary_source
    props = {p.key: p.value for p in onnx.load(str(report.path)).metadata_props}
    assert json.loads(props[ONNX_KEYS["input_size"]]) == [40, 56]
    assert props[ONNX_KEYS["resize"]] == "stretch"
    # The runtime stretches any frame to the fixed size.
    from convcrf_deploy.runtime import Segmenter
    segmenter = Segmenter(str(report.path), backend="onnxruntime")
    labels = segmenter(np.zeros((*FRAME_SIZE, 3), np.uint8)).labels
    assert labels.shape == FRAME_SIZE
    # Refused without resizing, with the remedy of an attached unary (third new-user trial:
    # it said "convcrf-export without --static", an option the user never gave).
    with pytest.raises(ValueError) as refused:
        Segmenter(str(report.path), backend="onnxruntime", resize="none")(
            np.zeros((*FRAME_SIZE, 3), np.uint8))
    assert "export the unary tf.onnx with a dynamic height and width" in str(refused.value)
    assert "--unary" in str(refused.value) and "without --static" not in str(refused.value)


def test_a_uint8_unary_with_a_softmax_output(tmp_path):
    unary = write_helper_unary("uint8-softmax", tmp_path / "u8.onnx")
    report = attach_crf(unary, tmp_path / "u8.crf.onnx",
                        settings=UnarySettings(crf_config={"filter_size": 3, "blur": 2}))
    assert report.ok, report.summary()
    assert "uint8" in report.unary_source and "probabilities (their log" in report.unary_source
    with pytest.raises(ValueError, match="normalises the image itself"):
        attach_crf(unary, tmp_path / "u8b.onnx",
                   settings=UnarySettings(metadata={"mean": [0.5, 0.5, 0.5]}))


@pytest.mark.parametrize("kind, message", [
    ("two-inputs", "has 2 inputs ('input', 'scale'); an ONNX unary takes one image input"),
    ("argmax-output", "has no float [N, C, h, w] output (its outputs: 'seg' int64"),
    ("two-channels", "with no axis of 3 channels"),
    # new-user trial: a traceback, a misleading 'num_classes must be >= 2', a file the runtime
    # then refused
    ("external-data-missing", "external data cannot be read"),
    ("one-channel", "one channel (a label map or one score), not one logit per class"),
    ("batch-2", "takes a fixed batch of 2 images; the runtime runs one frame at a time"),
])
def test_bad_unary_files_get_one_line(kind, message, tmp_path, capsys):
    unary = write_helper_unary(kind, tmp_path / f"{kind}.onnx")
    assert export_main(["--unary", str(unary), "-o", str(tmp_path / "out.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out.onnx").exists()


def test_a_pytorch_file_given_as_the_onnx_unary_is_named(user_files, capsys):
    _, _, _, crf = user_files
    assert export_main(["--unary", str(crf), "-o", str(crf.with_suffix(".onnx"))]) == 2
    err = capsys.readouterr().err.strip()
    assert "is a zip archive" in err and "not as the ONNX unary" in err and \
        len(err.splitlines()) == 1


def test_a_crf_checkpoint_with_another_class_count_is_refused(user_files, tmp_path, capsys):
    _, _, unary, _ = user_files
    save_crf(ConvCRF(CRFConfig(num_classes=3)), tmp_path / "crf3.pt")
    assert export_main(["--unary", str(unary), "--crf", str(tmp_path / "crf3.pt"),
                        "-o", str(tmp_path / "out.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert "the CRF has 3 classes but the unary" in err and "outputs 4" in err, err
    assert len(err.splitlines()) == 1


def test_fp16_failure_names_the_unary_and_fp16_crf_fixes_it(tmp_path, capsys):
    """A unary whose activations overflow fp16: --fp16 fails naming the criterion, the unary
    and --fp16 crf; --fp16 crf (the unary stays fp32) passes."""
    unary = write_helper_unary("fp16-overflow", tmp_path / "big.onnx")
    out = tmp_path / "big.crf.onnx"
    common = ["--unary", str(unary), "-o", str(out), "--crf-config", "filter_size=3,blur=2",
              "--height", "48", "--width", "64"]
    assert export_main([*common, "--fp16"]) == 1
    captured = capsys.readouterr()
    failure = next(line for line in captured.out.splitlines() if "FAILED:" in line)
    assert "exceeds the tolerance 0.02" in failure, captured.out       # the criterion
    assert "the failure is in the unary network" in failure            # the part
    assert "unary alone: logits (scaled) error" in captured.out        # measured on its own
    assert "--fp16 crf" in captured.out
    assert not out.exists() and (tmp_path / "big.crf.failed-verification.onnx").exists()
    assert export_main([*common, "--fp16", "crf"]) == 0, capsys.readouterr().err
    captured = capsys.readouterr()
    assert "fp32 unary, fp16 CRF" in captured.out and "parity PASSED" in captured.out
    precision = {p.key: p.value for p in onnx.load(str(out)).metadata_props}["convcrf.precision"]
    assert precision == "fp16-crf"


def test_the_unary_part_and_no_crf(user_files, tmp_path):
    _, net, unary, _ = user_files
    report = attach_crf(unary, tmp_path / "logits.onnx", part="unary",
                        settings=UnarySettings(metadata={"mean": MEAN, "std": STD}))
    assert report.ok and list(report.outputs) == ["logits"], report.summary()
    report = attach_crf(unary, tmp_path / "softmax.onnx", settings=UnarySettings(crf="none"))
    assert report.ok and list(report.outputs) == ["probabilities", "labels", "unary_labels"]
    assert not report.custom_nodes


def test_output_may_not_be_the_unary(user_files, capsys):
    _, _, unary, _ = user_files
    assert export_main(["--unary", str(unary), "-o", str(unary)]) == 2
    assert "unary" in capsys.readouterr().err


def test_int8_quantises_the_attached_unary(user_files, tmp_path, capsys):
    """--int8 --calibration with --unary: export.quantize works on the attached graph (its
    unary/CRF boundary is the unary_labels ArgMax input, as in a PyTorch export)."""
    from convcrf_deploy.data.scenes import SyntheticScene
    _, _, unary, crf = user_files
    frames = tmp_path / "calibration"
    frames.mkdir()
    scene = SyntheticScene(48, 64, seed=5)
    for t in range(8):
        cv2.imwrite(str(frames / f"f{t}.png"), scene.render(7 * t)[0][:, :, ::-1])
    out = tmp_path / "int8.onnx"
    assert export_main(["--unary", str(unary), "--crf", str(crf), *SETTINGS, "-o", str(out),
                        "--int8", "--calibration", str(frames),
                        "--metadata", str(_input_size_file(tmp_path, 48, 64))]) == 0, \
        capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "int8 unary, fp32 CRF" in printed and "parity PASSED" in printed, printed
    model = onnx.load(str(out))
    assert any(n.op_type == "QuantizeLinear" for n in model.graph.node)
    assert any(n.domain == "trt.plugins" for n in model.graph.node)


def _input_size_file(folder, height, width):
    path = folder / "meta.json"
    path.write_text(json.dumps({"input_size": [height, width]}))
    return path


def test_output_key_names_the_logits_of_a_unary_with_several_outputs(tmp_path, capsys):
    unary = write_helper_unary("two-outputs", tmp_path / "two.onnx")
    out = tmp_path / "two.crf.onnx"
    assert export_main(["--unary", str(unary), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "has 2 float 4-D outputs ('aux', 'out')" in err and "--output-key NAME" in err
    assert export_main(["--unary", str(unary), "-o", str(out), "--output-key", "out",
                        "--crf-config", "filter_size=3,blur=2"]) == 0, capsys.readouterr().err
    assert "logits 'out'" in capsys.readouterr().out


def test_loading_an_onnx_unary_probes_its_input_constraints(user_files):
    """convcrf-train's unary pads images as the runtime does (logits at 1/4: multiples of 4)."""
    from convcrf_deploy.model.onnx_unary import load_onnx_unary
    _, net, unary, _ = user_files
    model = load_onnx_unary(unary, UnarySettings(metadata={"mean": MEAN, "std": STD}))
    assert (model.metadata.pad_multiple, model.metadata.min_size) == (4, 1)
    image = torch.rand(1, 3, 37, 51) * 255
    with torch.no_grad():
        logits = model.forward_unary(image)
        expected = SegmentationModel(net, None, model.metadata).forward_unary(image)
    assert logits.shape == (1, len(CLASSES), 37, 51)
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)


def test_a_damaged_unary_gets_one_line_and_no_onnxruntime_banner(tmp_path, capsys):
    """New-user trial: a changed byte in a name made ONNX Runtime print its four-line
    "EP Error ... Falling back to ['CPUExecutionProvider'] and retrying" banner to standard
    output before our error (ort_session.inference_session turns that retry off), and here
    (the name changed everywhere it occurs) the opset converter ended in a traceback."""
    unary = write_helper_unary("two-outputs", tmp_path / "u.onnx")
    unary.write_bytes(unary.read_bytes().replace(b"aux", b"\xffux"))   # not UTF-8 any more
    assert export_main(["--unary", str(unary), "--output-key", "out",
                        "-o", str(tmp_path / "out.onnx")]) == 2
    captured = capsys.readouterr()
    assert "EP Error" not in captured.out + captured.err and "Falling back" not in captured.out
    err = captured.err.strip()
    assert "u.onnx is damaged: a name in its graph is not valid UTF-8" in err and \
        len(err.splitlines()) == 1, err


def test_onnxruntime_sessions_on_the_cpu_do_not_retry_with_a_banner(monkeypatch, capsys):
    """The retry banner itself: ONNX Runtime prints it when loading raises a ValueError or
    RuntimeError (the trial's damaged file: a UnicodeDecodeError), unless the fallback is off.
    Loading is made to fail that way here."""
    import onnxruntime
    from onnxruntime.capi import onnxruntime_inference_collection as collection
    from convcrf_deploy.ort_session import inference_session

    def damaged(self, *args, **kwargs):
        self._fallback_providers = ["CPUExecutionProvider"]   # as the real one sets it
        raise ValueError("'utf-8' codec can't decode byte 0x98 in position 107")
    monkeypatch.setattr(collection.InferenceSession, "_create_inference_session", damaged)
    with pytest.raises(ValueError):
        onnxruntime.InferenceSession(b"model", providers=["CPUExecutionProvider"])
    assert "Falling back" in capsys.readouterr().out       # what users saw
    with pytest.raises(ValueError, match="codec can't decode"):
        inference_session(b"model")
    assert "Falling back" not in capsys.readouterr().out
