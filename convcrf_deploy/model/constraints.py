"""Input constraints of a unary network (``pad_multiple``, ``min_size``), detected by probing
sizes.

Many segmentation networks run only at some input sizes: an encoder-decoder with skip
connections and output stride 32 (U-Net) needs multiples of 32, a DeepLabV3+ decoder
multiples of its encoder's output stride, a Segformer at least 32 px (its first attention
stage reduces 8x8 blocks of a 1/4-resolution map). Others run at any size but return logits
that are only an exact fraction of the input at some sizes (a stride-4 network gives
``ceil(H / 4)`` rows): resizing those to the input shifts them by a fraction of a pixel.

:func:`probe_constraints` runs the unary in PyTorch (eagerly, batch 1, no tracing) at a few
sizes and finds the smallest multiple and the smallest side at which it runs *and* its logits
are an exact integer fraction of the input (``H / h == W / w``, an integer). The result is
recorded in the model's :class:`~convcrf_deploy.metadata.ModelMetadata` (and so in the
exported file); everything that runs the model pads to it (see ``ModelMetadata``).
``convcrf-export`` probes a model whose metadata records no constraints, and so does the
runtime's torch backend, so that it pads like the exported file.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass, field

import torch

from ..errors import describe_error

#: Multiples tried, in this order; the first at which the unary runs exactly wins.
PROBE_MULTIPLES = (1, 2, 4, 8, 16, 32, 64, 128)
#: Sides probed for the multiple: the smallest odd multiples of it at least this large (odd,
#: so that a multiple of 2m does not pass as a multiple of m).
PROBE_SIZE = (97, 129)


class ConstraintError(ValueError):
    """The unary runs at none of the probed sizes; the message lists what failed and names
    the flags that set the constraints by hand."""


@dataclass
class ProbeResult:
    """What :func:`probe_constraints` found.

    Attributes:
        pad_multiple, min_size: the constraints (1: none).
        failures: ``(height, width, reason)`` of each probe that failed, in order.
        probes: how many sizes were run.
    """

    pad_multiple: int
    min_size: int
    failures: list[tuple[int, int, str]] = field(default_factory=list)
    probes: int = 0


def _first_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {describe_error(exc)}"


def odd_multiple(multiple: int, at_least: int, avoid: tuple[int, ...] = ()) -> int:
    """The smallest ``multiple * k`` with ``k`` odd, ``>= at_least`` and not in ``avoid``."""
    k = max(1, -(-at_least // multiple))
    k += 1 - k % 2
    while multiple * k in avoid:
        k += 2
    return multiple * k


class _Prober:
    """Runs the model's unary at one size and says why that size does not work."""

    def __init__(self, model):
        self.model = model
        self.result = ProbeResult(1, 1)
        self._generator = torch.Generator().manual_seed(0)

    def failure(self, height: int, width: int) -> str | None:
        """``None`` when the unary runs at ``height x width`` and its logits are an exact
        integer fraction of it; else the reason (recorded)."""
        from .outputs import UnaryOutputError, select_logits
        self.result.probes += 1
        image = (torch.rand(1, 3, height, width, generator=self._generator) * 255).to(
            self.model.mean.device)
        try:
            with torch.no_grad():
                output = self.model.unary(self.model.normalize(image))
        except Exception as exc:    # noqa: BLE001 - the user's network failed at this size
            reason = _first_line(exc)
        else:
            # A wrong output convention is no size problem: UnaryOutputError propagates.
            logits = select_logits(output, self.model.output_key)
            if logits.dim() != 4:
                raise UnaryOutputError(f"the unary returned logits of shape "
                                       f"{tuple(logits.shape)}; expected (N, C, h, w)")
            h, w = logits.shape[-2:]
            if h and w and height % h == 0 and width % w == 0 and height // h == width // w:
                return None
            reason = (f"logits {h}x{w} are not an integer fraction of the input (resizing "
                      "them to it would shift them by part of a pixel)")
        self.result.failures.append((height, width, reason))
        return reason


