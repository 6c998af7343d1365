"""The harness every ``convcrf-*`` command runs in: exit statuses, error reporting and the
argument types they share, in one place.

Exit statuses (the table in the README; every command uses these and no others):

====  =======================================================================================
0     done
1     the work failed: export verification, an engine build, a benchmark, a run that ended
      with an error (the message says what failed), or an output of ``convcrf-run`` that
      failed during the run (dropped alone: the run and the other outputs complete)
2     usage: bad arguments, or an input that cannot be used (missing, damaged, not ours, a
      model this onnxruntime cannot read), a model that cannot take the frames as asked (a
      fixed-size model with ``--resize none``), or an output that is refused (it is an input,
      its folder is missing, its type cannot be written); nothing has run
3     a library the command needs is not installed (the message gives the ``pip install``)
4     ``convcrf-run``: the video source was lost (a camera or stream stopped and could not be
      reconnected); what was recorded so far is kept (1 when an output failed too)
128+N ended by signal N: 130 Ctrl-C (SIGINT), 143 SIGTERM, 129 SIGHUP
====  =======================================================================================

A command's ``main`` is wrapped by :func:`command`; it returns an :class:`ExitCode` (or 0) or
raises :class:`CommandError` (``UsageError``, ``SourceLostError``) with a one-line message, which
the harness prints as ``<prog>: error: <message>``. A
:class:`~convcrf_deploy.install.MissingDependencyError` anywhere becomes status 3, Ctrl-C status
130, both with one line instead of a traceback.

Commands that load a model share one argument group, :func:`add_model_loading_arguments`
(``--import``, ``--allow-pickle`` and the settings of a unary saved without class code), and
load it with :func:`load_model_argument`.
"""
from __future__ import annotations

import argparse
import enum
import functools
import re
import signal
import sys
import warnings
from pathlib import Path
from typing import Callable, NamedTuple, TextIO

from ..errors import describe_error
from ..install import MissingDependencyError
from ..metadata import MAX_IMAGE_SIDE


class ExitCode(enum.IntEnum):
    """Exit statuses of the ``convcrf-*`` commands (the module docstring's table)."""

    OK = 0
    FAILED = 1
    USAGE = 2
    MISSING_DEPENDENCY = 3
    SOURCE_LOST = 4
    HANGUP = 128 + 1
    INTERRUPTED = 128 + 2
    TERMINATED = 128 + 15


def signal_exit_code(name: str | None) -> ExitCode:
    """The status of a command ended by signal ``name`` (``"SIGINT"``, ``"SIGTERM"``, ...;
    ``None``: Ctrl-C), 128 + the signal's number as shells report it."""
    number = getattr(signal, name or "SIGINT", signal.SIGINT)
    return ExitCode(128 + int(number))


