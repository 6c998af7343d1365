"""Every command in the README, and its Python snippet, runs and exits 0 (issue 21).

Before: the README's ``convcrf-bench demo --backends torch,onnxruntime --crf-references
unfold,fullcrf`` ended in a traceback, and its Python snippet raised NameError. Now:

* :func:`readme_commands` reads every command of README.md: each line of its fenced ``bash``
  blocks (``\\`` continuations joined, the ``# comment`` dropped) and each backticked command in
  the command column of its tables (the figures).
* :data:`COMMANDS` maps each one, keyed by its text as it stands in the README, to what runs it
  here: usually a cheaper variant of the same command (small sizes, few frames), run in one
  scratch folder in README order, with the inputs it reads created first.
  ``test_every_readme_command_is_covered`` fails for a README command without an entry (and for
  an entry whose command left the README), so the README and this test cannot drift apart.
* Python blocks run as written, in that folder, after the commands above them.

Extending (e.g. a new README section "Your own model"): write the section; run this test; it
names each command that has no entry. Add one per command to :data:`COMMANDS`:

``Run(args)``
    run the command in-process (``convcrf-*``: its ``main``; ``python3 -c``: a subprocess) with
    these arguments instead of the README's; ``args=None`` runs them as written. ``why`` says
    what was made cheaper, ``setup`` names inputs to create first (:data:`INPUTS`: add a
    function there for a new kind of input), ``needs`` a condition without which it is skipped
    (``"gpu"``, ``"tensorrt"``, ``"triton"``, ``"voc"``, ``"ros"``), ``expect`` another exit
    status where the condition is missing (e.g. 3: "install this library").
``Covered(path, text)``
    the command runs elsewhere (CI runs ``bash scripts/test.sh``): the test checks that ``path``
    holds ``text``.
``Figure(script)``
    a benchmark that reproduces a figure (minutes by design, not run in CI): its ``--help`` must
    work.
``Elsewhere(why)``
    a command for another machine (system packages installed as root, an ARM board): skipped
    with ``why``; use it only where no Run or Covered can stand in.

A line chaining commands with ``&&`` maps to a list with one entry per command.
"""
from __future__ import annotations

import importlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


# ---- reading the README -----------------------------------------------------------------------

def normalized(command: str) -> str:
    """A command as one canonical line: shell words joined by single spaces, comment dropped."""
    return " ".join(shlex.split(command, comments=True))


#: README sections another test runs exactly as written (their commands and Python blocks are
#: left to it): "Your own model" -> tests/test_readme_own_model.py.
RUN_ELSEWHERE = {"## Your own model": "test_readme_own_model.py"}


def readme_text() -> str:
    """README.md without the sections of :data:`RUN_ELSEWHERE`."""
    text = README.read_text()
    for heading in RUN_ELSEWHERE:
        start = text.find(heading + "\n")
        if start >= 0:
            end = text.find("\n## ", start + len(heading))
            text = text[:start] + (text[end + 1:] if end >= 0 else "")
    return text


def _fenced_blocks(text: str) -> list[tuple[str, str]]:
    """``[(language, body)]`` of the fenced code blocks in ``text``."""
    return [(m.group(1), m.group(2))
            for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.MULTILINE | re.DOTALL)]


def readme_commands(text: str | None = None) -> list[str]:
    """Every command of the README, normalized (see the module docstring), in README order."""
    text = readme_text() if text is None else text
    commands: list[str] = []
    for language, body in _fenced_blocks(text):
        if language not in ("bash", "sh", "shell", "console"):
            continue
        for line in re.sub(r"\\\n\s*", " ", body).splitlines():
            command = normalized(line)
            if command:
                commands.append(command)
    column = None                               # the "command" column of the current table
    lines = text.splitlines()
    for number, line in enumerate(lines):
        if not line.startswith("|"):
            column = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        following = lines[number + 1] if number + 1 < len(lines) else ""
        if re.fullmatch(r"\|?[\s|:-]+\|?", following) and "-" in following:   # a header row
            column = next((i for i, c in enumerate(cells) if c.lower() == "command"), None)
            continue
        if column is not None and column < len(cells):
            for code in re.findall(r"`([^`]+)`", cells[column]):
                if re.match(r"(python3? |convcrf-|bash )", code):
                    commands.append(normalized(code))
    return commands


