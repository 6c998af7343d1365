"""describe_error: wrapped third-party errors keep their reason (the noise goes, never the
cause) and say what to do; every wrapper in the package uses it (issue 23 item 2)."""
from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from convcrf_deploy.errors import MAX_REASON_CHARS, describe_error

PACKAGE = Path(__file__).resolve().parents[1] / "convcrf_deploy"

# Messages as the libraries print them (ONNX Runtime 1.32, OpenCV 5.1, PyTorch, TensorRT 10).
ORT_IR = ("[ONNXRuntimeError] : 1 : FAIL : Load model from m.onnx failed:/onnxruntime_src/"
          "onnxruntime/core/graph/model.cc:256 onnxruntime::Model::Model(onnx::ModelProto&&, "
          "const onnxruntime::PathString&, const onnxruntime::IOnnxRuntimeOpSchemaRegistryList*, "
          "const onnxruntime::logging::Logger&, const onnxruntime::ModelOptions&) Unsupported "
          "model IR version: 15, max supported IR version: 14\n")
ORT_OPSET = ("[ONNXRuntimeError] : 1 : FAIL : Load model from m.onnx failed:/onnxruntime_src/"
             "onnxruntime/core/graph/model_load_utils.h:46 void onnxruntime::model_load_utils::"
             "ValidateOpsetForDomain(const std::unordered_map<std::__cxx11::basic_string<char>, "
             "int>&, const onnxruntime::logging::Logger&, bool, const std::string&, int) ONNX "
             "Runtime only *guarantees* support for models stamped with official released onnx "
             "opset versions. Opset 40 is under development and support for this is limited. "
             "Current official support for domain ai.onnx is till opset 28.\n")
ORT_DIMS = ("[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Got invalid dimensions for input: image "
            "for the following indices\n index: 2 Got: 480 Expected: 240\n index: 3 Got: 640 "
            "Expected: 320\n Please fix either the inputs/outputs or the model.")
ORT_KERNEL = ("[ONNXRuntimeError] : 9 : NOT_IMPLEMENTED : Could not find an implementation for "
              "ConvInteger(10) node with name ''")
TORCH_EXPORT = ("Dynamic control flow is not supported at the moment.\nFor more information "
                "about this error, see: https://pytorch.org/docs/main/exportdb\n\nfrom user "
                "code:\n   File \"/home/me/net.py\", line 5, in forward\n    if x.sum() > 0:\n\n"
                "Set TORCH_LOGS=\"+dynamo\" and TORCHDYNAMO_VERBOSE=1 for more information\n")
TORCH_CPP = ("The size of tensor a (3) must match the size of tensor b (4) at non-singleton "
             "dimension 1\nException raised from infer_size_impl at /pytorch/aten/src/ATen/"
             "ExpandUtils.cpp:31 (most recent call first):\nframe #0: c10::Error::Error(c10::"
             "SourceLocation, std::string) + 0x96 (0x7f in libc10.so)\n")
TRT_PARSER = ("ERROR: onnxOpImporters.cpp:6538 In function importFallbackPluginImporter:\n[6] "
              "Assertion failed: creator && \"Plugin not found, are the plugin name, version, "
              "and namespace correct?\"")


@pytest.mark.parametrize("message, reason, advice", [
    (ORT_IR, "Unsupported model IR version: 15, max supported IR version: 14",
     ["upgrade onnxruntime", "lower --opset", "ir_version = 14"]),
    (ORT_OPSET, "Current official support for domain ai.onnx is till opset 28",
     ["--opset 28 or lower", "upgrade onnxruntime"]),
    (ORT_DIMS, "Got invalid dimensions for input: image", ["--resize stretch or letterbox",
                                                          "without --static"]),
    (ORT_KERNEL, "Could not find an implementation for ConvInteger(10)", ["another --opset"]),
    (TORCH_EXPORT, "Dynamic control flow is not supported", []),
    (TORCH_CPP, "must match the size of tensor b (4) at non-singleton dimension 1", []),
    (TRT_PARSER, "Plugin not found, are the plugin name, version, and namespace correct?", []),
])
def test_library_messages_keep_their_reason_without_the_noise(message, reason, advice):
    text = describe_error(message, "loading m.onnx", "the caller's fix")
    assert text.startswith("loading m.onnx: ") and reason in text
    assert "\n" not in text
    for noise in ("[ONNXRuntimeError]", "onnxruntime::", ".cc:", ".h:46", "TORCH_LOGS",
                  "frame #0", "c10::Error", ".cpp:", "ExpandUtils"):
        assert noise not in text, (noise, text)
    for fix in advice:
        assert fix in text
    if not advice:
        assert text.endswith("; the caller's fix")


def test_a_real_opencv_error_keeps_the_failed_check_and_function():
    with pytest.raises(cv2.error) as caught:
        cv2.resize(np.zeros((0, 0, 3), np.uint8), (2, 2))
    text = describe_error(caught.value, "resizing")
    assert "!ssize.empty()" in text and "'resize'" in text
    assert "/io/opencv" not in text and "OpenCV(" not in text and ".cpp" not in text