class CommandError(Exception):
    """A command cannot go on: ``message`` is the one line printed, ``code`` the exit status."""

    code = ExitCode.FAILED

    def __init__(self, message: str, code: ExitCode | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class UsageError(CommandError):
    """Bad arguments, or an input or output that cannot be used (status 2)."""

    code = ExitCode.USAGE


class SourceLostError(CommandError):
    """The video source was lost during a run (status 4)."""

    code = ExitCode.SOURCE_LOST


def report_stream(*outputs) -> TextIO:
    """Where a command prints its tables and messages: standard output, unless one of its
    ``outputs`` is ``-`` (written to standard output, which then carries that alone, so that
    ``convcrf-bench ... --json - | jq`` works); then standard error."""
    return sys.stderr if any(str(o) == "-" for o in outputs if o is not None) else sys.stdout


def report_error(program: str, message: str) -> None:
    """Print ``<program>: error: <message>`` to stderr (the one-line form of every error)."""
    print(f"{program}: error: {message}", file=sys.stderr)


def command(program: str, *, interrupted_note: str = "no partial output was written"
            ) -> Callable[[Callable[..., int]], Callable[..., int]]:
    """Decorate a command's ``main(argv) -> int``: :class:`CommandError` and
    :class:`MissingDependencyError` become one line and their status, an ``OSError`` nothing
    else caught one line and status 1, Ctrl-C one line and
    status 130 (outputs are written atomically, hence ``interrupted_note``); argparse's own
    usage errors keep their status 2."""
    def decorate(main: Callable[..., int]) -> Callable[..., int]:
        @functools.wraps(main)
        def run(argv: list[str] | None = None) -> int:
            # Warnings as one line naming the command, not Python's two lines that quote the
            # entry-point script's ``sys.exit(main())`` (new-user trial).
            formatwarning = warnings.formatwarning
            warnings.formatwarning = functools.partial(_format_warning, program)
            try:
                return int(main(argv) or 0)
            except CommandError as exc:
                report_error(program, exc.message)
                return int(exc.code)
            except MissingDependencyError as exc:
                report_error(program, str(exc))
                return int(ExitCode.MISSING_DEPENDENCY)
            except KeyboardInterrupt:
                print(f"{program}: interrupted; {interrupted_note}", file=sys.stderr)
                return int(ExitCode.INTERRUPTED)
            except OSError as exc:
                # A file that could not be read or written where no command expected it (a
                # disk that filled up, a folder that went away): one line, not a traceback.
                report_error(program, describe_error(exc, "", "check the path, its "
                                                     "permissions and the free space"))
                return int(ExitCode.FAILED)
            finally:
                warnings.formatwarning = formatwarning
        return run
    return decorate


def _format_warning(program: str, message, category, filename, lineno, line=None) -> str:
    """``warnings.formatwarning`` while a command runs: ``<program>: warning: <message>``
    (the category only when it is not a plain UserWarning)."""
    kind = "" if category is UserWarning else f" ({category.__name__})"
    text = " ".join(str(message).split())
    return f"{program}: warning{kind}: {text}\n"


def int_at_least(minimum: int) -> Callable[[str], int]:
    """Type for integers ``>= minimum``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}") \
                from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def float_in(low: float, high: float | None = None, *, include_low: bool = True,
             include_high: bool = False) -> Callable[[str], float]:
    """Type for floats in the interval ``[low, high)`` (ends chosen by the flags)."""
    lo = "[" if include_low else "("
    hi = "]" if include_high else ")"
    span = f"{lo}{low}, {'inf' if high is None else high}{hi}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number in {span}, got {text!r}") \
                from None
        ok = (value >= low if include_low else value > low) and (
            high is None or (value <= high if include_high else value < high))
        if not ok:
            raise argparse.ArgumentTypeError(f"expected a number in {span}, got {value}")
        return value

    parse.__name__ = f"number in {span}"
    return parse


def int_list(text: str) -> list[int]:
    """Type for comma-separated integers, e.g. ``5,7,11``."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") \
            from None
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    return values


#: Largest frame side the commands accept (metadata.MAX_IMAGE_SIDE, 16K video).
MAX_FRAME_SIDE = MAX_IMAGE_SIDE


class FrameSize(NamedTuple):
    """A frame size as the commands write it, ``WIDTHxHEIGHT`` (``320x240``): width first,
    as in OpenCV and video tools. Use the fields, not the positions, when a ``(height, width)``
    is needed (``size.height, size.width``)."""

    width: int
    height: int

    def __str__(self) -> str:
        return f"{self.width}x{self.height}"


def parse_frame_size(text: str, minimum: int = 1, maximum: int = MAX_FRAME_SIDE,
                     example: str = "320x240") -> FrameSize:
    """``"WIDTHxHEIGHT"`` -> :class:`FrameSize`, each side in ``minimum..maximum``; raises
    ``ValueError`` with a one-line message. The one parser of sizes in the commands."""
    try:
        width, height = (int(v) for v in str(text).strip().lower().split("x"))
    except ValueError:
        raise ValueError(f"size must look like {example} (WIDTHxHEIGHT), got {text!r}") from None
    if not (minimum <= width <= maximum and minimum <= height <= maximum):
        raise ValueError(f"width and height must be in {minimum}..{maximum}, got {text!r}")
    return FrameSize(width, height)


def frame_size(minimum: int = 1, example: str = "320x240", maximum: int = MAX_FRAME_SIDE
               ) -> Callable[[str], FrameSize]:
    """argparse type for ``WIDTHxHEIGHT`` -> :class:`FrameSize` (see :func:`parse_frame_size`)."""
    def parse(text: str) -> FrameSize:
        try:
            return parse_frame_size(text, minimum, maximum, example)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = "WIDTHxHEIGHT"
    return parse