def python_blocks(text: str | None = None) -> list[str]:
    text = readme_text() if text is None else text
    return [body for language, body in _fenced_blocks(text) if language == "python"]


# ---- what runs each command ------------------------------------------------------------------

@dataclass
class Run:
    args: list[str] | None = None          # None: the README's own arguments
    why: str = ""
    setup: tuple[str, ...] = ()
    needs: str | None = None
    expect: int | None = None              # exit status where ``needs`` is missing (else skip)


@dataclass
class Covered:
    path: str
    text: str


@dataclass
class Figure:
    script: str


@dataclass
class Elsewhere:
    """A command for another machine (root's apt-get, ARM hardware): skipped, saying why."""
    why: str


SMALL_DEMO = ["--size", "64x48"]

COMMANDS: dict[str, object] = {
    # Quickstart: the set-up steps are what scripts/test.sh does on every CI run.
    "python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 && pip install . "
    "&& convcrf-run --video demo --max-frames 300": [
        Covered("scripts/test.sh", "python3 -m venv"),
        Covered("scripts/test.sh", '. "$VENV/bin/activate"'),
        Covered("scripts/test.sh", "pip install torch==2.13.0"),
        Covered("scripts/test.sh", 'pip install ".[test]"'),
        Run(["--video", "demo", "--max-frames", "5", *SMALL_DEMO],
            why="5 frames of a 64x48 scene"),
    ],
    "bash scripts/test.sh": Covered(".ci/run", "bash scripts/test.sh"),
    "convcrf-export demo -o demo.onnx": Run(),
    "convcrf-export model.pt --flavor plugin --fp16":
        Run(["model.pt", "--flavor", "plugin", "--fp16", "--height", "32", "--width", "48"],
            why="verified at 32x48 (default 480x640 in the stock ONNX evaluator: minutes)",
            setup=("model.pt",)),
    "convcrf-run --video cam0 --model demo.onnx":
        Run(["--video", "cam0", "--model", "demo.onnx", "--max-frames", "3"],
            why="a stand-in camera (no camera here), 3 frames", setup=("demo.onnx", "cam0")),
    "convcrf-run --video clip.mp4 --headless --save out.mp4 --stats-json stats.json":
        Run(why="an 8-frame 64x48 clip", setup=("clip.mp4",)),
    "python3 -c \"from convcrf_deploy.runtime.streams.ros import write_image_bag; "
    "write_image_bag('drive', 'demo', max_frames=100)\"":
        Run(["-c", "from convcrf_deploy.runtime.streams.ros import write_image_bag; "
                   "write_image_bag('drive', 'demo', max_frames=5, demo_size=(48, 64))"],
            why="5 frames at 64x48", needs="ros"),
    "convcrf-run --video bag:drive/ --topic /camera/image_raw --save-bag out --foxglove 8765":
        Run(["--video", "bag:drive/", "--topic", "/camera/image_raw", "--save-bag", "out",
             "--foxglove", "0"], why="any free port (8765 may be taken here)",
            setup=("drive",), needs="ros"),
    "convcrf-build demo.onnx -o demo.engine --plugin libconvcrf_trt_plugin.so":
        Run(setup=("demo.onnx",), needs="tensorrt", expect=3),
    "convcrf-triton demo.onnx -o repo/": Run(setup=("demo.onnx",)),
    "convcrf-run --backend triton --model convcrf --url 127.0.0.1:8001 --protocol grpc "
    "--video cam0":
        Run(["--backend", "triton", "--model", "convcrf", "--url", "{triton_grpc}",
             "--protocol", "grpc", "--video", "cam0", "--max-frames", "3"],
            why="the local test server's gRPC port, a stand-in camera, 3 frames",
            setup=("repo/", "cam0", "triton"), needs="triton"),
    "convcrf-bench demo --backends torch,onnxruntime --crf-references unfold,fullcrf "
    "--json bench.json":
        Run(["demo", "--backends", "torch,onnxruntime", "--crf-references", "unfold,fullcrf",
             "--json", "bench.json", "--sizes", "64x48", "--iterations", "2", "--warmup", "0"],
            why="one 64x48 size, 2 timed calls"),
    "convcrf-bench demo --sweep --filter-sizes 5,7,11 --blurs 2,4,8":
        Run(["demo", "--sweep", "--filter-sizes", "5,7,11", "--blurs", "2,4,8", "--size",
             "64x48", "--num-frames", "1", "--iterations", "1", "--warmup", "0"],
            why="1 frame at 64x48, 1 timed call per setting"),
    "convcrf-eval synthetic --data VOC2012/ --filter-sizes 5,7,11,13":
        Run(["synthetic", "--data", "{voc}", "--filter-sizes", "5,7,11,13", "--max-images",
             "1", "--scale", "0.25", "--quiet"],
            why="the VOC sample instead of VOC2012, 1 image at 1/4 scale", needs="voc"),
    "convcrf-train crf --data VOC2012/ --synthetic --epochs 3 --out crf.pt":
        Run(["crf", "--data", "{voc}", "--synthetic", "--epochs", "1", "--out", "crf.pt",
             "--max-images", "2", "--scale", "0.2", "--holdout", "0.5", "--quiet"],
            why="2 sample images at 1/5 scale, 1 epoch", needs="voc"),
    "convcrf-export my_model.pt --import my_nets.py":
        Run(["my_model.pt", "--import", "my_nets.py", "--height", "32", "--width", "48"],
            why="verified at 32x48", setup=("my_nets.py",)),
    "convcrf-run --model unary.pt2 --crf crf.pt --metadata meta.json":
        Run(["--model", "unary.pt2", "--crf", "crf.pt", "--metadata", "meta.json",
             "--max-frames", "2", *SMALL_DEMO], why="2 frames of a 64x48 scene",
            setup=("unary.pt2",)),
    "bash scripts/gpu_check.sh": Run(needs="gpu"),
    # ARM64: the install steps on an ARM board (the same steps as the quickstart's, which CI runs
    # on x86-64), then the cross-build that scripts/ci_native.sh runs in CI.
    "sudo apt-get install -y python3-venv python3-dev g++ cmake":
        Elsewhere("system packages, installed as root (CI machines have them)"),
    "python3 -m venv .venv && . .venv/bin/activate": [
        Covered("scripts/test.sh", "python3 -m venv"),
        Covered("scripts/test.sh", '. "$VENV/bin/activate"'),
    ],
    "pip install torch": Elsewhere("an ARM board's PyTorch wheel (x86-64 CI pins torch==2.13.0)"),
    "pip install . && convcrf-check-env": [
        Covered("scripts/test.sh", 'pip install ".[test]"'),
        Run(),
    ],
    "sudo apt-get install -y g++-aarch64-linux-gnu qemu-user":
        Covered("scripts/ci_native.sh", "g++-aarch64-linux-gnu qemu-user"),
    "cmake -S . -B build-aarch64 -DCMAKE_TOOLCHAIN_FILE=cmake/toolchains/aarch64-linux-gnu.cmake "
    "-DCONVCRF_WITH_CUDA=OFF": Covered("scripts/ci_native.sh",
                                       "cmake/toolchains/aarch64-linux-gnu.cmake"),
    "cmake --build build-aarch64 -j && ctest --test-dir build-aarch64 -L cpu": [
        Covered("scripts/ci_native.sh", "--target convcrf_cpu convcrf_cpu_tests"),
        Covered("scripts/ci_native.sh", 'ctest --test-dir "$build/aarch64" -L cpu'),
    ],
    # The figures' commands (the "Measured" table).
    "python benchmarks/bench_crf.py --repeats 7": Figure("benchmarks/bench_crf.py"),
    "convcrf-eval synthetic --data ../shared/data/pascal-voc-sample --seeds 3 "
    "--filter-sizes 5,7,11,13":
        Run(["synthetic", "--data", "{voc}", "--seeds", "1", "--filter-sizes", "5,7,11,13",
             "--max-images", "1", "--scale", "0.25", "--quiet"],
            why="1 seed, 1 image at 1/4 scale", needs="voc"),
    "python benchmarks/bench_runtime.py --threads 2 --skip-warm-start":
        Figure("benchmarks/bench_runtime.py"),
    "python benchmarks/bench_shared_cpu.py --frames 40 --rounds 2":
        Figure("benchmarks/bench_shared_cpu.py"),
    "python benchmarks/bench_bags.py": Figure("benchmarks/bench_bags.py"),
    "python benchmarks/bench_ort_ops.py --size 640x480 --threads 2":
        Figure("benchmarks/bench_ort_ops.py"),
    "python benchmarks/bench_unary_crf_split.py demo.onnx unet.onnx deeplab.onnx segformer.onnx":
        Figure("benchmarks/bench_unary_crf_split.py"),
    "python benchmarks/bench_triton.py --protocol grpc": Figure("benchmarks/bench_triton.py"),
    "convcrf-export demo --flavor portable": Run(why="the demo model traced once per process"),
}


