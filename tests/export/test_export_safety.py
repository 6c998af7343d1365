"""Exports never destroy the user's files, and damaged ONNX files are detected on load.

Field reports (issue 11): ``convcrf-export same.pt -o same.pt`` overwrote the checkpoint; a
write that failed part way (disk full) or an export that failed its parity check replaced the
previous good file; an ONNX file with bytes flipped in its middle ran; a corrupt, truncated or
empty ``.onnx`` gave ``convcrf-run`` a traceback.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import onnx
import pytest
import torch

from convcrf_deploy import CRFConfig, ConvCRF
from convcrf_deploy.exported_model import DIGEST_KEY, ExportedModel, content_digest
from convcrf_deploy.metadata import ModelMetadata
from convcrf_deploy.model import FastFCN, SegmentationModel, save_model

pytest.importorskip("onnxruntime")

ROOT = Path(__file__).resolve().parents[2]
CONFIG = CRFConfig(num_classes=3, filter_size=3, blur=4, iterations=1)


def tiny_model():
    torch.manual_seed(0)
    return SegmentationModel(FastFCN(3, width=8), ConvCRF(CONFIG),
                             ModelMetadata.for_classes(["a", "b", "c"])).eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(checkpoint, a verified portable export of it)."""
    from convcrf_deploy.export import export_onnx
    folder = tmp_path_factory.mktemp("export")
    checkpoint = folder / "tiny.pt"
    save_model(tiny_model(), checkpoint)
    report = export_onnx(checkpoint, folder / "tiny.onnx", flavor="portable")
    assert report.ok
    return checkpoint, folder / "tiny.onnx"


def test_export_refuses_to_overwrite_its_input(exported, capsys):
    from convcrf_deploy.cli.export import main
    checkpoint, _ = exported
    before = checkpoint.read_bytes()
    link = checkpoint.with_name("hardlink.pt")
    link.unlink(missing_ok=True)
    link.hardlink_to(checkpoint)
    for output in (checkpoint, checkpoint.parent / "." / checkpoint.name, link):
        assert main([str(checkpoint), "-o", str(output)]) == 2
        err = capsys.readouterr().err
        assert "would overwrite the input" in err and "Traceback" not in err
    assert checkpoint.read_bytes() == before
    from convcrf_deploy.export import export_onnx
    from convcrf_deploy.files import OutputIsInputError
    with pytest.raises(OutputIsInputError):
        export_onnx(str(checkpoint), checkpoint)


def test_export_stores_the_graph_digest(exported):
    _, path = exported
    model = onnx.load(str(path))
    props = {p.key: p.value for p in model.metadata_props}
    assert props[DIGEST_KEY] == content_digest(model)


def test_failed_verification_keeps_the_old_file_and_writes_the_graph_beside(
        exported, tmp_path, monkeypatch, capsys):
    from convcrf_deploy.cli.export import main
    from convcrf_deploy.export import verify
    checkpoint, _ = exported
    out = tmp_path / "model.onnx"
    out.write_bytes(b"the user's previous good export")
    monkeypatch.setitem(verify.TOLERANCE, False, 0.0)
    monkeypatch.setitem(verify.MIN_LABEL_AGREEMENT, False, 1.01)
    assert main([str(checkpoint), "-o", str(out), "--flavor", "portable"]) == 1
    err = capsys.readouterr().err
    assert out.read_bytes() == b"the user's previous good export"
    failed = tmp_path / "model.failed-verification.onnx"
    assert str(failed) in err
    onnx.checker.check_model(onnx.load(str(failed)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.failed-verification.onnx",
                                                           "model.onnx"]


_FULL_DISK = r"""
import resource, signal, sys
sys.path.insert(0, sys.argv[1])
from convcrf_deploy.export import export_onnx
from convcrf_deploy.model import load_model
model = load_model(sys.argv[2])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)      # writes past the limit fail with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
try:
    export_onnx(model, sys.argv[3], flavor="portable", verify=False)
except OSError as exc:
    print("failed as expected:", exc.__class__.__name__)
else:
    print("WROTE")
"""


def test_a_failed_export_write_keeps_the_previous_file(exported, tmp_path):
    checkpoint, good = exported
    out = tmp_path / "model.onnx"
    out.write_bytes(good.read_bytes())
    done = subprocess.run([sys.executable, "-c", _FULL_DISK, str(ROOT), str(checkpoint),
                           str(out)], capture_output=True, text=True, timeout=300)
    assert "failed as expected" in done.stdout, done.stdout + done.stderr
    assert out.read_bytes() == good.read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]    # no temporary left