def test_a_real_onnx_checker_error_keeps_its_context():
    graph = helper.make_graph([helper.make_node("NoSuchOp", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    from convcrf_deploy.export.verify import VerificationError, check_graph
    with pytest.raises(VerificationError) as caught:
        check_graph(model)
    text = str(caught.value)
    assert text.startswith("ONNX checker rejected the graph: ") and "NoSuchOp" in text
    assert "Context" in text and "\n" not in text   # the checker's second line is kept


def test_long_reasons_are_cut_at_a_word_after_the_limit_not_before_the_cause():
    cause = "the cause is here"
    text = describe_error("[ONNXRuntimeError] : 1 : FAIL : " + "/src/a/b.cc:12 " * 30 + cause
                          + " and more" * 200)
    assert text.startswith(cause) and text.endswith(" ...")
    assert MAX_REASON_CHARS <= len(text) <= MAX_REASON_CHARS + 10


def test_an_exception_without_text_is_named_by_its_cause_or_type():
    try:
        try:
            raise KeyError("image")
        except KeyError as inner:
            raise RuntimeError() from inner
    except RuntimeError as exc:
        assert "image" in describe_error(exc)
    assert describe_error(TimeoutError()) == "TimeoutError"


# -- every wrapper uses the helper ------------------------------------------------------------

#: a third-party message cut to its first line or first N characters: what the helper replaces.
TRUNCATIONS = re.compile(r"(str\(exc\)[^\n]*\[:\d+\]|first_line\[:\d+\]|"
                         r"str\(exc\)[^\n]*splitlines\(\)( or \[[^\]]*\])?\)?\[0\])")


def test_no_module_cuts_a_third_party_message_itself():
    offenders = [f"{path.relative_to(PACKAGE.parent)}:{number}: {line.strip()}"
                 for path in PACKAGE.rglob("*.py")
                 for number, line in enumerate(path.read_text().splitlines(), 1)
                 if TRUNCATIONS.search(line)]
    assert not offenders, "use convcrf_deploy.errors.describe_error:\n" + "\n".join(offenders)


def test_the_ir_version_instance_reaches_the_user_whole(tmp_path, capsys, monkeypatch):
    """Field report: IR version 15 showed ONNX Runtime's C++ signature, cut before the reason."""
    from convcrf_deploy.cli.run import main
    from convcrf_deploy.runtime.testing import write_toy_onnx
    model = onnx.load(str(write_toy_onnx(tmp_path / "toy.onnx", input_size=(48, 64))))
    model.ir_version = 15
    onnx.save(model, str(tmp_path / "ir15.onnx"))
    code = main(["--model", str(tmp_path / "ir15.onnx"), "--headless", "--max-frames", "1",
                 "--size", "64x48"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "Unsupported model IR version: 15, max supported IR version: 14" in err
    assert "upgrade onnxruntime" in err and "--opset" in err
    assert "onnxruntime::" not in err and "model.cc" not in err


def test_inference_library_errors_become_one_line_inference_errors(tmp_path):
    from convcrf_deploy.runtime.backends import InferenceError
    from convcrf_deploy.runtime.backends.onnxrt import OnnxRuntimeBackend
    from convcrf_deploy.runtime.testing import write_toy_onnx
    backend = OnnxRuntimeBackend(write_toy_onnx(tmp_path / "fixed.onnx", fixed_size=(24, 32)),
                                 crf_executor="graph")
    with pytest.raises(InferenceError) as caught:
        backend.infer({"image": np.zeros((1, 3, 48, 64), np.float32)})
    text = str(caught.value)
    assert "Got invalid dimensions for input: image" in text and "--resize" in text
    assert "[ONNXRuntimeError]" not in text and "\n" not in text


def test_triton_client_errors_keep_the_servers_reason():
    tritonclient = pytest.importorskip("tritonclient.utils")
    from convcrf_deploy.runtime.backends.triton.loader import ClientLoader, TritonRequestError
    loader = ClientLoader("convcrf", "127.0.0.1:1", "http", timeout=1.0)

    class Client:
        def is_server_live(self):
            raise tritonclient.InferenceServerException(
                "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: "
                "Connection refused", status="StatusCode.UNAVAILABLE")
    with pytest.raises(TritonRequestError, match=r"UNAVAILABLE.*Connection refused"):
        loader.call(Client(), "is_server_live")


def test_rosbags_errors_keep_their_reason(tmp_path):
    pytest.importorskip("rosbags")
    from convcrf_deploy.runtime.streams import SourceError, open_source
    junk = tmp_path / "junk.mcap"
    junk.write_bytes(b"\x89MCAP0\r\n" + b"x" * 64)
    with pytest.raises(SourceError) as caught:
        open_source(f"bag:{junk}")
    text = str(caught.value)
    assert text.startswith(f"cannot read bag {str(junk)!r}: ") and "damaged or truncated" in text
    assert len(text.split(": ", 1)[1].split(";")[0]) > 3   # rosbags' own reason is there