# ---- inputs the commands read ----------------------------------------------------------------

def _demo_onnx(work: Path, context: dict) -> None:
    if not (work / "demo.onnx").exists():
        from convcrf_deploy.cli.export import main
        assert main(["demo", "-o", "demo.onnx"]) == 0


def _model_pt(work: Path, context: dict) -> None:
    from convcrf_deploy import load_model, save_model
    if not (work / "model.pt").exists():
        save_model(load_model("demo"), work / "model.pt")


def _clip(work: Path, context: dict) -> None:
    import cv2
    writer = cv2.VideoWriter(str(work / "clip.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 10,
                             (64, 48))
    for i in range(8):
        writer.write(np.full((48, 64, 3), 30 * i, np.uint8))
    writer.release()


def _drive(work: Path, context: dict) -> None:
    if not (work / "drive").exists():
        from convcrf_deploy.runtime.streams.ros import write_image_bag
        write_image_bag(work / "drive", "demo", max_frames=5, demo_size=(48, 64))


def _repository(work: Path, context: dict) -> None:
    _demo_onnx(work, context)
    if not (work / "repo" / "convcrf").exists():
        from convcrf_deploy.cli.triton import main
        assert main(["demo.onnx", "-o", "repo/"]) == 0


class _FakeCapture:
    """A stand-in camera: 64x48 frames at about 100 fps."""

    def __init__(self):
        self.count = 0

    def read(self):
        time.sleep(0.01)
        self.count += 1
        return True, np.full((48, 64, 3), self.count % 256, np.uint8)

    def release(self):
        pass

    def set(self, *args):
        return True


def _camera(work: Path, context: dict) -> None:
    from types import SimpleNamespace

    from convcrf_deploy.runtime import streams
    monkeypatch = context["monkeypatch"]
    monkeypatch.setattr(streams, "_open_camera", lambda node: _FakeCapture)
    monkeypatch.setattr(streams, "sys", SimpleNamespace(platform="test"))  # no /dev/video0


def _triton(work: Path, context: dict) -> None:
    from convcrf_deploy.serving import TritonServer
    server = TritonServer(work / "repo")
    server.start()
    context["cleanup"].append(server.stop)
    context["triton_grpc"] = server.grpc_url.replace("grpc://", "")


_USER_NETS = """
import torch.nn as nn
from convcrf_deploy.model import register_unary


class ReadmeNet(nn.Module):
    def __init__(self, num_classes, width=8):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, width, 3, stride=2, padding=1), nn.ReLU(),
                                  nn.Conv2d(width, num_classes, 1), nn.Upsample(scale_factor=2))

    def forward(self, x):
        return self.body(x)


register_unary("readme_net", ReadmeNet)
"""


def _user_model(work: Path, context: dict) -> None:
    """my_nets.py registering a network, and my_model.pt saved with it; afterwards the
    registry is as in a fresh process (so the command needs --import)."""
    from convcrf_deploy import ConvCRF, CRFConfig, SegmentationModel, save_model
    from convcrf_deploy.metadata import ModelMetadata
    from convcrf_deploy.model import build_unary, unaries
    from convcrf_deploy.user_code import import_user_code

    monkeypatch = context["monkeypatch"]
    monkeypatch.setattr(unaries, "UNARY_ARCHITECTURES", dict(unaries.UNARY_ARCHITECTURES))
    monkeypatch.setattr(sys, "path", list(sys.path))
    (work / "my_nets.py").write_text(_USER_NETS)
    before = set(sys.modules)
    import_user_code([str(work / "my_nets.py")])
    model = SegmentationModel(build_unary({"name": "readme_net", "kwargs": {"num_classes": 3}}),
                              ConvCRF(CRFConfig(num_classes=3, filter_size=3, iterations=2)),
                              ModelMetadata(["ground", "tree", "sky"]))
    save_model(model, work / "my_model.pt")
    unaries.UNARY_ARCHITECTURES.pop("readme_net")
    for name in set(sys.modules) - before:
        del sys.modules[name]


def _unary_file(work: Path, context: dict) -> None:
    """unary.pt2 (torch.export, no class code), crf.pt (save_crf) and meta.json."""
    import torch
    import torch.nn as nn

    from convcrf_deploy import ConvCRF, CRFConfig
    from convcrf_deploy.training import save_crf

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 1)).eval()
    dims = ({0: torch.export.Dim("batch", min=1, max=16),
             2: torch.export.Dim("height", min=16, max=4096),
             3: torch.export.Dim("width", min=16, max=4096)},)
    torch.export.save(torch.export.export(net, (torch.rand(2, 3, 48, 64),), dynamic_shapes=dims),
                      str(work / "unary.pt2"))
    save_crf(ConvCRF(CRFConfig(num_classes=3, filter_size=3, iterations=2)), work / "crf.pt")
    (work / "meta.json").write_text(json.dumps({"class_names": ["ground", "tree", "sky"]}))


