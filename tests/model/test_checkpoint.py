"""save_model / load_model: safe round trips, the pickle gate and clear errors on bad files."""
import zipfile

import pytest
import torch
import torch.nn as nn

from convcrf_deploy import CRFConfig
from convcrf_deploy.metadata import ModelMetadata
from convcrf_deploy.model import (UNARY_ARCHITECTURES, CheckpointError, ConvCRF, FastFCN,
                                  ResNetFCN, SegmentationModel, build_unary, load_model,
                                  register_unary, save_model)
from convcrf_deploy.model.checkpoint import FORMAT_VERSION

CLASSES = ["background", "a", "b"]
METADATA = ModelMetadata(class_names=CLASSES, palette=[[0, 0, 0], [255, 0, 0], [0, 255, 0]],
                         input_size=(48, 64), resize="letterbox")


def randomise(model: nn.Module) -> nn.Module:
    """Give every parameter and BatchNorm statistic a non-default value, so that a round
    trip that silently dropped weights would be caught."""
    torch.manual_seed(1)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(torch.rand_like(tensor) * 0.1)
    return model


def crf_config(**kwargs):
    return CRFConfig(num_classes=3, filter_size=5, blur=2, iterations=2, **kwargs)


def outputs(model, image):
    with torch.no_grad():
        return model(image)


@pytest.mark.parametrize("unary,config", [
    (FastFCN(3, width=16), crf_config()),
    (ResNetFCN(3, widths=(8, 8, 16, 16), blocks=(1, 1, 1, 1)), None),
    (FastFCN(3, width=8, output_stride=4), crf_config(compatibility="learned",
                                                      learned_features=True)),
], ids=["fast_fcn+crf", "resnet_fcn", "fast_fcn+crf+C+T"])
def test_round_trip_reproduces_outputs_metadata_and_config(tmp_path, unary, config):
    model = randomise(SegmentationModel(unary, ConvCRF(config) if config else None, METADATA)).eval()
    path = tmp_path / "model.pt"
    save_model(model, path)
    loaded = load_model(path)
    assert not loaded.training
    assert loaded.metadata == METADATA
    assert (loaded.crf.config if loaded.crf else None) == config
    image = torch.rand(2, 3, 33, 47) * 255
    torch.testing.assert_close(outputs(loaded, image), outputs(model, image), rtol=0, atol=1e-6)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0)


def test_checkpoint_is_a_plain_dict_readable_with_weights_only(tmp_path):
    path = tmp_path / "model.pt"
    save_model(SegmentationModel(FastFCN(3, width=8), ConvCRF(crf_config()), METADATA), path)
    data = torch.load(path, weights_only=True)
    assert data["format"] == "convcrf-deploy/model"
    assert data["format_version"] == FORMAT_VERSION
    assert data["unary"] == {"name": "fast_fcn",
                             "kwargs": {"num_classes": 3, "width": 8, "output_stride": 8}}
    assert data["crf_config"] == crf_config().to_dict()
    assert data["metadata"] == METADATA.to_dict()
    assert isinstance(data["toolkit_version"], str)
    assert all(isinstance(v, torch.Tensor) for v in data["state_dict"].values())


class UserNet(nn.Module):
    def __init__(self, num_classes: int = 3, hidden: int = 4):
        super().__init__()
        self.conv1 = nn.Conv2d(3, hidden, 3, padding=1)
        self.conv2 = nn.Conv2d(hidden, num_classes, 1)

    def forward(self, x):
        return self.conv2(torch.relu(self.conv1(x)))


@pytest.fixture
def user_net_registered():
    register_unary("test_user_net", UserNet)
    yield
    UNARY_ARCHITECTURES.pop("test_user_net", None)


def test_registered_user_unary_round_trips_safely(tmp_path, user_net_registered):
    unary = build_unary({"name": "test_user_net", "kwargs": {"hidden": 5}})
    model = randomise(SegmentationModel(unary, None, METADATA)).eval()
    save_model(model, tmp_path / "user.pt")
    loaded = load_model(tmp_path / "user.pt")          # no allow_pickle needed
    assert isinstance(loaded.unary, UserNet) and loaded.unary.conv1.out_channels == 5
    image = torch.rand(1, 3, 20, 24) * 255
    torch.testing.assert_close(outputs(loaded, image), outputs(model, image), rtol=0, atol=0)