def frame_sizes(minimum: int = 1, maximum: int = MAX_FRAME_SIDE) -> Callable[[str], list[FrameSize]]:
    """argparse type for comma-separated sizes, ``320x240,640x480``."""
    single = frame_size(minimum, "320x240", maximum)

    def parse(text: str) -> list[FrameSize]:
        sizes = [single(part) for part in str(text).split(",") if part.strip()]
        if not sizes:
            raise argparse.ArgumentTypeError(f"expected sizes like 320x240,640x480, got {text!r}")
        return sizes

    parse.__name__ = "WIDTHxHEIGHT[,...]"
    return parse


positive_int = int_at_least(1)
positive_float = float_in(0.0, include_low=False)


_ROLE = re.compile(r":(?:func|class|mod|meth|data|attr|exc|obj):`~?([^`]+)`")


def plain_text(text: str) -> str:
    """Docstring text as a terminal shows it: Sphinx roles and ````literals```` unwrapped,
    ``Examples::`` as ``Examples:``, ``%%`` as ``%``."""
    text = _ROLE.sub(r"\1", text)
    text = re.sub(r"``([^`]+)``", r"\1", text)
    text = re.sub(r"::(?=\s*$)", ":", text, flags=re.M)
    return text.replace("%%", "%")


class PlainHelpFormatter(argparse.RawDescriptionHelpFormatter):
    """``--help`` from docstrings without their Sphinx markup (multi-line descriptions keep
    their line breaks, as with ``RawDescriptionHelpFormatter``; one-line ones are wrapped)."""

    def _format_text(self, text: str) -> str:
        return plain_text(super()._format_text(text))

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" not in text.strip():
            return argparse.HelpFormatter._fill_text(self, text, width, indent)
        return super()._fill_text(text, width, indent)

    def _expand_help(self, action) -> str:
        return plain_text(super()._expand_help(action))


# ---- loading the user's model: one argument group for every command that takes a model ----

ALLOW_PICKLE_HELP = ("load a checkpoint whose unary was saved as pickled Python code (an "
                     "unregistered nn.Module): unpickling runs code chosen by whoever wrote "
                     "the file, so only for files you trust. Without it such a file is "
                     "refused and nothing from it runs")


def _crf_config(text: str) -> dict:
    """``filter_size=7,blur=4`` -> CRFConfig fields (ints, floats, true/false, words)."""
    from ..config import CRFConfig
    fields = {f for f in CRFConfig.__dataclass_fields__ if f != "trainable"}
    settings = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        key, sep, value = part.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in fields:
            raise argparse.ArgumentTypeError(f"expected KEY=VALUE[,KEY=VALUE...] with KEY one of "
                                             f"{', '.join(sorted(fields))}; got {part!r}")
        value = value.strip()
        for convert in (int, float):
            try:
                settings[key] = convert(value)
                break
            except ValueError:
                continue
        else:
            settings[key] = {"true": True, "false": False}.get(value.lower(), value)
    return settings


def _three_floats(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"expected three numbers R,G,B, got {text!r}")
    return values