#: inputs a command reads, by name: a function creating it in the scratch folder.
INPUTS: dict[str, Callable[[Path, dict], None]] = {
    "demo.onnx": _demo_onnx, "model.pt": _model_pt, "clip.mp4": _clip, "drive": _drive,
    "repo/": _repository, "cam0": _camera, "triton": _triton, "my_nets.py": _user_model,
    "unary.pt2": _unary_file,
}


def _available(need: str | None, context: dict) -> str | None:
    """Why ``need`` is missing here, or None."""
    if need is None:
        return None
    if need == "gpu":
        return None if shutil.which("nvidia-smi") else "no NVIDIA GPU (nvidia-smi) here"
    if need == "tensorrt":
        spec = importlib.util.find_spec("tensorrt")
        # From tests/ the folder tests/tensorrt is a namespace package named tensorrt.
        return None if spec is not None and spec.origin else "TensorRT is not installed"
    if need == "triton":
        from convcrf_deploy.serving import TRITON_PYTHON_ENV
        if importlib.util.find_spec("tritonclient") is None:
            return "tritonclient is not installed"
        return None if os.environ.get(TRITON_PYTHON_ENV) else (
            f"{TRITON_PYTHON_ENV} is not set (scripts/test.sh sets it)")
    if need == "voc":
        return None if context.get("voc") else "no PASCAL VOC sample (tests/conftest.py)"
    if need == "ros":
        missing = [m for m in ("rosbags", "foxglove") if importlib.util.find_spec(m) is None]
        return f"{', '.join(missing)} not installed" if missing else None
    raise AssertionError(f"unknown need {need!r}")