def test_unregistered_architecture_error_names_register_unary(tmp_path, user_net_registered):
    unary = build_unary({"name": "test_user_net", "kwargs": {}})
    save_model(SegmentationModel(unary, None, METADATA), tmp_path / "user.pt")
    UNARY_ARCHITECTURES.pop("test_user_net")
    with pytest.raises(CheckpointError, match=r"test_user_net.*register_unary"):
        load_model(tmp_path / "user.pt")


def test_unregistered_module_is_pickled_and_needs_allow_pickle(tmp_path):
    model = randomise(SegmentationModel(UserNet(), ConvCRF(crf_config()), METADATA)).eval()
    assert model.unary_spec is None
    path = tmp_path / "pickled.pt"
    save_model(model, path)
    torch.load(path, weights_only=True)                # the outer file stays safe to inspect
    with pytest.raises(CheckpointError, match=r"allow_pickle=True") as info:
        load_model(path)
    assert "arbitrary code" in str(info.value) and "UserNet" in str(info.value)
    loaded = load_model(path, allow_pickle=True)
    assert isinstance(loaded.unary, UserNet)
    image = torch.rand(1, 3, 20, 24) * 255
    torch.testing.assert_close(outputs(loaded, image), outputs(model, image), rtol=0, atol=0)


def test_load_demo_path_constant_is_used(monkeypatch, tmp_path):
    from convcrf_deploy.model import checkpoint
    path = tmp_path / "demo.pt"
    save_model(SegmentationModel(FastFCN(3, width=8), None, METADATA), path)
    monkeypatch.setattr(checkpoint, "DEMO_MODEL_PATH", path)
    assert load_model("demo").metadata == METADATA
    monkeypatch.setattr(checkpoint, "DEMO_MODEL_PATH", tmp_path / "absent.pt")
    with pytest.raises(CheckpointError, match="demo model is missing"):
        load_model("demo")


# ---- bad files ---------------------------------------------------------------------------

@pytest.fixture
def good_checkpoint(tmp_path):
    path = tmp_path / "good.pt"
    save_model(SegmentationModel(FastFCN(3, width=8), ConvCRF(crf_config()), METADATA), path)
    return path


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="not found") as info:
        load_model(tmp_path / "nope.pt")
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, ValueError)


def test_directory(tmp_path):
    with pytest.raises(CheckpointError, match="directory"):
        load_model(tmp_path)


@pytest.mark.parametrize("fraction", [0.0, 0.3, 0.9])
def test_truncated_file(tmp_path, good_checkpoint, fraction):
    data = good_checkpoint.read_bytes()
    bad = tmp_path / "truncated.pt"
    bad.write_bytes(data[:int(len(data) * fraction)])
    with pytest.raises(CheckpointError, match="truncated, corrupt|not a PyTorch file"):
        load_model(bad)


def test_corrupted_bytes(tmp_path, good_checkpoint):
    data = bytearray(good_checkpoint.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 4096] = bytes(4096)
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(bytes(data))
    with pytest.raises(CheckpointError):
        load_model(bad)


def test_random_bytes(tmp_path):
    bad = tmp_path / "random.pt"
    bad.write_bytes(bytes(torch.randint(0, 256, (5000,), generator=torch.Generator().manual_seed(0),
                                        dtype=torch.uint8).tolist()))
    with pytest.raises(CheckpointError, match="truncated, corrupt or not a PyTorch file"):
        load_model(bad)


def test_zip_that_is_not_a_checkpoint(tmp_path):
    bad = tmp_path / "archive.pt"
    with zipfile.ZipFile(bad, "w") as archive:
        archive.writestr("hello.txt", "not a model")
    with pytest.raises(CheckpointError, match="checkpoint"):
        load_model(bad)


@pytest.mark.parametrize("payload", [{"model": torch.zeros(3)}, [1, 2, 3],
                                     {"format": "something-else"}],
                         ids=["foreign-dict", "list", "other-format"])
def test_foreign_torch_file(tmp_path, payload):
    bad = tmp_path / "foreign.pt"
    torch.save(payload, bad)
    with pytest.raises(CheckpointError, match="not a convcrf-deploy checkpoint"):
        load_model(bad)


def test_crf_only_checkpoint_points_to_load_crf(tmp_path):
    path = tmp_path / "crf.pt"
    torch.save({"format": "convcrf-deploy/crf", "format_version": 1}, path)
    with pytest.raises(CheckpointError, match="load_crf"):
        load_model(path)


def test_pickled_objects_are_refused_without_being_run(tmp_path):
    bad = tmp_path / "module.pt"
    torch.save(nn.Conv2d(3, 3, 1), bad)               # a pickled module, not a checkpoint
    with pytest.raises(CheckpointError, match=r"refused: loading it would import and call "
                                              r"Python code \(torch.nn.*Conv2d\)"):
        load_model(bad)


