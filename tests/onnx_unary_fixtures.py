"""ONNX unaries as users bring them to ``convcrf-export --unary`` / ``convcrf-train crf --unary``
(issue 18 item 4), small enough for CI.

* :class:`QuarterNet`: a PyTorch network unlike the demo's (two stride-2 convolutions and a
  dilated one: logits at 1/4 resolution), exported by ``torch.onnx`` with dynamic N, H, W.
* :func:`write_helper_unary`: unaries written with ``onnx.helper`` as other tools write them:
  NHWC and fixed-size (tf2onnx, vendors), uint8 input with a softmax output, an older opset,
  one that overflows in fp16, and broken ones (two inputs, an argmax output, 2 channels).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

CLASSES = ["background", "road", "car", "person"]
MEAN, STD = (0.5, 0.45, 0.4), (0.25, 0.25, 0.25)


def quarter_net(num_classes: int = len(CLASSES)):
    """The PyTorch network (eval mode, seeded He initialisation so that the logits vary over
    the image as a trained network's do, last layer scaled to logits of a few units)."""
    import torch
    import torch.nn as nn

    class QuarterNet(nn.Module):
        """image (N, 3, H, W) normalised -> logits (N, C, ceil(H/4), ceil(W/4))."""

        def __init__(self, classes: int):
            super().__init__()
            self.body = nn.Sequential(
                nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, 24, 3, 2, 1), nn.ReLU(),
                nn.Conv2d(24, 24, 3, 1, 2, dilation=2), nn.ReLU(), nn.Conv2d(24, classes, 1))

        def forward(self, x):
            return self.body(x)

    torch.manual_seed(0)
    net = QuarterNet(num_classes)
    for module in net.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    with torch.no_grad():
        net.body[-1].weight.mul_(0.3)
    return net.eval()


def export_torch_unary(net, path: Path, fixed: tuple[int, int] | None = None) -> Path:
    """``net`` as users export it: ``torch.onnx.export`` (dynamo), input ``input`` NCHW float32,
    output ``out``; N, H and W dynamic unless ``fixed`` (then batch 1 at that size)."""
    import torch
    if fixed is None:
        dims = {0: torch.export.Dim("batch"), 2: torch.export.Dim("height"),
                3: torch.export.Dim("width")}
        torch.onnx.export(net, (torch.randn(2, 3, 64, 96),), str(path), dynamo=True,
                          input_names=["input"], output_names=["out"],
                          dynamic_shapes={"x": dims}, verbose=False, external_data=False)
    else:
        torch.onnx.export(net, (torch.randn(1, 3, *fixed),), str(path), dynamo=True,
                          input_names=["input"], output_names=["out"], verbose=False,
                          external_data=False)
    return path


def _weights(name: str, shape, scale: float, seed: int) -> onnx.TensorProto:
    rng = np.random.default_rng(seed)
    return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)


