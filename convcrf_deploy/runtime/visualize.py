"""Cheap visualisation of label maps: palette lookup, alpha overlay, side-by-side, HUD text.

Everything works on BGR uint8 images (OpenCV's convention) and costs one table lookup and one
blend per frame, so drawing does not dominate the frame time.
"""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

VIEWS = ("overlay", "mask", "side-by-side")


def palette_lut(palette: Sequence[Sequence[int]]) -> np.ndarray:
    """``[C, 3]`` RGB palette (0..255) -> ``[max(C, 256), 3]`` BGR uint8 lookup table (labels
    outside the palette map to black)."""
    rgb = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    lut = np.zeros((max(len(rgb), 256), 3), np.uint8)
    lut[:len(rgb)] = rgb[:, ::-1]
    return lut


def colorize(labels: np.ndarray, lut: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``[H, W]`` integer labels -> ``[H, W, 3]`` BGR uint8 colours from ``lut``
    (:func:`palette_lut`); ``out`` (same shape) is reused when given."""
    if labels.ndim != 2:
        raise ValueError(f"labels must be [H, W], got shape {labels.shape}")
    if out is None or out.shape != (*labels.shape, 3):
        out = np.empty((*labels.shape, 3), np.uint8)
    np.take(lut, labels, axis=0, out=out, mode="clip")
    return out


def overlay(frame: np.ndarray, colors: np.ndarray, alpha: float = 0.5,
            out: np.ndarray | None = None) -> np.ndarray:
    """``(1 - alpha) * frame + alpha * colors`` for two BGR uint8 ``[H, W, 3]`` images."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in 0..1, got {alpha}")
    if frame.shape != colors.shape:
        raise ValueError(f"frame {frame.shape} and colors {colors.shape} differ in shape")
    return cv2.addWeighted(frame, 1.0 - alpha, colors, alpha, 0.0, dst=out)


def side_by_side(left: np.ndarray, right: np.ndarray, labels: Sequence[str] = ()) -> np.ndarray:
    """Two equally sized BGR images next to each other, each captioned by ``labels``."""
    canvas = np.concatenate([left, right], axis=1)
    for index, text in enumerate(labels):
        put_text(canvas, text, (8 + index * left.shape[1], canvas.shape[0] - 10))
    return canvas


def put_text(image: np.ndarray, text: str, origin: tuple[int, int], scale: float = 0.5) -> None:
    """White text on a dark box, readable on any background (drawn in place)."""
    (width, height), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    x, y = origin
    cv2.rectangle(image, (x - 2, y - height - 2), (x + width + 2, y + baseline), (0, 0, 0),
                  cv2.FILLED)
    cv2.putText(image, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1,
                cv2.LINE_AA)


def draw_hud(image: np.ndarray, lines: Sequence[str]) -> np.ndarray:
    """Draw ``lines`` of text in the top-left corner of ``image`` (in place), scaled to the
    image width so that a 320-pixel frame still fits a line of about 45 characters."""
    scale = max(0.33, min(0.6, image.shape[1] / 900))
    step = int(round(36 * scale))
    for row, text in enumerate(lines):
        put_text(image, text, (6, step * (row + 1)), scale)
    return image


class Renderer:
    """Renders frames and results in one of :data:`VIEWS`, reusing its buffers.

    Args:
        palette: ``[C, 3]`` RGB palette of the model.
        view: ``"overlay"`` (labels blended onto the frame), ``"mask"`` (colours only) or
            ``"side-by-side"`` (unary | CRF overlays; needs unary labels).
        alpha: opacity of the labels in overlays.

    Not thread-safe: it reuses its colour buffers between calls; use one per thread/stream.
    """

    def __init__(self, palette: Sequence[Sequence[int]], view: str = "overlay", alpha: float = 0.5):
        if view not in VIEWS:
            raise ValueError(f"view must be one of {VIEWS}, got {view!r}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in 0..1, got {alpha}")
        self.lut = palette_lut(palette)
        self.view = view
        self.alpha = alpha
        self._colors: np.ndarray | None = None
        self._unary_colors: np.ndarray | None = None

    def next_view(self) -> str:
        self.view = VIEWS[(VIEWS.index(self.view) + 1) % len(VIEWS)]
        return self.view

    def render(self, frame: np.ndarray, labels: np.ndarray,
               unary_labels: np.ndarray | None = None) -> np.ndarray:
        """A new BGR uint8 image showing ``labels`` on ``frame`` in the current view."""
        self._colors = colorize(labels, self.lut, self._colors)
        if self.view == "mask":
            return self._colors.copy()
        if self.view == "side-by-side" and unary_labels is not None:
            self._unary_colors = colorize(unary_labels, self.lut, self._unary_colors)
            return side_by_side(overlay(frame, self._unary_colors, self.alpha),
                                overlay(frame, self._colors, self.alpha), ("unary", "CRF"))
        return overlay(frame, self._colors, self.alpha)