def test_newer_format_version(tmp_path, good_checkpoint):
    data = torch.load(good_checkpoint, weights_only=True)
    data["format_version"] = FORMAT_VERSION + 1
    bad = tmp_path / "future.pt"
    torch.save(data, bad)
    with pytest.raises(CheckpointError, match="upgrade convcrf-deploy"):
        load_model(bad)


def test_state_dict_mismatch(tmp_path, good_checkpoint):
    data = torch.load(good_checkpoint, weights_only=True)
    data["unary"]["kwargs"]["width"] = 16                # architecture no longer fits weights
    bad = tmp_path / "mismatch.pt"
    torch.save(data, bad)
    with pytest.raises(CheckpointError, match="do not fit the architecture"):
        load_model(bad)
    data = torch.load(good_checkpoint, weights_only=True)
    del data["state_dict"]["unary.classifier.weight"]
    del data["weights_sha256"]                        # as an old checkpoint (no digest)
    torch.save(data, bad)
    with pytest.raises(CheckpointError, match="unary.classifier.weight"):
        load_model(bad)


def test_bad_kwargs_and_metadata(tmp_path, good_checkpoint):
    data = torch.load(good_checkpoint, weights_only=True)
    data["unary"]["kwargs"]["no_such_argument"] = 1
    bad = tmp_path / "kwargs.pt"
    torch.save(data, bad)
    with pytest.raises(CheckpointError, match="no_such_argument"):
        load_model(bad)
    data = torch.load(good_checkpoint, weights_only=True)
    data["metadata"]["class_names"] = ["only-one"]
    torch.save(data, bad)
    with pytest.raises(CheckpointError, match="invalid metadata.*palette"):
        load_model(bad)
    data["metadata"]["palette"] = [[0, 0, 0]]          # valid metadata, but 1 class vs CRF's 3
    torch.save(data, bad)
    with pytest.raises(CheckpointError, match="CRF has 3 classes"):
        load_model(bad)


def test_save_model_rejects_other_modules(tmp_path):
    with pytest.raises(ValueError, match="SegmentationModel"):
        save_model(FastFCN(3), tmp_path / "x.pt")


@pytest.mark.parametrize("content", [b"", b"junk", b"PK\x03\x04"])
def test_tiny_files_are_clear_errors(tmp_path, content):
    # A few bytes made torch.load raise struct.error, which escaped as a crash.
    bad = tmp_path / "tiny.pt"
    bad.write_bytes(content)
    with pytest.raises(CheckpointError, match="truncated, corrupt or not a PyTorch file"):
        load_model(bad)


# ---- damage, atomic writes, hostile pickles ---------------------------------------------------

def flip_middle(source, target, count=64):
    data = bytearray(source.read_bytes())
    middle = len(data) // 2
    for i in range(middle, middle + count):
        data[i] ^= 0xFF
    target.write_bytes(bytes(data))
    return target


@pytest.mark.parametrize("which", ["demo", "saved"])
def test_flipped_bytes_are_detected_and_the_file_named(tmp_path, good_checkpoint, which):
    # Field report: the demo with 64 bytes flipped in its middle loaded silently (accuracy
    # 99.0 % -> 77.4 %).
    from convcrf_deploy.model.checkpoint import DEMO_MODEL_PATH
    source = DEMO_MODEL_PATH if which == "demo" else good_checkpoint
    bad = flip_middle(source, tmp_path / "flipped.pt")
    with pytest.raises(CheckpointError, match=r"flipped\.pt.*damaged|flipped\.pt.*corrupt"):
        load_model(bad)


def test_crf_checkpoint_digest_is_checked(tmp_path):
    from convcrf_deploy.files import DamagedFileError
    from convcrf_deploy.training import load_crf, save_crf
    path = tmp_path / "crf.pt"
    save_crf(ConvCRF(crf_config()), path)
    data = torch.load(path, weights_only=True)
    data["state_dict"]["appearance_weight"] += 1.0          # changed after writing
    torch.save(data, path)
    with pytest.raises(DamagedFileError, match=r"crf\.pt is damaged"):
        load_crf(path)


def test_checkpoint_without_digest_loads_with_a_warning(tmp_path, good_checkpoint):
    data = torch.load(good_checkpoint, weights_only=True)
    del data["weights_sha256"]
    old = tmp_path / "old.pt"
    torch.save(data, old)
    with pytest.warns(UserWarning, match="no weights digest"):
        model = load_model(old)
    assert model.num_classes == 3