def add_model_loading_arguments(parser: argparse.ArgumentParser, *,
                                unary_files: bool = True) -> None:
    """Add the options every command that loads a model shares (the same words everywhere):
    ``--import`` and ``--allow-pickle``; with ``unary_files`` also the settings of a unary
    saved without class code (``--crf``, ``--crf-config``, ``--metadata``, ``--class-names``,
    ``--mean``, ``--std``). Load the model with :func:`load_model_argument`."""
    group = parser.add_argument_group(
        "your own model (docs/export.md)",
        "A checkpoint names its unary's architecture; the class comes from code you choose "
        "to run: --import, or an installed package's entry point in the group "
        "convcrf_deploy.unaries. A model file alone never runs code.")
    group.add_argument("--import", dest="imports", action="append", default=[],
                       metavar="MODULE_OR_FILE.py",
                       help="import this module first so that its register_unary calls take "
                            "effect: a dotted module name on sys.path or a path to a .py file "
                            "(repeatable). This runs its code: pass only your own modules")
    group.add_argument("--allow-pickle", action="store_true", help=ALLOW_PICKLE_HELP)
    if not unary_files:
        return
    group = parser.add_argument_group(
        "a unary saved without class code (.pt2 from torch.export.save, TorchScript from "
        "torch.jit.save)",
        "The file holds the unary only; the class count comes from its output, the rest from "
        "these options (a checkpoint carries its own).")
    group.add_argument("--crf", metavar="CRF.pt",
                       help="the CRF: a CRF-only checkpoint (convcrf-train crf --out, "
                            "convcrf_deploy.training.save_crf), or 'none' for the unary alone "
                            "(default: a CRF with the CRFConfig defaults)")
    group.add_argument("--crf-config", type=_crf_config, default={}, metavar="KEY=VALUE,...",
                       help="CRFConfig fields over --crf's or the defaults, e.g. "
                            "filter_size=7,blur=4,iterations=5")
    group.add_argument("--metadata", type=Path, metavar="META.json",
                       help="a JSON object of model metadata: class_names, palette ([[r, g, b], "
                            "...]), mean, std, input_size ([height, width]), resize")
    group.add_argument("--class-names", type=lambda text: [t.strip() for t in text.split(",")],
                       metavar="A,B,...", help="class names in channel order (over --metadata)")
    group.add_argument("--mean", type=_three_floats, metavar="R,G,B",
                       help="input normalisation (image / 255 - mean) / std (over --metadata; "
                            "default ImageNet's 0.485,0.456,0.406)")
    group.add_argument("--std", type=_three_floats, metavar="R,G,B",
                       help="likewise the std (default 0.229,0.224,0.225)")


def unary_settings(args: argparse.Namespace):
    """The :class:`~convcrf_deploy.model.UnarySettings` given on the command line (``--crf``,
    ``--crf-config``, ``--metadata`` and the metadata flags); :class:`UsageError` for an
    unreadable ``--metadata`` file. Needs torch (imports the model package)."""
    import json

    from ..model.unary_files import UnarySettings
    metadata: dict = {}
    path = getattr(args, "metadata", None)
    if path is not None:
        try:
            metadata = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise UsageError(f"--metadata {path}: cannot read it as JSON: {exc}") from None
        if not isinstance(metadata, dict):
            raise UsageError(f"--metadata {path}: expected a JSON object, got "
                             f"{type(metadata).__name__}")
    for name in ("class_names", "mean", "std"):
        if getattr(args, name, None) is not None:
            metadata[name] = getattr(args, name)
    return UnarySettings(crf=getattr(args, "crf", None),
                         crf_config=getattr(args, "crf_config", None) or {}, metadata=metadata)


def import_user_modules(args: argparse.Namespace) -> None:
    """Run the ``--import`` modules (status 2 with one line when one fails)."""
    from ..user_code import UserCodeError, import_user_code
    try:
        import_user_code(getattr(args, "imports", None) or [])
    except UserCodeError as exc:
        raise UsageError(str(exc)) from None


def load_model_argument(args: argparse.Namespace, model, *, crf_only: bool = False,
                        traceable: bool = False):
    """The model named on the command line (``"demo"``, a checkpoint, a unary file without
    class code; with ``crf_only`` also a CRF-only checkpoint), after running ``--import``.
    A model that cannot be loaded is a :class:`UsageError` (status 2) with one line."""
    try:
        from ..model.unary_files import load_any_model
    except ImportError as exc:
        from ..install import TORCH_HINT
        raise MissingDependencyError(f"loading {model} needs PyTorch ({exc}): {TORCH_HINT}") \
            from None
    import_user_modules(args)
    try:
        return load_any_model(model, allow_pickle=getattr(args, "allow_pickle", False),
                              settings=unary_settings(args), crf_only=crf_only,
                              traceable=traceable)
    except (ValueError, OSError) as exc:
        raise UsageError(str(exc)) from None


def unary_settings_given(args: argparse.Namespace) -> list[str]:
    """The unary-file options given on the command line (``["--crf", ...]``), without
    importing torch."""
    flags = {"crf": "--crf", "crf_config": "--crf-config", "metadata": "--metadata",
             "class_names": "--class-names", "mean": "--mean", "std": "--std"}
    return [flag for name, flag in flags.items() if getattr(args, name, None)]
