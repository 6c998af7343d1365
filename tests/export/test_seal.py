"""``convcrf-seal``: a file changed on purpose by an optimiser is checked against the original
export and re-sealed (issue 18 items 7 and 8: a file passed through onnxsim/onnxslim after
export, a normal step, was refused as "damaged" with no way to accept it).

The optimiser here is a rewrite doing what onnxsim/onnxslim do (constant folding, identical
initialisers merged, nodes and tensors renamed, weights stored as external data); the real
onnxslim runs too when it is installed (the test extra).
"""
from __future__ import annotations

import re

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from convcrf_deploy.exported_model import ExportedModel, extract_part, unary_logits_name

pytest.importorskip("onnxruntime")


def optimise(source, target, *, external: bool = True):
    """What graph optimisers do to an export, without changing what it computes."""
    from onnx.reference import ReferenceEvaluator

    model = onnx.load(str(source))
    graph = model.graph
    # Constant folding: Constant nodes and nodes of standard ops whose inputs are all
    # initialisers become initialisers.
    folded = True
    while folded:
        folded = False
        constants = {t.name: t for t in graph.initializer}
        for node in list(graph.node):
            if node.domain not in ("", "ai.onnx") or node.op_type in ("If", "Loop", "Scan") \
                    or not all(name in constants for name in node.input if name):
                continue
            single = onnx.helper.make_model(
                onnx.helper.make_graph([node], "fold", [], [
                    onnx.helper.make_empty_tensor_value_info(o) for o in node.output],
                    [constants[name] for name in set(node.input) if name]),
                opset_imports=model.opset_import)
            values = ReferenceEvaluator(single).run(None, {})
            graph.node.remove(node)
            for name, value in zip(node.output, values):
                graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
            folded = True
            break
    # Identical initialisers merged.
    seen, rename = {}, {}
    for tensor in list(graph.initializer):
        key = (tensor.data_type, tuple(tensor.dims), numpy_helper.to_array(tensor).tobytes())
        if key in seen:
            rename[tensor.name] = seen[key]
            graph.initializer.remove(tensor)
        else:
            seen[key] = tensor.name
    # Nodes and intermediate tensors renamed.
    io = {v.name for v in [*graph.input, *graph.output]}
    for index, node in enumerate(graph.node):
        node.name = f"opt_{index}"
        for i, name in enumerate(node.output):
            if name not in io:
                rename[name] = f"t{index}_{i}"
                node.output[i] = rename[name]
    for node in graph.node:
        for i, name in enumerate(node.input):
            node.input[i] = rename.get(name, name)
    for tensor in graph.initializer:
        tensor.name = rename.get(tensor.name, tensor.name)
    del graph.value_info[:]
    if external:
        onnx.save(model, str(target), save_as_external_data=True,
                  location=target.name + ".data")
    else:
        onnx.save(model, str(target))
    return target


IMAGE = np.random.default_rng(3).uniform(0, 255, (1, 3, 40, 56)).astype(np.float32)


def labels(path):
    from convcrf_deploy.runtime.backends.onnxrt import OnnxRuntimeBackend

    with OnnxRuntimeBackend(path, threads=1) as backend:
        return backend.infer({"image": IMAGE})["labels"]


def one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("flavor", ["single-file", "portable", "plugin"])
def test_optimised_export_is_refused_then_resealed(tiny_exports, tmp_path, flavor, capsys):
    from convcrf_deploy.cli.run import main as run_main
    from convcrf_deploy.cli.seal import main as seal_main

    original = tiny_exports[flavor]
    changed = optimise(original, tmp_path / "opt.onnx")
    assert len(onnx.load(str(changed)).graph.node) < len(onnx.load(str(original)).graph.node)
    if flavor != "plugin":
        # Before: refused as damaged; the message names the command that re-seals.
        assert run_main(["--video", "demo", "--model", str(changed), "--headless",
                         "--max-frames", "1", "--size", "64x48"]) == 2
        err = one_line(capsys)
        assert "opt.onnx is damaged" in err and "convcrf-seal" in err
    out = tmp_path / "sealed.onnx"
    assert seal_main([str(changed), "--original", str(original), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "labels (whole graph): 100.000 %" in printed and "CRF part" in printed
    if flavor != "portable":
        assert "ConvCRF nodes kept: 2 ConvCRFKernel, 2 ConvCRFMessagePassing" in printed
    sealed = ExportedModel.open(out)
    assert sealed.digest == "content" and sealed.props == {
        **ExportedModel.open(original).props, "convcrf.content_sha256": sealed.props[
            "convcrf.content_sha256"]}
    assert not sealed.uses_external_data                  # one file
    if flavor != "plugin":
        np.testing.assert_array_equal(labels(out), labels(original))


def _crf_only_initializer(model) -> str:
    """An initialiser the CRF part uses and the unary part does not."""
    logits = unary_logits_name(model)
    unary = extract_part(model, ["image"], [logits])
    crf = extract_part(model, [logits, "image"], ["probabilities"])
    unary_names = {t.name for t in unary.graph.initializer}
    return next(t.name for t in crf.graph.initializer
                if t.name not in unary_names and t.data_type == 1
                and numpy_helper.to_array(t).size > 1)


def change_crf_weight(model):
    name = _crf_only_initializer(model)
    tensor = next(t for t in model.graph.initializer if t.name == name)
    tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor) * 3 + 1, name))