def _save(path: Path, nodes, inputs, outputs, initializers, opset: int) -> Path:
    graph = helper.make_graph(nodes, "user_unary", inputs, outputs, initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="a vendor tool")
    model.ir_version = 7
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def write_helper_unary(kind: str, path: Path, classes: int = 3) -> Path:
    """A small unary of ``kind``:

    * ``"nhwc-fixed"``: tf2onnx style, opset 13: input ``input_1:0`` float32 ``[1, 40, 56, 3]``
      (NHWC), logits ``[1, 20, 28, C]`` (NHWC, 1/2 resolution).
    * ``"uint8-softmax"``: input uint8 ``[N, 3, H, W]`` RGB 0..255 (normalised inside), output
      softmax probabilities ``[N, C, H, W]``.
    * ``"fp16-overflow"``: NCHW float32, dynamic; an intermediate reaches ~1e5, beyond fp16's
      65504, so that the network overflows when converted to fp16 (fine in fp32).
    * ``"two-outputs"``: logits ``out`` and an auxiliary ``aux`` (``--output-key out``).
    * ``"two-inputs"``, ``"argmax-output"``, ``"two-channels"``, ``"one-channel"`` (a score
      map), ``"batch-2"`` (a fixed batch of 2), ``"external-data-missing"``: files ``--unary``
      refuses.
    """
    make = helper.make_node
    image_nchw = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 3, "h", "w"])
    if kind == "nhwc-fixed":
        inputs = [helper.make_tensor_value_info("input_1:0", TensorProto.FLOAT, [1, 40, 56, 3])]
        outputs = [helper.make_tensor_value_info("Identity:0", TensorProto.FLOAT,
                                                 [1, 20, 28, classes])]
        nodes = [make("Transpose", ["input_1:0"], ["x"], perm=[0, 3, 1, 2]),
                 make("Conv", ["x", "w1", "b1"], ["c1"], kernel_shape=[3, 3], strides=[2, 2],
                      pads=[1, 1, 1, 1]),
                 make("Relu", ["c1"], ["r1"]),
                 make("Conv", ["r1", "w2"], ["c2"], kernel_shape=[1, 1]),
                 make("Transpose", ["c2"], ["Identity:0"], perm=[0, 2, 3, 1])]
        inits = [_weights("w1", (8, 3, 3, 3), 0.5, 1), _weights("b1", (8,), 0.1, 2),
                 _weights("w2", (classes, 8, 1, 1), 0.5, 3)]
        return _save(path, nodes, inputs, outputs, inits, 13)
    if kind == "uint8-softmax":
        inputs = [helper.make_tensor_value_info("pixels", TensorProto.UINT8, ["n", 3, "h", "w"])]
        outputs = [helper.make_tensor_value_info("probs", TensorProto.FLOAT,
                                                 ["n", classes, "h", "w"])]
        nodes = [make("Cast", ["pixels"], ["f"], to=TensorProto.FLOAT),
                 make("Div", ["f", "k255"], ["unit"]),
                 make("Sub", ["unit", "half"], ["centred"]),
                 make("Conv", ["centred", "w1"], ["c1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
                 make("Mul", ["c1", "sharp"], ["logits"]),
                 make("Softmax", ["logits"], ["probs"], axis=1)]
        inits = [numpy_helper.from_array(np.array(255, np.float32), "k255"),
                 numpy_helper.from_array(np.array(0.5, np.float32), "half"),
                 numpy_helper.from_array(np.array(2.0, np.float32), "sharp"),
                 _weights("w1", (classes, 3, 3, 3), 1.0, 4)]
        return _save(path, nodes, inputs, outputs, inits, 17)
    if kind == "fp16-overflow":
        outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT,
                                                 ["n", classes, "h", "w"])]
        nodes = [make("Mul", ["input", "big"], ["x"]),
                 make("Conv", ["x", "w1"], ["c1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
                 make("Relu", ["c1"], ["r1"]),
                 make("Mul", ["r1", "small"], ["r2"]),
                 make("Conv", ["r2", "w2"], ["logits"], kernel_shape=[1, 1])]
        inits = [numpy_helper.from_array(np.array(1e5, np.float32), "big"),
                 numpy_helper.from_array(np.array(1e-5, np.float32), "small"),
                 _weights("w1", (8, 3, 3, 3), 1.0, 5), _weights("w2", (classes, 8, 1, 1), 1.0, 6)]
        return _save(path, nodes, [image_nchw], outputs, inits, 17)
    if kind == "two-inputs":
        second = helper.make_tensor_value_info("scale", TensorProto.FLOAT, [1])
        outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT,
                                                 ["n", classes, "h", "w"])]
        nodes = [make("Mul", ["input", "scale"], ["x"]),
                 make("Conv", ["x", "w1"], ["logits"], kernel_shape=[1, 1])]
        return _save(path, nodes, [image_nchw, second], outputs,
                     [_weights("w1", (classes, 3, 1, 1), 1.0, 7)], 17)
    if kind == "argmax-output":
        outputs = [helper.make_tensor_value_info("seg", TensorProto.INT64, ["n", 1, "h", "w"])]
        nodes = [make("Conv", ["input", "w1"], ["logits"], kernel_shape=[1, 1]),
                 make("ArgMax", ["logits"], ["seg"], axis=1, keepdims=1)]
        return _save(path, nodes, [image_nchw], outputs,
                     [_weights("w1", (classes, 3, 1, 1), 1.0, 8)], 17)
    if kind == "two-outputs":       # logits and an auxiliary head, as torchvision's models
        outputs = [helper.make_tensor_value_info("aux", TensorProto.FLOAT,
                                                 ["n", classes, "h", "w"]),
                   helper.make_tensor_value_info("out", TensorProto.FLOAT,
                                                 ["n", classes, "h", "w"])]
        nodes = [make("Conv", ["input", "w1"], ["out"], kernel_shape=[1, 1]),
                 make("Neg", ["out"], ["aux"])]
        return _save(path, nodes, [image_nchw], outputs,
                     [_weights("w1", (classes, 3, 1, 1), 1.0, 10)], 17)
    if kind == "two-channels":
        inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 2, 64, 64])]
        outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT,
                                                 ["n", classes, 64, 64])]
        nodes = [make("Conv", ["input", "w1"], ["logits"], kernel_shape=[1, 1])]
        return _save(path, nodes, inputs, outputs, [_weights("w1", (classes, 2, 1, 1), 1.0, 9)],
                     17)
    if kind == "one-channel":       # a foreground score map (or a float argmax): no logits
        outputs = [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["n", 1, "h", "w"])]
        nodes = [make("Conv", ["input", "w1"], ["score"], kernel_shape=[1, 1])]
        return _save(path, nodes, [image_nchw], outputs, [_weights("w1", (1, 3, 1, 1), 1.0, 11)],
                     17)
    if kind == "batch-2":           # torch.onnx.export with a (2, 3, 32, 48) example, no dynamic axes
        inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, [2, 3, 32, 48])]
        outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT,
                                                 [2, classes, 32, 48])]
        nodes = [make("Conv", ["input", "w1"], ["logits"], kernel_shape=[1, 1])]
        return _save(path, nodes, inputs, outputs, [_weights("w1", (classes, 3, 1, 1), 1.0, 12)],
                     17)
    if kind == "external-data-missing":   # saved as model + data file; the data file lost
        write_helper_unary("two-outputs", path, classes)
        model = onnx.load(str(path))
        onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                  location=path.name + ".data", size_threshold=0)
        (path.parent / (path.name + ".data")).unlink()
        return path
    raise ValueError(kind)
