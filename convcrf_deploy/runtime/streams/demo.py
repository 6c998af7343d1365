"""The built-in synthetic ``demo`` scene as a frame source."""
from __future__ import annotations

import time

import cv2

from .base import Frame, FrameSource


class DemoSource(FrameSource):
    """The built-in synthetic moving scene (``SyntheticScene``) with ground-truth labels.

    Args:
        height, width: frame size.
        seed: scene seed (objects, background, trajectories).
        num_frames: frames to produce (``None``: endless).
    """

    has_ground_truth = True

    def __init__(self, height: int = 240, width: int = 320, seed: int = 0,
                 num_frames: int | None = None):
        from ...data.scenes import SyntheticScene

        super().__init__(f"demo scene {width}x{height} seed {seed}")
        self.scene = SyntheticScene(height=height, width=width, seed=seed)
        self.class_names = tuple(self.scene.CLASS_NAMES)
        self.num_frames = num_frames
        self._t = 0

    def read(self) -> Frame | None:
        if self.num_frames is not None and self._t >= self.num_frames:
            return None
        rgb, labels = self.scene.render(self._t)
        frame = Frame(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), self._t, time.monotonic(), labels)
        self._t += 1
        return frame
