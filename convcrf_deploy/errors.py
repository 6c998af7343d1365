"""Third-party error messages made readable: :func:`describe_error`, the one helper every
wrapper of another library's exception uses (ONNX Runtime, the onnx checker and shape
inference, TensorRT's parser, OpenCV, rosbags, tritonclient, torch.export and tracing).

Those libraries put the reason for a failure after noise: ONNX Runtime prefixes it with its
status code, the C++ source file and line and the full signature of the function that threw
(``[ONNXRuntimeError] : 1 : FAIL : Load model from m.onnx failed:/onnxruntime_src/onnxruntime/
core/graph/model.cc:256 onnxruntime::Model::Model(onnx::ModelProto&&, ...) Unsupported model IR
version: 15, max supported IR version: 14``); OpenCV with its version and source path; PyTorch
follows it with C++ backtraces and pointers to logging switches. Cutting such a text to its
first N characters keeps the noise and loses the reason. :func:`describe_error` removes the
noise (never the reason), joins the message into one line and adds what to do: the fix for the
reasons listed in :data:`ADVICE` (re-export at a lower opset, upgrade onnxruntime, ...), else
the caller's.

Lives in the top package beside :mod:`convcrf_deploy.install` (the one place install hints come
from) because every layer wraps third-party errors, including the runtime without torch and the
ROS streams; it imports only the standard library.
"""
from __future__ import annotations

import re

#: longest reason kept (characters, after the noise is removed); longer ones are cut at a word.
MAX_REASON_CHARS = 600

# ONNX Runtime's status prefix: "[ONNXRuntimeError] : 1 : FAIL : ".
_ORT_STATUS = re.compile(r"\[ONNXRuntimeError\]\s*:\s*\d+\s*:\s*[A-Z_]+\s*:\s*")
# OpenCV's version tag: "OpenCV(5.1.0) ".
_OPENCV_TAG = re.compile(r"OpenCV\([^)]*\)\s*")
# A C/C++/CUDA source location: "/onnxruntime_src/core/graph/model.cc:256", "resize.cpp:4152:".
_SOURCE_LOCATION = re.compile(
    r"(?:(?<=\s)|(?<=^)|(?<=:)|(?<=\())(?:[\w.+\-]*/)*[\w.+\-]+\."
    r"(?:cc|cpp|cxx|c|h|hh|hpp|hxx|cu|cuh|inl|ipp)(?::\d+)+:?")
# The start of a C++ signature after a source location: an optional return type, then a
# qualified name and its parameter list, e.g. "void onnxruntime::X::Y(const int&) const".
_SIGNATURE_HEAD = re.compile(r"\s*(?:[\w:<>,*&~\s]*?\s)?[\w~<>]+(?:::[\w~<>]+)+\s*\(")
# Lines that only point elsewhere (logging switches, docs, backtrace frames, test reruns).
_NOISE_LINES = re.compile(
    r"^\s*(?:Set TORCH_LOGS|Set TORCHDYNAMO_VERBOSE|For more information|You can suppress|"
    r"To execute this test|frame #\d+|Exception raised from .* \(most recent call first\)|"
    r"\(most recent call first\)|Traceback \(most recent call last\))")


def _drop_signature(text: str, start: int) -> int:
    """Where a C++ signature starting at ``start`` ends (its closing parenthesis and a trailing
    ``const``), or ``start`` when none starts there."""
    head = _SIGNATURE_HEAD.match(text, start)
    if head is None:
        return start
    depth, position = 1, head.end()
    while position < len(text) and depth:
        depth += {"(": 1, ")": -1}.get(text[position], 0)
        position += 1
    if depth:
        return start
    const = re.match(r"\s*const\b", text[position:])
    return position + (const.end() if const else 0)


def _without_source_locations(text: str) -> str:
    out, position = [], 0
    for match in _SOURCE_LOCATION.finditer(text):
        if match.start() < position:
            continue
        out.append(text[position:match.start()])
        position = _drop_signature(text, match.end())
    out.append(text[position:])
    return "".join(out)


