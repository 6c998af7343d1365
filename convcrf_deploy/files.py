"""Writing files without losing the user's data, and detecting damaged ones (no torch).

Every file the toolkit writes (checkpoints, ONNX exports, engines, recordings, statistics and
reports) goes through :class:`AtomicOutput` (or :func:`atomic_write`, its context-manager
form): the content is written to a temporary file and delivered only once it is complete, so
a failure part way (a full disk, Ctrl-C, a failed verification) leaves the previous file as it
was and no temporary file behind. How it is delivered depends on what the path names:

* a regular file or a new name: the temporary file lies in the destination's folder and is
  renamed over it (atomic on POSIX and Windows), keeping an existing file's permissions;
* a symbolic link (also a chain of them, or one to a file not yet there): the same, *at the
  link's target*: the target gets the new content and the link stays a link;
* ``-`` (standard output), ``/dev/stdout``, ``/dev/fd/N``, a FIFO (``mkfifo``, a shell's
  ``>(...)``) or a character device (``/dev/null``, a terminal): the complete content is
  streamed into it; nothing is renamed over it (the temporary file lies in the system's
  temporary folder).

Every command that writes checks its output paths before it works (:func:`check_output_paths`)
and refuses an output that is one of its inputs (:func:`refuse_output_overwriting_input`).

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
import shutil
import stat
import sys
import tempfile
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

#: What happens when a file has no digest (written before digests existed, or by other tools).
MISSING_DIGEST_POLICY = ("files without a digest (written before digests existed, or ONNX "
                         "graphs from other tools) load unchecked, with a warning; save or "
                         "export them again to add one")

#: The output path that means standard output.
STDOUT = "-"


class DamagedFileError(ValueError):
    """A file's content does not match the digest stored in it: it was damaged (or edited)
    after it was written. The message names the file."""


class OutputPathError(ValueError):
    """An output path cannot be written as given (a folder, a missing folder, two outputs
    naming one file, one of the command's inputs, a format that cannot be written); nothing
    was written."""


class OutputIsInputError(OutputPathError):
    """An output path names one of the command's inputs; nothing was written."""


def _umask() -> int:
    # os.umask can only be read by setting it; done once, at import.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _umask()


def is_streamed(path: str | os.PathLike) -> bool:
    """Whether ``path`` is written by streaming into it rather than by renaming a finished
    file over it: ``-`` (standard output), a process's descriptors (``/dev/stdout``,
    ``/dev/fd/N``, ``/proc/...``), and existing paths that are not regular files or folders
    once links are followed (FIFOs, character and block devices, sockets)."""
    text = os.fspath(path)
    if text == STDOUT:
        return True
    absolute = os.path.abspath(text)
    if absolute.startswith(("/dev/fd/", "/dev/std", "/proc/")) and os.path.lexists(text):
        return True                        # a process's descriptors, whatever they are now
    try:
        mode = os.stat(text).st_mode
    except OSError:
        return False                       # absent (or a dangling link): a new file
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def destination_of(path: str | os.PathLike) -> Path:
    """The file an atomic write of ``path`` replaces: ``path`` itself, or for a symbolic link
    (a chain of them; also one whose target does not exist yet) the file it points to."""
    path = Path(path)
    return Path(os.path.realpath(path)) if path.is_symlink() else path


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
    with the permissions a plain ``open()`` would have given it. ``path`` is the file to
    replace itself (see :func:`destination_of` for links)."""
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


class AtomicOutput:
    """One output being written: write the whole content to :attr:`temporary`, then
    :meth:`commit` to deliver it to ``path`` (see the module docstring for how links, FIFOs,
    devices and ``-`` are handled) or :meth:`discard` to drop it; ``path`` is untouched until
    :meth:`commit`. For writers that stay open across many calls (video recordings); one-shot
    writes use :func:`atomic_write`.

    Args:
        path: the output as the user gave it.

    Raises:
        FileNotFoundError: the folder it would be written in does not exist.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = path
        self.streamed = is_streamed(path)
        if self.streamed:
            suffix = "" if os.fspath(path) == STDOUT else Path(path).suffix
            fd, name = tempfile.mkstemp(prefix="convcrf-", suffix=f".tmp{suffix}")
            os.close(fd)
            self.temporary = Path(name)
        else:
            self.destination = destination_of(path)
            self.temporary = temporary_path_for(self.destination)
        self.done = False

    def commit(self) -> None:
        """Deliver the temporary file's content to ``path`` (rename, or stream for FIFOs,
        devices and ``-``); the temporary file is gone afterwards, also when this fails.

        Raises:
            OSError: nothing was written, or delivering failed (the previous file is intact
                when it was renamed over).
        """
        if self.done:
            return
        self.done = True
        try:
            if not self.streamed:
                replace_atomically(self.temporary, self.destination)
                return
            if not self.temporary.exists() or self.temporary.stat().st_size == 0:
                raise OSError(f"cannot write {self.path}: nothing was written")
            with open(self.temporary, "rb") as source:
                if os.fspath(self.path) == STDOUT:
                    sys.stdout.flush()
                    shutil.copyfileobj(source, sys.stdout.buffer)
                    sys.stdout.buffer.flush()
                else:
                    with open(self.path, "wb") as target:
                        shutil.copyfileobj(source, target)
        finally:
            discard(self.temporary)

    def discard(self) -> None:
        """Drop what was written; ``path`` stays as it was."""
        self.done = True
        discard(self.temporary)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Context manager yielding a temporary path; write the whole output there. On a normal
    exit it is delivered to ``path`` (:meth:`AtomicOutput.commit`: renamed over a file or a
    link's target, streamed into ``-``, a FIFO or a device); on an exception it is deleted and
    ``path`` is untouched."""
    output = AtomicOutput(path)
    try:
        yield output.temporary
        output.commit()
    except BaseException:
        output.discard()
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    with atomic_write(path) as temporary:
        temporary.write_bytes(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_write`)."""
    write_bytes_atomic(path, text.encode("utf-8"))


def _input_files(path: Path) -> list[Path]:
    """The files an input names: itself, a folder's files, a glob's matches, or the files a
    numbered pattern (``f_%04d.png``) reads."""
    if path.is_dir():
        return [p for p in path.iterdir() if p.is_file()]
    if path.exists():
        return [path]
    if any(ch in str(path) for ch in "*?["):
        return [Path(p) for p in glob.glob(str(path))]
    if is_integer_pattern(path.name):
        folder, pattern = path.parent if str(path.parent) else Path("."), _pattern_regex(path.name)
        if folder.is_dir():
            return [p for p in folder.iterdir() if p.is_file() and pattern.fullmatch(p.name)]
    return [path]


def _same_file(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)     # hard links, bind mounts: same inode
    except OSError:
        return False


def is_integer_pattern(name: str) -> bool:
    """Whether a file name holds exactly one printf integer field (``%d``, ``%05d``) and no
    other ``%`` field (``%%`` is a literal ``%``): a numbered image pattern."""
    fields = re.findall(r"%[^%]*?[a-zA-Z%]", name)
    fields = [f for f in fields if f != "%%"]
    return len(fields) == 1 and re.fullmatch(r"%0?\d*d", fields[0]) is not None


def _pattern_regex(name: str) -> re.Pattern:
    """The file names a printf-style pattern such as ``img_%05d.png`` produces."""
    parts = re.split(r"%0?\d*d", name)
    return re.compile(r"\d+".join(re.escape(part.replace("%%", "%")) for part in parts))


#: what a JSON output (``--json``, ``--stats-json``) may be called: ``.json``, or a name
#: without a suffix (``-``, ``/dev/stdout``, a FIFO). Anything else is refused, so that a slip
#: such as ``--json model.onnx`` cannot replace a model (new-user trial).
JSON_SUFFIXES = (".json", "")


def check_output_paths(outputs: Mapping[str, str | os.PathLike | None],
                       inputs: Mapping[str, str | os.PathLike | None],
                       folder_outputs: Iterable[str] = (),
                       suffixes: Mapping[str, Sequence[str]] | None = None) -> None:
    """Check a command's output paths before any work is done, so that a bad path fails at
    once with one line instead of after the run (the checks every CLI that writes makes).

    Args:
        outputs, inputs: ``{option name: path}``; ``None`` entries are ignored.
        folder_outputs: names of outputs that are folders the command creates (e.g. a ROS
            bag), whose own writer refuses an existing one.
        suffixes: ``{option name: suffixes}`` for outputs whose suffix chooses what is
            written (a video container, a plot format, a model file the loaders recognise by
            its suffix): any other suffix is refused with the list of these (lower-case, with
            the dot; compared case-insensitively). ``-`` (standard output) has no suffix, so
            it is refused for those outputs.

    Raises :class:`OutputPathError` when an output is an existing folder, lies in a folder that
    does not exist (or is a file; for a symbolic link: the folder of its target) or where no
    file can be created (probed with an empty temporary file), has a suffix that cannot be
    written, or names the same file as another output (``-`` twice included);
    and :class:`OutputIsInputError` when it would overwrite an input
    (:func:`refuse_output_overwriting_input`). ``-``, FIFOs and devices are accepted (they are
    streamed to, see :class:`AtomicOutput`).
    """
    refuse_output_overwriting_input(outputs, inputs)     # the gravest mistake named first
    folder_outputs = set(folder_outputs)
    suffixes = dict(suffixes or {})
    given = {name: Path(str(p)).expanduser() for name, p in outputs.items()
             if p is not None and str(p) != ""}
    for name, path in given.items():
        if path.is_dir() and name not in folder_outputs:
            raise OutputPathError(f"{name} {path} is a folder; give a file name inside it")
        if name in suffixes:
            allowed = tuple(s.lower() for s in suffixes[name])
            suffix = "" if str(path) == STDOUT else path.suffix.lower()
            if suffix not in allowed:
                what = (f"cannot be {STDOUT} (standard output)" if str(path) == STDOUT else
                        f"cannot be written as {suffix}" if suffix else "has no suffix")
                named = [s or "no suffix (-, /dev/stdout)" for s in allowed]
                raise OutputPathError(f"{name} {path} {what}; supported: {', '.join(named)}")
        if is_streamed(path):
            continue
        target = destination_of(path)
        parent = target.parent if str(target.parent) else Path(".")
        link = f" (the target of the link {path})" if target != path else ""
        if not parent.exists():
            raise OutputPathError(f"{name} {path}: folder {parent}{link} does not exist; "
                                  "create it first")
        if not parent.is_dir():
            raise OutputPathError(f"{name} {path}: {parent}{link} is a file, not a folder")
        reason = cannot_create_in(parent)
        if reason:
            raise OutputPathError(f"{name} {path}: cannot create files in {parent}{link} "
                                  f"({reason}); choose a folder you can write to")
    names = list(given)
    for i, first in enumerate(names):
        for second in names[i + 1:]:
            a, b = given[first], given[second]
            same = str(a) == str(b) if STDOUT in (str(a), str(b)) else a.resolve() == b.resolve()
            if same:
                raise OutputPathError(f"{first} and {second} name the same file "
                                      f"{given[first]}; give each output its own path")


def cannot_create_in(folder: Path) -> str | None:
    """Why no file can be created in ``folder`` (read-only, no permission, a pseudo file
    system such as /proc), or None. Probed by creating and removing an empty temporary file,
    which is what the atomic write does first (``os.access`` says yes to root everywhere)."""
    try:
        handle, probe = tempfile.mkstemp(dir=folder, prefix=".convcrf-probe-")
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    os.close(handle)
    os.unlink(probe)
    return None


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
        if output is None or str(output) == STDOUT:
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
