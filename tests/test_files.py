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
                           (folder / "img_%05d.png", str(folder / "*.png"))]:
        with pytest.raises(OutputIsInputError, match="would overwrite the input"):
            refuse({"--save": output}, {"--video": source})
    for output, source in [(tmp_path / "out.mp4", clip), (folder / "out_%05d.png", folder),
                           (tmp_path / "img_%05d.png", folder), (tmp_path / "x.mp4", "demo"),
                           (tmp_path / "x.mp4", "rtsp://host/x"), (None, clip)]:
        refuse({"--save": output}, {"--video": source})
