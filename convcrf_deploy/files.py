"""Writing files without losing the user's data, and detecting damaged ones (no torch).

Every file the toolkit writes (checkpoints, ONNX exports, engines, recordings, statistics and
reports) goes through :func:`atomic_write`: the content is written to a temporary file in the
destination's folder and renamed over the destination only once it is complete, so a failure
part way (a full disk, Ctrl-C, a failed verification) leaves the previous file as it was.
Every command that writes refuses an output that is one of its inputs
(:func:`refuse_output_overwriting_input`).

Damage is detected with a SHA-256 digest stored in the file itself: ``"weights_sha256"`` in our
checkpoints (:func:`tensor_digest`) and ``convcrf.content_sha256`` in exported ONNX files (the
file format, digest included, is :mod:`convcrf_deploy.exported_model`). Files without a digest
still load, with a warning; see :data:`MISSING_DIGEST_POLICY`.
"""
from __future__ import annotations

import contextlib
import glob
import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import Iterable, Iterator, Mapping

#: What happens when a file has no digest (written before digests existed, or by other tools).
MISSING_DIGEST_POLICY = ("files without a digest (written before digests existed, or ONNX "
                         "graphs from other tools) load unchecked, with a warning; save or "
                         "export them again to add one")


class DamagedFileError(ValueError):
    """A file's content does not match the digest stored in it: it was damaged (or edited)
    after it was written. The message names the file."""


class OutputPathError(ValueError):
    """An output path cannot be written as given (a folder, a missing folder, two outputs
    naming one file, one of the command's inputs); nothing was written."""


class OutputIsInputError(OutputPathError):
    """An output path names one of the command's inputs; nothing was written."""


def _umask() -> int:
    # os.umask can only be read by setting it; done once, at import.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _umask()