def change_unary_weight(model):
    """The classifier's weights (the last Conv's) negated."""
    name = [n for n in model.graph.node if n.op_type == "Conv"][-1].input[1]
    tensor = next(t for t in model.graph.initializer if t.name == name)
    tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor) * -1, tensor.name))


def inline_crf_nodes(model):
    import onnx.inliner

    inlined = onnx.inliner.inline_local_functions(model)
    del inlined.functions[:]
    model.CopyFrom(inlined)


def change_crf_attribute(model):
    node = next(n for n in model.graph.node if n.op_type == "ConvCRFMessagePassing")
    attribute = next(a for a in node.attribute if a.type == onnx.AttributeProto.INT)
    attribute.i += 2


def rename_output(model):
    for value in model.graph.output:
        if value.name == "labels":
            value.name = "classes"
    for node in model.graph.node:
        for i, name in enumerate(node.output):
            if name == "labels":
                node.output[i] = "classes"


BROKEN = {
    "a CRF weight changed": ("portable", change_crf_weight, r"does not compute what.*CRF part"),
    "a unary weight changed": ("single-file", change_unary_weight,
                               r"does not compute what.*whole graph"),
    "the ConvCRF nodes inlined": ("single-file", inline_crf_nodes,
                                  r"flavour 'single-file' \(ConvCRF nodes\) but its graph has none"),
    "a ConvCRF node's attribute changed": ("plugin", change_crf_attribute,
                                           r"attributes of its ConvCRF nodes differ"),
    "an output renamed": ("portable", rename_output, r"outputs .*'classes'"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_a_changed_model_is_not_resealed(tiny_exports, tmp_path, case, capsys):
    from convcrf_deploy.cli.seal import main

    flavor, edit, message = BROKEN[case]
    model = onnx.load(str(optimise(tiny_exports[flavor], tmp_path / "opt.onnx",
                                   external=False)))
    edit(model)
    onnx.save(model, str(tmp_path / "broken.onnx"))
    out = tmp_path / "out.onnx"
    assert main([str(tmp_path / "broken.onnx"), "--original", str(tiny_exports[flavor]),
                 "-o", str(out)]) == 1
    assert re.search(message, one_line(capsys)), case
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_inputs_are_never_overwritten_and_the_original_must_be_intact(tiny_exports, tmp_path,
                                                                     capsys):
    from convcrf_deploy.cli.seal import main

    original = tiny_exports["portable"]
    changed = optimise(original, tmp_path / "opt.onnx", external=False)
    before = changed.read_bytes()
    for output in (changed, original):
        assert main([str(changed), "--original", str(original), "-o", str(output)]) == 2
        assert "would overwrite the input" in one_line(capsys)
    assert changed.read_bytes() == before
    damaged = tmp_path / "damaged.onnx"
    model = onnx.load(str(original))
    change_unary_weight(model)
    onnx.save(model, str(damaged))
    assert main([str(changed), "--original", str(damaged), "-o",
                 str(tmp_path / "out.onnx")]) == 2
    assert "damaged.onnx is damaged" in one_line(capsys)
    assert main([str(tmp_path / "missing.onnx"), "--original", str(original), "-o",
                 str(tmp_path / "out.onnx")]) == 2
    assert "does not exist" in one_line(capsys)
    assert not (tmp_path / "out.onnx").exists()


@pytest.mark.parametrize("flavor", ["single-file", "portable"])
def test_onnxslim_output_is_resealed(tiny_exports, tmp_path, flavor, capsys):
    onnxslim = pytest.importorskip("onnxslim")
    from convcrf_deploy.cli.seal import main

    original = tiny_exports[flavor]
    slim = tmp_path / "slim.onnx"
    onnx.save(onnxslim.slim(onnx.load(str(original))), str(slim))
    with pytest.raises(ValueError, match="damaged"):
        ExportedModel.open(slim)
    assert main([str(slim), "--original", str(original), "-o", str(tmp_path / "out.onnx")]) == 0
    np.testing.assert_array_equal(labels(tmp_path / "out.onnx"), labels(original))


_WITHOUT_TORCH = """
import sys
sys.modules["torch"] = None                  # importing torch now fails, as where it is absent
sys.path.insert(0, sys.argv[1])
from convcrf_deploy.cli.seal import main
sys.exit(main([sys.argv[2], "--original", sys.argv[3], "-o", sys.argv[4]]))
"""


def test_seal_runs_without_torch(tiny_exports, tmp_path):
    # It runs where the model is deployed: onnx, onnxruntime and numpy only.
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    changed = optimise(tiny_exports["single-file"], tmp_path / "opt.onnx")
    done = subprocess.run([sys.executable, "-c", _WITHOUT_TORCH, str(root), str(changed),
                           str(tiny_exports["single-file"]), str(tmp_path / "out.onnx")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert ExportedModel.open(tmp_path / "out.onnx").digest == "content"
