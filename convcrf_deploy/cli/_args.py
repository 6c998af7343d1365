"""argparse value types shared by the convcrf-* commands: each turns a bad value into the
one-line usage error argparse prints, instead of a traceback."""
from __future__ import annotations

import argparse
from typing import Callable


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


positive_int = int_at_least(1)
positive_float = float_in(0.0, include_low=False)