def test_demo_checkpoint_has_a_digest(recwarn):
    from convcrf_deploy.model.checkpoint import DEMO_MODEL_PATH, DIGEST_KEY, checkpoint_digest

    data = torch.load(DEMO_MODEL_PATH, weights_only=True)
    assert DIGEST_KEY in data and data[DIGEST_KEY] == checkpoint_digest(data)
    model = load_model("demo")
    assert model.num_classes == len(model.metadata.class_names)
    assert not [w for w in recwarn if "digest" in str(w.message)]  # checked, not skipped


_FULL_DISK = r"""
import resource, signal, sys
sys.path.insert(0, sys.argv[1])
import torch
from convcrf_deploy import CRFConfig
from convcrf_deploy.metadata import ModelMetadata
from convcrf_deploy.model import ConvCRF, FastFCN, SegmentationModel, save_model
from convcrf_deploy.training import save_crf
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)       # a write past the limit fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[3]), int(sys.argv[3])))
metadata = ModelMetadata(class_names=["background", "a", "b"])
big = SegmentationModel(FastFCN(3, width=64), None, metadata)
for save in (lambda p: save_model(big, p), lambda p: save_crf(ConvCRF(CRFConfig(num_classes=3,
        compatibility="learned", learned_features=True)), p)):
    try:
        save(sys.argv[2])
    except (OSError, RuntimeError) as exc:
        print("failed as expected:", type(exc).__name__)
    else:
        print("WROTE"); sys.exit(1)
"""


def test_a_failed_save_keeps_the_previous_file(tmp_path, good_checkpoint):
    # A full disk (a file-size limit) part way through save_model used to leave a truncated
    # file in place of the good one.
    import subprocess
    import sys
    from pathlib import Path
    before = good_checkpoint.read_bytes()
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", _FULL_DISK, str(root), str(good_checkpoint),
                           "2000"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("failed as expected") == 2
    assert good_checkpoint.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.pt"]     # no temporary left
    load_model(good_checkpoint)


def test_plain_pickle_with_code_is_refused_and_says_why(tmp_path):
    import os
    import pickle
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    for protocol in (0, 4):
        bad = tmp_path / f"evil{protocol}.pt"
        bad.write_bytes(pickle.dumps(Payload(), protocol=protocol))
        with pytest.raises(CheckpointError) as info:
            load_model(bad)
        message = str(info.value)
        assert "refused" in message and "nothing from the file was run" in message
        assert "truncated" not in message
    assert not marker.exists()


def test_weights_with_nan_are_refused_on_save_and_on_load(tmp_path):
    # Field report: a checkpoint whose CRF bandwidth was NaN loaded and ran, and the demo's
    # accuracy silently fell from 99 % to 84 %.
    import torch as _torch

    from convcrf_deploy.model.checkpoint import DEMO_MODEL_PATH, checkpoint_digest
    model = load_model("demo")
    with _torch.no_grad():
        model.crf.log_appearance_position_bandwidth.fill_(float("nan"))
    with pytest.raises(ValueError, match="NaN or infinite.*log_appearance_position_bandwidth"):
        save_model(model, tmp_path / "nan.pt")
    assert not (tmp_path / "nan.pt").exists()
    # A file written by other means (an older toolkit, a hand-made checkpoint) is refused on load.
    data = _torch.load(DEMO_MODEL_PATH, weights_only=True)
    data["state_dict"]["crf.log_appearance_position_bandwidth"] = _torch.tensor(float("nan"))
    data["weights_sha256"] = checkpoint_digest(data)
    _torch.save(data, tmp_path / "nan.pt")
    with pytest.raises(CheckpointError, match=r"nan\.pt.*NaN or infinite"):
        load_model(tmp_path / "nan.pt")


def test_an_onnx_file_given_as_a_checkpoint_says_what_it_is(tmp_path):
    # Field report: `convcrf-run --model demo.onnx --backend torch` said "truncated, corrupt or
    # not a PyTorch file (unpickling failed: Unsupported operand 8)".
    path = tmp_path / "demo.onnx"
    path.write_bytes(b"\x08\x0a\x12\x0econvcrf-deploy")
    # New-user trial: it then said "run it with --backend onnxruntime", an option that
    # convcrf-bench (which also loads checkpoints) does not have.
    with pytest.raises(CheckpointError, match=r"demo\.onnx is an ONNX file.*convcrf-run "
                                              r"--model FILE\.onnx.*start from the checkpoint"):
        load_model(path)