def _reason(error: BaseException | str) -> str:
    """The reason an exception (or a library's error text) gives, on one line, without the
    noise: status prefixes, version tags, C++ source locations and signatures, backtrace frames
    and "set this variable for more information" lines. The text of the innermost ``__cause__``
    is used when the exception has none of its own."""
    if isinstance(error, BaseException):
        exc = error
        while not str(exc).strip() and exc.__cause__ is not None:
            exc = exc.__cause__
        text = str(exc)
        if text.startswith(("'", '"')) and isinstance(exc, KeyError):
            text = f"{type(exc).__name__}: {text}"
        name = type(exc).__name__
    else:
        text, name = str(error), ""
    lines = [line for line in text.splitlines() if not _NOISE_LINES.match(line)]
    text = " ".join(line.strip() for line in lines if line.strip())
    text = _ORT_STATUS.sub("", text)
    text = _OPENCV_TAG.sub("", text)
    text = _without_source_locations(text)
    text = re.sub(r"(?i)(^|:)\s*error:\s*", r"\1 ", text)   # "file:line: error: ", "ERROR: "
    text = re.sub(r"\s+", " ", text).strip(" :;,")
    text = re.sub(r"failed:\s*(?=\S)", "failed: ", text)    # "failed:/src/x.cc:1 ..." joined
    if not text:
        return name or "unknown error"
    if len(text) > MAX_REASON_CHARS:
        cut = text.rfind(" ", 0, MAX_REASON_CHARS)
        text = text[:cut if cut > MAX_REASON_CHARS // 2 else MAX_REASON_CHARS].rstrip(" ,;:") + " ..."
    return text


def _ir_advice(match: re.Match) -> str:
    found, supported = int(match["found"]), int(match["supported"])
    return (f"this onnxruntime reads IR versions up to {supported}, the file is IR {found}: "
            "upgrade onnxruntime (pip install -U onnxruntime), or export it again at a lower "
            "--opset (convcrf-export writes the IR version of its opset; other files: set "
            f"model.ir_version = {supported} with the onnx package and save it)")


def _opset_advice(match: re.Match) -> str:
    supported = match["supported"]
    return (f"this onnxruntime supports opsets up to {supported}: export the model again with "
            f"--opset {supported} or lower (convcrf-export --opset N), or upgrade onnxruntime "
            "(pip install -U onnxruntime)")


#: ``(pattern, fix)`` for reasons whose fix is known; ``fix`` is a string or a function of the
#: match. The first pattern that matches the reason gives :func:`describe_error` its advice.
ADVICE: list[tuple[re.Pattern, object]] = [
    (re.compile(r"Unsupported model IR version: (?P<found>\d+), max supported IR version: "
                r"(?P<supported>\d+)"), _ir_advice),
    (re.compile(r"official support for domain [\w.]+ is till opset (?P<supported>\d+)"),
     _opset_advice),
    (re.compile(r"Could not find an implementation for (?P<op>\w+)\((?P<version>\d+)\)"),
     lambda m: (f"this onnxruntime has no kernel for {m['op']} at opset {m['version']} with "
                "these inputs: export the model again at another --opset, or upgrade "
                "onnxruntime (pip install -U onnxruntime)")),
    (re.compile(r"(?:model|Your model) ir_version (?P<found>\d+) is higher than the "
                r"checker's \((?P<supported>\d+)\)"),
     lambda m: (f"the onnx package reads IR versions up to {m['supported']}: upgrade it "
                "(pip install -U onnx), or export the model again at a lower --opset")),
    (re.compile(r"Got invalid dimensions for input"),
     "the model has a fixed input size: let the runtime resize frames to it (convcrf-run "
     "--resize stretch or letterbox), or export the model again with dynamic sizes "
     "(convcrf-export without --static; a CRF attached to your own ONNX unary with --unary "
     "needs that unary exported with a dynamic height and width)"),
    (re.compile(r"Unexpected input data type"),
     "the model's input has another element type than the frames fed to it: export it again "
     "with convcrf-export (float32 input, or --fp16)"),
]


def describe_error(error: BaseException | str, doing: str = "", fix: str = "") -> str:
    """One line for a third-party failure: ``"<doing>: <reason>; <what to do>"``.

    Args:
        error: the exception (or the error text) another library raised.
        doing: what failed, in the caller's words (``"ONNX Runtime cannot load m.onnx"``);
            omitted when empty.
        fix: what the user can do when the reason is not one of :data:`ADVICE` (whose own,
            more specific fix is used when it matches).

    Returns:
        the message, e.g. ``"ONNX Runtime cannot load m.onnx: Load model from m.onnx failed:
        Unsupported model IR version: 15, max supported IR version: 14; this onnxruntime reads
        IR versions up to 14, ...: upgrade onnxruntime ..., or export it again at a lower
        --opset ..."``. The reason is never cut before :data:`MAX_REASON_CHARS` characters of
        it remain after the noise is removed.
    """
    reason = _reason(error)
    advice = fix
    for pattern, known in ADVICE:
        match = pattern.search(reason)
        if match:
            advice = known(match) if callable(known) else str(known)
            break
    text = f"{doing}: {reason}" if doing else reason
    return f"{text.rstrip('.')}; {advice}" if advice else text
