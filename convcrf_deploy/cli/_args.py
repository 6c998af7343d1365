"""argparse value types shared by the convcrf-* commands: each turns a bad value into the
one-line usage error argparse prints, instead of a traceback."""
from __future__ import annotations

import argparse
import functools
import re
import sys
from typing import Callable

#: exit status of a command stopped by Ctrl-C (128 + SIGINT), as shells report it.
EXIT_INTERRUPTED = 130


def interruptible(program: str) -> Callable[[Callable[..., int]], Callable[..., int]]:
    """Decorate a command's ``main`` so that Ctrl-C ends it with one line and status 130
    instead of a ``KeyboardInterrupt`` traceback. Outputs are written atomically, so the
    message can promise that no partial file was left."""
    def decorate(main: Callable[..., int]) -> Callable[..., int]:
        @functools.wraps(main)
        def run(argv: list[str] | None = None) -> int:
            try:
                return main(argv)
            except KeyboardInterrupt:
                print(f"{program}: interrupted; no partial output was written", file=sys.stderr)
                return EXIT_INTERRUPTED
        return run
    return decorate


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


#: Largest frame side the commands accept (16K video): beyond it a frame alone needs
#: gigabytes, and the failure would be an allocation error deep inside the run.
MAX_FRAME_SIDE = 16384


def frame_size(minimum: int = 1, example: str = "320x240") -> Callable[[str], tuple[int, int]]:
    """Type for ``WIDTHxHEIGHT`` -> ``(height, width)``, each side in
    ``minimum..MAX_FRAME_SIDE``."""
    def parse(text: str) -> tuple[int, int]:
        try:
            width, height = (int(v) for v in text.lower().split("x"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"size must look like {example} (WIDTHxHEIGHT), "
                                             f"got {text!r}") from None
        if not (minimum <= width <= MAX_FRAME_SIDE and minimum <= height <= MAX_FRAME_SIDE):
            raise argparse.ArgumentTypeError(f"width and height must be in {minimum}.."
                                             f"{MAX_FRAME_SIDE}, got {text!r}")
        return height, width

    parse.__name__ = "WIDTHxHEIGHT"
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