def _entry_points() -> dict[str, str]:
    """``{program: "module:function"}`` of pyproject.toml's [project.scripts]."""
    section = (ROOT / "pyproject.toml").read_text().split("[project.scripts]", 1)[1]
    section = section.split("\n[", 1)[0]
    return dict(re.findall(r'^([\w-]+)\s*=\s*"([\w.:]+)"', section, re.MULTILINE))


def _segments(command: str) -> list[list[str]]:
    words, segments = shlex.split(command), [[]]
    for word in words:
        if word == "&&":
            segments.append([])
        else:
            segments[-1].append(word)
    return segments


def _run(words: list[str], entry: Run, context: dict) -> int:
    """Run one README command (``words``) as ``entry`` says; returns its exit status."""
    program, args = words[0], words[1:] if entry.args is None else list(entry.args)
    args = [re.sub(r"\{(\w+)\}", lambda m: str(context[m.group(1)]), a) for a in args]
    if program.startswith("convcrf-"):
        module, function = _entry_points()[program].split(":")
        main = getattr(importlib.import_module(module), function)
        return main(args)
    if program in ("python", "python3"):
        return subprocess.run([sys.executable, *args], timeout=600).returncode
    if program == "bash":
        return subprocess.run(["bash", *args], cwd=ROOT, timeout=600).returncode
    raise AssertionError(f"no way to run {program!r}: add it to _run")