def probe_constraints(model, pad_multiple: int | None = None,
                      min_size: int | None = None) -> ProbeResult:
    """Detect the input constraints of ``model.unary`` (a :class:`SegmentationModel`) by
    running it at a few sizes; a value given is kept and not probed.

    At most ``len(PROBE_MULTIPLES) + 1`` probes at up to 384 px find the multiple, and a
    bisection over its multiples the minimum side (one probe when the unary runs at the
    multiple itself, as most do). The model's own output convention is used
    (``model.output_key``).

    Raises:
        ConstraintError: the unary runs at none of the probed sizes.
        convcrf_deploy.model.outputs.UnaryOutputError: its output is not logits.
    """
    model = model.eval()
    prober = _Prober(model)
    floor = min_size or 1
    if pad_multiple is None:
        for multiple in PROBE_MULTIPLES:
            height = odd_multiple(multiple, max(PROBE_SIZE[0], floor))
            width = odd_multiple(multiple, max(PROBE_SIZE[1], floor), avoid=(height,))
            # A second size guards against a size that works by coincidence.
            if prober.failure(height, width) is None and prober.failure(
                    height + 2 * multiple, width + 2 * multiple) is None:
                pad_multiple = multiple
                break
        else:
            tried = "; ".join(f"{h}x{w}: {why}" for h, w, why in prober.result.failures[-3:])
            raise ConstraintError(
                f"the unary network failed at every size probed, with height and width "
                f"multiples of {', '.join(map(str, PROBE_MULTIPLES))} (last: {tried}). If it "
                "needs other sizes, give them: --pad-multiple N (height and width multiples "
                "of N) and --min-size N (at least N px), or a fixed size with --static "
                "--height H --width W")
    if min_size is None:
        # The smallest multiple k * pad_multiple (square) at which the unary runs; sizes
        # below the multiple itself are never fed (they are padded up to it).
        low, high = 1, odd_multiple(pad_multiple, PROBE_SIZE[0]) // pad_multiple
        if prober.failure(pad_multiple, pad_multiple) is None:
            high = 1
        elif prober.failure(high * pad_multiple, high * pad_multiple) is not None:
            high = max(PROBE_SIZE) // pad_multiple + 2   # ran only at the non-square probe
        while high - low > 1:
            middle = (low + high) // 2
            if prober.failure(middle * pad_multiple, middle * pad_multiple) is None:
                high = middle
            else:
                low = middle
        min_size = 1 if high == 1 else high * pad_multiple
    prober.result.pad_multiple, prober.result.min_size = pad_multiple, min_size
    return prober.result


def with_probed_constraints(model):
    """``model`` (a SegmentationModel) when its metadata records input constraints, else a
    shallow copy (sharing its modules) whose metadata has the probed ones. A unary that runs
    at no probed size but at its metadata's ``input_size`` is a network of that one size: the
    copy's ``fixed_input_size`` is ``(height, width)`` (the runtime fits frames to it).

    Probes at most once per model, so that the commands and the library functions that each
    make sure of the constraints (``evaluate_model``, ``training.model_examples``) do not run
    the unary again: a probed copy records them, a model found unconstrained is remembered
    (weakly; change its unary and it is not probed again), and a model with a
    ``fixed_input_size`` (a fixed-size ONNX unary) is returned as it is.

    Raises:
        ConstraintError: the unary runs at no probed size, nor at its ``input_size`` (the
            message names both failures and the options that state the sizes).
        convcrf_deploy.model.outputs.UnaryOutputError: the unary's output is not logits.
    """
    import copy
    import dataclasses

    if (model.metadata.constrained or model in _FOUND_UNCONSTRAINED
            or getattr(model, "fixed_input_size", None) is not None):
        return model
    from .unary_files import ProgramUnary, _static_size
    if isinstance(getattr(model, "unary", None), ProgramUnary) and _static_size(model.unary):
        return model   # a program of one fixed size: frames are fitted to it, nothing to probe
    try:
        probe = probe_constraints(model)
    except ConstraintError as exc:
        height, width = model.metadata.input_size
        failure = _Prober(model).failure(height, width)
        if failure is None:
            # A network of one size (a Linear on the flattened image, a fixed positional
            # embedding): frames are fitted to it like a fixed-size export's, or refused
            # before the run with --resize none (new-user trial: it failed mid-run).
            model = copy.copy(model)
            model.fixed_input_size = (height, width)
            return model
        raise ConstraintError(
            f"{exc}; nor at its input_size {width}x{height} (WxH): {failure}. Give the size it "
            "runs at as input_size (--metadata with \"input_size\": [H, W]) or the sizes it "
            "needs (--pad-multiple N, --min-size N)") from None
    if probe.pad_multiple == 1 and probe.min_size == 1:
        _FOUND_UNCONSTRAINED.add(model)
        return model
    model = copy.copy(model)
    model.metadata = dataclasses.replace(model.metadata, pad_multiple=probe.pad_multiple,
                                         min_size=probe.min_size)
    return model


#: Models :func:`with_probed_constraints` found to take any size (weak: they stay collectable).
_FOUND_UNCONSTRAINED: "weakref.WeakSet" = weakref.WeakSet()