def temporary_path_for(path: str | os.PathLike) -> Path:
    """A new empty temporary file next to ``path`` (same folder, so the final rename is
    atomic), keeping ``path``'s suffix so that writers choosing the format from the
    extension (OpenCV's ``VideoWriter``/``imwrite``, ``onnx.save``) work unchanged.
    ``FileNotFoundError`` naming the folder when it does not exist."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise FileNotFoundError(f"cannot write {path}: folder {parent} does not exist")
    fd, name = tempfile.mkstemp(dir=parent, prefix=f".{path.name}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    return Path(name)


def replace_atomically(temporary: Path, path: str | os.PathLike) -> None:
    """Flush ``temporary`` to disk and rename it to ``path`` (atomic on POSIX and Windows),
    with the permissions a plain ``open()`` would have given it."""
    path = Path(path)
    if not temporary.exists() or temporary.stat().st_size == 0:
        raise OSError(f"cannot write {path}: nothing was written")
    # mkstemp creates 0600; keep an existing file's mode, else what the umask gives.
    mode = (path.stat().st_mode & 0o777) if path.exists() else (0o666 & ~_UMASK)
    os.chmod(temporary, mode)
    with open(temporary, "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def discard(temporary: Path) -> None:
    """Delete a temporary file that will not be used (no error if it is gone)."""
    with contextlib.suppress(OSError):
        temporary.unlink()


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Context manager yielding a temporary path next to ``path``; write the whole output
    there. On a normal exit the temporary file is flushed to disk and renamed to ``path``;
    on an exception it is deleted and ``path`` is untouched (see
    :func:`temporary_path_for`)."""
    temporary = temporary_path_for(path)
    try:
        yield temporary
        replace_atomically(temporary, path)
    except BaseException:
        discard(temporary)
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    with atomic_write(path) as temporary:
        temporary.write_bytes(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_write`)."""
    write_bytes_atomic(path, text.encode("utf-8"))


def _input_files(path: Path) -> list[Path]:
    """The files an input names: itself, a folder's files, or a glob's matches."""
    if path.is_dir():
        return [p for p in path.iterdir() if p.is_file()]
    if any(ch in str(path) for ch in "*?[") and not path.exists():
        return [Path(p) for p in glob.glob(str(path))]
    return [path]


def _same_file(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)     # hard links, bind mounts: same inode
    except OSError:
        return False


def _pattern_regex(name: str) -> re.Pattern:
    """The file names a printf-style pattern such as ``img_%05d.png`` produces."""
    parts = re.split(r"%0?\d*d", name)
    return re.compile(r"\d+".join(re.escape(part.replace("%%", "%")) for part in parts))


def check_output_paths(outputs: Mapping[str, str | os.PathLike | None],
                       inputs: Mapping[str, str | os.PathLike | None],
                       folder_outputs: Iterable[str] = ()) -> None:
    """Check a command's output paths before any work is done, so that a bad path fails at
    once with one line instead of after the run (the checks every CLI that writes makes).

    Raises :class:`OutputPathError` when an output is an existing folder, lies in a folder that
    does not exist (or is a file), or names the same file as another output; and
    :class:`OutputIsInputError` when it would overwrite an input
    (:func:`refuse_output_overwriting_input`). ``None`` entries are ignored; the outputs
    named in ``folder_outputs`` are folders the command creates (e.g. a ROS bag), whose own
    writer refuses an existing one.
    """
    folder_outputs = set(folder_outputs)
    given = {name: Path(str(p)).expanduser() for name, p in outputs.items()
             if p is not None and str(p) != ""}
    for name, path in given.items():
        parent = path.parent if str(path.parent) else Path(".")
        if path.is_dir() and name not in folder_outputs:
            raise OutputPathError(f"{name} {path} is a folder; give a file name inside it")
        if not parent.exists():
            raise OutputPathError(f"{name} {path}: folder {parent} does not exist; create it "
                                  "first")
        if not parent.is_dir():
            raise OutputPathError(f"{name} {path}: {parent} is a file, not a folder")
    names = list(given)
    for i, first in enumerate(names):
        for second in names[i + 1:]:
            if given[first].resolve() == given[second].resolve():
                raise OutputPathError(f"{first} and {second} name the same file "
                                      f"{given[first]}; give each output its own path")
    refuse_output_overwriting_input(outputs, inputs)


def refuse_output_overwriting_input(outputs: Mapping[str, str | os.PathLike | None],
                                    inputs: Mapping[str, str | os.PathLike | None]) -> None:
    """Raise :class:`OutputIsInputError` when an output would overwrite an input.

    Args:
        outputs, inputs: ``{option name: path}`` (``None`` entries and non-paths such as
            ``"demo"`` or URLs are ignored). An input may be a file, a folder (its files) or a
            glob; an output may be an image pattern with a ``%d`` field (refused when one of
            the names it produces is an input file).

    Paths are compared resolved (symlinks, ``..``) and by inode (hard links).
    """
    named_inputs = [(name, Path(str(p)).expanduser()) for name, p in inputs.items()
                    if p is not None and "://" not in str(p)]
    for out_name, output in outputs.items():
        if output is None:
            continue
        out = Path(str(output)).expanduser()
        pattern = _pattern_regex(out.name) if "%" in out.name else None
        for in_name, source in named_inputs:
            if pattern is not None:
                folder = out.parent.resolve()
                clash = any(p.parent.resolve() == folder and pattern.fullmatch(p.name)
                            for p in _input_files(source))
            else:
                clash = any(_same_file(out, p) for p in _input_files(source))
            if clash:
                raise OutputIsInputError(
                    f"{out_name} {output} would overwrite the input {in_name} {source}; "
                    "choose another output path (nothing was written)")


# ---- digests ------------------------------------------------------------------------------------

def tensor_digest(tensors: Iterable[tuple[str, str, tuple[int, ...], bytes | memoryview]]) -> str:
    """SHA-256 (hex) over named tensors given as ``(name, dtype name, shape, raw bytes)``,
    in the order given (callers sort by name). Names, dtypes and shapes are included, so a
    renamed or reshaped tensor changes the digest as well as a changed value."""
    digest = hashlib.sha256()
    for name, dtype, shape, data in tensors:
        digest.update(f"{name}\0{dtype}\0{tuple(int(s) for s in shape)}\0".encode())
        digest.update(data)
    return digest.hexdigest()