def flip_middle(data: bytes, count: int = 64) -> bytes:
    """Flip ``count`` bytes in the middle of the largest weight tensor (bytes elsewhere may
    be node stack traces or names, which the content digest leaves out on purpose)."""
    model = onnx.load_from_string(data)
    weights = max((t.raw_data for t in model.graph.initializer), key=len)
    start = data.index(weights) + len(weights) // 2 - count // 2
    data = bytearray(data)
    for i in range(start, start + count):
        data[i] ^= 0xFF
    return bytes(data)


@pytest.mark.parametrize("damage", ["flipped", "truncated", "empty", "text"])
def test_damaged_onnx_is_a_one_line_error(exported, tmp_path, damage, capsys):
    from convcrf_deploy.cli.run import main
    from convcrf_deploy.runtime import Segmenter
    _, good = exported
    data = good.read_bytes()
    content = {"flipped": flip_middle(data), "truncated": data[:len(data) // 3], "empty": b"",
               "text": b"not a model\n"}[damage]
    bad = tmp_path / f"{damage}.onnx"
    bad.write_bytes(content)
    with pytest.raises(ValueError, match=rf"{damage}\.onnx"):
        Segmenter(str(bad))
    code = main(["--video", "demo", "--model", str(bad), "--headless", "--max-frames", "1",
                 "--size", "64x48"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert f"{damage}.onnx" in err and len(err.strip().splitlines()) == 1, err


def test_onnx_without_digest_loads_with_one_warning(exported, tmp_path):
    # README / files.MISSING_DIGEST_POLICY: "load unchecked, with a warning"; the ONNX
    # readers loaded such files silently. One warning per file, however many readers open it.
    import numpy as np

    from convcrf_deploy.exported_model import MissingDigestWarning
    from convcrf_deploy.runtime import Segmenter
    from convcrf_deploy.tensorrt.network import prepare_for_parser
    _, good = exported
    model = onnx.load(str(good))
    kept = [p for p in model.metadata_props if p.key != DIGEST_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    old = tmp_path / "old.onnx"
    onnx.save(model, str(old))
    with pytest.warns(MissingDigestWarning, match=r"old\.onnx has no convcrf digest.*unchecked") \
            as caught:
        segmenter = Segmenter(str(old))
        prepare_for_parser(old)               # what convcrf-build reads
        ExportedModel.open(old)
    assert len([w for w in caught if w.category is MissingDigestWarning]) == 1
    result = segmenter(np.full((30, 40, 3), 128, np.uint8))
    segmenter.close()
    assert result.labels.shape == (30, 40)
    assert ExportedModel.open(good).digest == "content"


def test_flipped_weights_are_detected_by_the_digest(exported, tmp_path):
    # Flips that keep the protobuf valid (inside a weight) ran silently before the digest.
    from convcrf_deploy.files import DamagedFileError
    from convcrf_deploy.runtime import Segmenter
    _, good = exported
    data = good.read_bytes()
    weights = max((t.raw_data for t in onnx.load(str(good)).graph.initializer),
                  key=len)
    start = data.index(weights) + len(weights) // 2
    damaged = bytearray(data)
    for i in range(start, start + 16):
        damaged[i] ^= 0xFF
    bad = tmp_path / "weights.onnx"
    bad.write_bytes(bytes(damaged))
    with pytest.raises(DamagedFileError, match=r"weights\.onnx is damaged"):
        Segmenter(str(bad))
    from convcrf_deploy.tensorrt.network import prepare_for_parser   # what convcrf-build reads
    with pytest.raises(DamagedFileError, match=r"weights\.onnx is damaged"):
        prepare_for_parser(bad)
    assert prepare_for_parser(good).crf_in_model


def test_edited_crf_parameters_in_the_metadata_are_detected(exported, tmp_path):
    # The CRF's trained parameters travel in the metadata (convcrf.crf_state, read by the
    # native CRF executor): the digest covers our metadata entries too, not only the graph.
    import json

    from convcrf_deploy.files import DamagedFileError
    from convcrf_deploy.metadata import ONNX_KEYS
    from convcrf_deploy.runtime import Segmenter
    _, good = exported
    model = onnx.load(str(good))
    entry = next(p for p in model.metadata_props if p.key == ONNX_KEYS["crf_state"])
    state = json.loads(entry.value)
    state["appearance_weight"] = [v * 2 for v in state["appearance_weight"]] \
        if isinstance(state["appearance_weight"], list) else state["appearance_weight"] * 2
    entry.value = json.dumps(state)
    edited = tmp_path / "edited.onnx"
    onnx.save(model, str(edited))
    with pytest.raises(DamagedFileError, match=r"edited\.onnx is damaged"):
        Segmenter(str(edited))
    # Metadata that other tools add is not ours to police.
    model = onnx.load(str(good))
    extra = model.metadata_props.add()
    extra.key, extra.value = "author", "someone"
    annotated = tmp_path / "annotated.onnx"
    onnx.save(model, str(annotated))
    Segmenter(str(annotated)).close()
