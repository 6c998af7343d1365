"""Shared fixtures of the export tests."""
from __future__ import annotations

import pytest

#: the CRF of :func:`tiny_exports`' model.
TINY_CRF = dict(num_classes=3, filter_size=3, blur=4, iterations=2)


@pytest.fixture(scope="session")
def tiny_exports(tmp_path_factory):
    """``{flavour: path}``: a tiny model (3 classes, FastFCN width 8, 2 mean-field iterations,
    nominal size 40x56) exported once per session in every flavour (the plugin flavour
    unverified: its reference evaluation is the slow part)."""
    pytest.importorskip("onnxruntime")
    import torch

    from convcrf_deploy import CRFConfig, ConvCRF
    from convcrf_deploy.export import export_onnx
    from convcrf_deploy.metadata import ModelMetadata
    from convcrf_deploy.model import FastFCN, SegmentationModel

    folder = tmp_path_factory.mktemp("tiny-exports")
    torch.manual_seed(0)
    model = SegmentationModel(FastFCN(3, width=8), ConvCRF(CRFConfig(**TINY_CRF)),
                              ModelMetadata.for_classes(["a", "b", "c"],
                                                        input_size=(40, 56))).eval()
    paths = {}
    for flavor in ("single-file", "portable", "plugin"):
        paths[flavor] = folder / f"tiny.{flavor}.onnx"
        assert export_onnx(model, paths[flavor], flavor=flavor, verify=flavor != "plugin").ok
    return paths
