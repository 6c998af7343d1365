"""convcrf_deploy.files: atomic writes and refusing outputs that are inputs (issue 11)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from convcrf_deploy.files import (OutputIsInputError, atomic_write,
                                  refuse_output_overwriting_input, write_text_atomic)

ROOT = Path(__file__).resolve().parents[1]


def test_atomic_write_replaces_only_on_success(tmp_path):
    target = tmp_path / "stats.json"
    target.write_text("previous")
    with pytest.raises(RuntimeError):
        with atomic_write(target) as temporary:
            temporary.write_text("half of the new")
            raise RuntimeError("failed part way")
    assert target.read_text() == "previous"
    write_text_atomic(target, "new")
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["stats.json"]


def test_new_files_get_ordinary_permissions(tmp_path):
    write_text_atomic(tmp_path / "a.json", "{}")
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o666 & ~mask
    (tmp_path / "b.json").write_text("")
    os.chmod(tmp_path / "b.json", 0o640)
    write_text_atomic(tmp_path / "b.json", "{}")
    assert (tmp_path / "b.json").stat().st_mode & 0o777 == 0o640


def test_missing_folder_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="folder .*nope does not exist"):
        write_text_atomic(tmp_path / "nope" / "a.json", "{}")


def test_full_disk_keeps_the_previous_file(tmp_path):
    target = tmp_path / "stats.json"
    target.write_text("previous")
    script = ("import resource, signal, sys; sys.path.insert(0, sys.argv[1]);"
              "from convcrf_deploy.files import write_text_atomic;"
              "signal.signal(signal.SIGXFSZ, signal.SIG_IGN);"
              "resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000));"
              "write_text_atomic(sys.argv[2], 'x' * 5000)")
    done = subprocess.run([sys.executable, "-c", script, str(ROOT), str(target)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "File too large" in done.stderr
    assert target.read_text() == "previous"
    assert [p.name for p in tmp_path.iterdir()] == ["stats.json"]


def test_outputs_that_are_inputs_are_refused(tmp_path):
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"video")
    (tmp_path / "link.mp4").symlink_to(clip)
    os.link(clip, tmp_path / "hard.mp4")
    folder = tmp_path / "frames"
    folder.mkdir()
    (folder / "img_00003.png").write_bytes(b"png")
    refuse = refuse_output_overwriting_input
    for output, source in [(clip, clip), (tmp_path / "link.mp4", clip),
                           (tmp_path / "hard.mp4", clip), (tmp_path / "sub" / ".." / "clip.mp4", clip),
                           (folder / "img_00003.png", folder),
                           (folder / "img_%05d.png", folder),
                           (folder / "img_%05d.png", str(folder / "*.png")),
                           # new-user trial: a numbered input pattern as the output pattern
                           (folder / "img_%05d.png", str(folder / "img_%05d.png")),
                           (folder / "img_%03d.png", str(folder / "img_%05d.png"))]:
        with pytest.raises(OutputIsInputError, match="would overwrite the input"):
            refuse({"--save": output}, {"--video": source})
    for output, source in [(tmp_path / "out.mp4", clip), (folder / "out_%05d.png", folder),
                           (tmp_path / "img_%05d.png", folder), (tmp_path / "x.mp4", "demo"),
                           (tmp_path / "x.mp4", "rtsp://host/x"), (None, clip),
                           (folder / "out_%05d.png", str(folder / "img_%05d.png"))]:
        refuse({"--save": output}, {"--video": source})


# ---- issue 21: what an output path names (links, FIFOs, devices, standard output) -----------

def test_a_symlink_output_is_written_through_to_its_target_atomically(tmp_path):
    # Field report: --stats-json link.json replaced the link with a regular file and left
    # its target untouched.
    real = tmp_path / "results" / "stats.json"
    real.parent.mkdir()
    real.write_text("previous")
    os.chmod(real, 0o640)
    link = tmp_path / "link.json"
    link.symlink_to(real)
    chain = tmp_path / "chain.json"
    chain.symlink_to(link)                          # a link to a link
    write_text_atomic(chain, "new")
    assert chain.is_symlink() and link.is_symlink()
    assert real.read_text() == "new" and real.stat().st_mode & 0o777 == 0o640
    # Still atomic: a failure keeps the target, and the temporary file is gone.
    with pytest.raises(RuntimeError):
        with atomic_write(link) as temporary:
            assert temporary.parent == real.parent     # beside the target: rename is atomic
            temporary.write_text("half")
            raise RuntimeError("failed part way")
    assert real.read_text() == "new"
    assert sorted(p.name for p in real.parent.iterdir()) == ["stats.json"]
    # A link to a file not yet there creates the target.
    dangling = tmp_path / "dangling.json"
    dangling.symlink_to(tmp_path / "results" / "later.json")
    write_text_atomic(dangling, "made")
    assert dangling.is_symlink() and (tmp_path / "results" / "later.json").read_text() == "made"


def _read_fifo(path, chunks):
    with open(path, "rb") as fifo:
        chunks.append(fifo.read())


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_fifos_devices_and_stdout_are_streamed_to_not_renamed_over(tmp_path, capfd):
    import threading

    fifo = tmp_path / "stats.fifo"
    os.mkfifo(fifo)
    chunks: list[bytes] = []
    reader = threading.Thread(target=_read_fifo, args=(fifo, chunks), daemon=True)
    reader.start()
    try:
        write_text_atomic(fifo, '{"frames": 3}')
        reader.join(timeout=10)
    finally:
        if reader.is_alive():                   # nothing was streamed: release the reader
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            reader.join(timeout=10)
    assert chunks == [b'{"frames": 3}']
    assert fifo.is_fifo() and sorted(p.name for p in tmp_path.iterdir()) == ["stats.fifo"]
    write_text_atomic("/dev/null", "discarded")     # a character device: not replaced
    assert Path("/dev/null").is_char_device()
    capfd.readouterr()
    write_text_atomic("-", "to stdout\n")
    assert capfd.readouterr().out == "to stdout\n"
    # A failed write streams nothing and leaves no temporary file anywhere.
    import tempfile
    before = set(os.listdir(tempfile.gettempdir()))
    with pytest.raises(RuntimeError):
        with atomic_write("-") as temporary:
            temporary.write_text("half")
            raise RuntimeError("failed")
    assert capfd.readouterr().out == ""
    assert set(os.listdir(tempfile.gettempdir())) <= before


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_process_substitution_receives_the_statistics_of_a_run(tmp_path):
    # Field report: --stats-json >(...) ended in a traceback after the run, statistics lost.
    script = ("import sys;"
              "from convcrf_deploy.cli.run import main;"
              "from convcrf_deploy.runtime.testing import write_toy_onnx;"
              "model = write_toy_onnx(sys.argv[2], input_size=(24, 32), resize='stretch');"
              "sys.exit(main(['--video', 'demo', '--size', '64x48', '--max-frames', '2',"
              " '--headless', '--model', str(model), '--stats-json', sys.argv[3]]))")
    out = tmp_path / "received.json"
    command = (f'"{sys.executable}" -c "$0" unused "{tmp_path / "toy.onnx"}" '
               f'>(cat > "{out}")')
    done = subprocess.run(["bash", "-c", command, script], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "DISPLAY": ""})
    assert done.returncode == 0, done.stderr
    import json
    import time
    deadline = time.monotonic() + 10          # cat runs asynchronously
    while time.monotonic() < deadline and not (out.exists() and out.read_text().endswith("}\n")):
        time.sleep(0.05)
    assert json.loads(out.read_text())["frames"] == 2


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc")
def test_an_output_in_a_folder_where_nothing_can_be_created_is_refused_up_front():
    """New-user trial: ``-o /proc/version.onnx`` failed after the work with "[Errno 2] No such
    file or directory" (convcrf-bench: a traceback). os.access says yes to root, so the folder
    is probed; /proc/self/fd/1 (an existing descriptor) stays a streamed output."""
    from convcrf_deploy.files import OutputPathError, check_output_paths
    with pytest.raises(OutputPathError, match=r"-o /proc/version.onnx: cannot create files in "
                                              r"/proc \(.*\); choose a folder you can write to"):
        check_output_paths({"-o": "/proc/version.onnx"}, {})
    check_output_paths({"--json": "/proc/self/fd/1"}, {})


def test_json_outputs_are_json_files_or_streams():
    """New-user trial: ``convcrf-bench demo --json demo.onnx`` replaced the user's model."""
    from convcrf_deploy.files import JSON_SUFFIXES, OutputPathError, check_output_paths
    with pytest.raises(OutputPathError, match=r"--json demo.onnx cannot be written as \.onnx; "
                                              r"supported: \.json, no suffix"):
        check_output_paths({"--json": "demo.onnx"}, {}, suffixes={"--json": JSON_SUFFIXES})
    for fine in ("bench.json", "-", "/dev/stdout", "stats.JSON"):
        check_output_paths({"--json": fine}, {}, suffixes={"--json": JSON_SUFFIXES})