# ---- the tests --------------------------------------------------------------------------------

def test_every_readme_command_is_covered():
    commands = readme_commands()
    assert len(commands) >= 15, commands                  # the parser still finds them
    missing = [c for c in commands if c not in {normalized(k) for k in COMMANDS}]
    assert not missing, ("README commands with no entry in tests/test_readme.py COMMANDS (see "
                         "its docstring):\n" + "\n".join(missing))
    stale = [k for k in COMMANDS if normalized(k) not in commands]
    assert not stale, "entries for commands no longer in the README:\n" + "\n".join(stale)
    for key, entry in COMMANDS.items():
        entries = entry if isinstance(entry, list) else [entry]
        assert len(entries) == len(_segments(key)), f"{key}: one entry per && command"


def test_the_parser_reads_continuations_comments_chains_and_tables():
    text = ("```bash\nconvcrf-run --video a \\\n    --save b   # comment\n\ncmd1 && cmd2\n```\n"
            "| what | command | result |\n|---|---|---|\n| x | `python benchmarks/b.py -n 2` "
            "(and `plugin`) | `convcrf-run` |\n\n| status | meaning |\n|---|---|\n"
            "| `4` | `convcrf-run`: lost |\n```python\nprint(1)\n```\n")
    assert readme_commands(text) == ["convcrf-run --video a --save b", "cmd1 && cmd2",
                                     "python benchmarks/b.py -n 2"]
    assert python_blocks(text) == ["print(1)\n"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("readme")


@pytest.fixture
def context(workdir, monkeypatch, voc_sample_or_none):
    monkeypatch.chdir(workdir)
    state = {"monkeypatch": monkeypatch, "cleanup": [],
             "voc": str(voc_sample_or_none) if voc_sample_or_none else ""}
    yield state
    for cleanup in reversed(state["cleanup"]):
        cleanup()


@pytest.fixture
def voc_sample_or_none(request):
    """The PASCAL VOC sample folder (tests/conftest.py's ``voc_sample``), or None."""
    try:
        return request.getfixturevalue("voc_sample")
    except pytest.skip.Exception:
        return None


@pytest.mark.parametrize("command", readme_commands(),
                         ids=[f"{i:02d}-{' '.join(shlex.split(c)[:2])[:40]}"
                              for i, c in enumerate(readme_commands())])
def test_readme_command_exits_0(command, workdir, context):
    entry = {normalized(k): v for k, v in COMMANDS.items()}.get(command)
    if entry is None:
        pytest.fail(f"no entry for {command!r}: see test_every_readme_command_is_covered")
    entries = entry if isinstance(entry, list) else [entry]
    for words, part in zip(_segments(command), entries):
        if isinstance(part, Elsewhere):
            assert part.why
            pytest.skip(f"{' '.join(words)}: {part.why}")
        if isinstance(part, Covered):
            assert part.text in (ROOT / part.path).read_text(), \
                f"{part.path} no longer runs {' '.join(words)!r}"
        elif isinstance(part, Figure):
            done = subprocess.run([sys.executable, str(ROOT / part.script), "--help"],
                                  capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, done.stderr
            unknown = [w for w in words[2:] if w.startswith("--") and w.split("=")[0]
                       not in done.stdout]
            assert not unknown, f"{part.script} has no option {unknown}"
        else:
            missing = _available(part.needs, context)
            if missing and part.expect is None:
                pytest.skip(f"{' '.join(words)}: {missing}")
            for name in part.setup:
                INPUTS[name](workdir, context)
            if missing and part.needs == "tensorrt":
                context["monkeypatch"].setitem(sys.modules, "tensorrt", None)  # not tests/tensorrt
            status = _run(words, part, context)
            if missing:
                assert status == part.expect, (words, status)
                pytest.skip(f"{' '.join(words)}: {missing}; exit status {status} as expected")
            assert status == 0, (words, part.why)


def test_sections_run_elsewhere_are_run_there():
    text = README.read_text()
    for heading, test in RUN_ELSEWHERE.items():
        assert heading + "\n" in text, f"README lost its section {heading!r}: update RUN_ELSEWHERE"
        assert heading in (Path(__file__).parent / test).read_text(), test


def test_readme_python_snippets_run(workdir, context):
    blocks = python_blocks()
    assert blocks, "the README has no Python block any more"
    _demo_onnx(workdir, context)                           # the snippet reads demo.onnx
    for block in blocks:
        namespace: dict = {"__name__": "__readme__"}
        exec(compile(block, "README.md (python block)", "exec"), namespace)
    assert namespace["probs"].shape == (1, 21, 240, 320)
    assert list(namespace["model"].metadata.class_names)
    assert namespace["result"].labels.shape == (240, 320)


# ---- documents that quote what the code produces -----------------------------------------------

def test_export_docs_quote_the_demo_graph_sizes(workdir):
    """docs/export.md quotes the demo graphs' node counts; they were stale (issue 21)."""
    pytest.importorskip("torch")
    import onnx
    import onnx.inliner

    from convcrf_deploy import load_model
    from convcrf_deploy.export import export_onnx

    text = (ROOT / "docs" / "export.md").read_text()
    quoted = re.search(r"plugin (\d+) nodes; single-file (\d+) nodes \+ two local functions\s+"
                       r"\((\d+) nodes once inlined\); portable (\d+) nodes", text)
    assert quoted, "docs/export.md no longer quotes the graph sizes in the form this test reads"
    model = load_model("demo")
    counts = {}
    for flavor in ("plugin", "single-file", "portable"):
        path = workdir / f"sizes.{flavor}.onnx"
        export_onnx(model, path, flavor=flavor, verify=False)
        graph = onnx.load(str(path))
        counts[flavor] = (len(graph.graph.node), len(graph.functions),
                          len(onnx.inliner.inline_local_functions(graph).graph.node))
    assert counts["single-file"][1] == 2
    assert [int(n) for n in quoted.groups()] == [
        counts["plugin"][0], counts["single-file"][0], counts["single-file"][2],
        counts["portable"][0]], counts


def test_serving_docs_agree_with_the_readme():
    """docs/serving.md told users to pip install a package that is not on the index and quoted
    other Triton figures than the README (issue 21)."""
    serving = (ROOT / "docs" / "serving.md").read_text()
    readme = README.read_text()
    assert "pip install convcrf-deploy" not in serving
    row = next(line for line in readme.splitlines() if "bench_triton.py" in line)
    ratios = re.findall(r"(\d+\.\d+)x", row)
    assert ratios and all(f"{r}x" in serving or f"| {r} |" in serving for r in ratios), ratios
