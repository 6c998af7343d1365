"""Stand-in models for testing code that embeds the runtime, without torch or a trained model.

:func:`write_toy_onnx` writes a tiny ONNX file with exactly the interface of the graphs
``convcrf-export`` produces (input, outputs, ``convcrf.*`` metadata), so integration tests,
soak tests and CI can exercise sources, pre/post-processing, rendering and recording in
milliseconds per frame. Its labels are a crude colour classification, not a real model.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..config import CRFConfig
from ..exported_model import write
from ..metadata import ONNX_KEYS, ModelMetadata

# Colour prototypes (RGB) of SyntheticScene's classes, used by the toy model's weights.
_TOY_PROTOTYPES = [(110, 110, 110), (200, 70, 60), (60, 150, 210), (90, 190, 80), (215, 190, 60)]


def write_toy_onnx(path: str | os.PathLike,
                   class_names: Sequence[str] = ("background", "disc", "box", "triangle", "star"),
                   input_size: tuple[int, int] = (240, 320), resize: str = "none",
                   flavor: str = "portable") -> Path:
    """Write a tiny ONNX model with the exported models' interface.

    Input ``image`` float32 ``[N, 3, H, W]`` RGB 0..255 (dynamic N, H, W); outputs
    ``probabilities`` (softmax of 3x3-averaged logits, a stand-in for the CRF's smoothing),
    ``labels`` (their argmax) and ``unary_labels`` (argmax of the raw 1x1-convolution logits);
    ``convcrf.*`` metadata_props from :class:`ModelMetadata` (``flavor`` is only recorded) and
    the content digest.
    Logits are the negative squared distance to a colour prototype per class, so the model is
    a plausible colour classifier.
    """
    num_classes = len(class_names)
    prototypes = np.array([_TOY_PROTOTYPES[i % len(_TOY_PROTOTYPES)] for i in range(num_classes)],
                          np.float32) / 255.0
    # -|x - p|^2 = 2 p.x - |p|^2 - |x|^2; the |x|^2 term is the same for all classes.
    weight = (2 * prototypes * 8.0).reshape(num_classes, 3, 1, 1)
    bias = (-(prototypes ** 2).sum(1) * 8.0)
    nodes = [
        helper.make_node("Mul", ["image", "inv255"], ["scaled"]),
        helper.make_node("Conv", ["scaled", "weight", "bias"], ["logits"]),
        helper.make_node("AveragePool", ["logits"], ["smoothed"], kernel_shape=[3, 3],
                         pads=[1, 1, 1, 1], count_include_pad=0),
        helper.make_node("Softmax", ["smoothed"], ["probabilities"], axis=1),
        helper.make_node("ArgMax", ["probabilities"], ["labels"], axis=1, keepdims=0),
        helper.make_node("ArgMax", ["logits"], ["unary_labels"], axis=1, keepdims=0),
    ]
    initializers = [numpy_helper.from_array(np.array(1 / 255.0, np.float32), "inv255"),
                    numpy_helper.from_array(weight.astype(np.float32), "weight"),
                    numpy_helper.from_array(bias.astype(np.float32), "bias")]
    graph = helper.make_graph(
        nodes, "toy_segmenter",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT,
                                       ["N", num_classes, "H", "W"]),
         helper.make_tensor_value_info("labels", TensorProto.INT64, ["N", "H", "W"]),
         helper.make_tensor_value_info("unary_labels", TensorProto.INT64, ["N", "H", "W"])],
        initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    metadata = ModelMetadata(class_names=list(class_names), input_size=input_size, resize=resize)
    # Record a CRF configuration: the 3x3 smoothing plays the CRF's part for the runtime.
    props = {**metadata.to_onnx_props(), ONNX_KEYS["flavor"]: flavor,
             ONNX_KEYS["crf_config"]: CRFConfig(num_classes=num_classes).to_json()}
    helper.set_model_props(model, props)
    onnx.checker.check_model(model)
    path = Path(path)
    write(model, path)      # sealed (content digest) and read back, as convcrf-export writes
    return path
