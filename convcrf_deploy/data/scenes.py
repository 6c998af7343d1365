"""`SyntheticScene`: an animated synthetic segmentation task with exact ground truth.

Each scene is a textured static background with moving, rotating shapes (discs, boxes,
triangles, stars) drawn over it. A shape's colour and stripe texture depend on its class but
are noisy and overlap between classes and with the background, so a unary network has to use
shape and context as well as colour; object outlines in the image are sharp, which is what a
CRF's appearance kernel exploits. Frames are a pure function of ``(seed, t)``: the scene
draws its objects, background and trajectories from ``seed`` once, and sensor noise from
``(seed, t)``, so any frame can be rendered again, in any order, on any machine. Objects move
smoothly with ``t`` (a few pixels per frame), so consecutive frames are similar, as in video.

Only numpy and OpenCV are used (no torch), so the runtime and its demos can use scenes too.

Example:
    >>> scene = SyntheticScene(240, 320, seed=3)
    >>> rgb, labels = scene.render(0)      # (240, 320, 3) uint8, (240, 320) uint8
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

# Mean RGB of each object class; actual objects deviate by up to ~+-60 per channel, so the
# colour ranges of neighbouring classes overlap.
_CLASS_BASE_COLOURS = {
    1: (200, 70, 60),    # disc: reddish
    2: (60, 150, 210),   # box: bluish
    3: (90, 190, 80),    # triangle: greenish
    4: (215, 190, 60),   # star: yellowish
}


@dataclass(frozen=True)
class _SceneObject:
    """One moving shape; positions in pixels, angles in radians, times in frames."""

    label: int
    size: float                       # radius of the circumscribed circle
    start: tuple[float, float]        # (x, y) centre at t = 0
    velocity: tuple[float, float]     # pixels per frame, reflected at the frame borders
    angle: float                      # orientation at t = 0
    spin: float                       # radians per frame
    colour: tuple[float, float, float]
    stripe_period: float              # texture: sinusoidal stripes in object coordinates
    stripe_angle: float
    stripe_amplitude: float
    aspect: float                     # boxes: side ratio; others ignore it


def _reflect(position: float, low: float, high: float) -> float:
    """Bounce a free 1-D trajectory between ``low`` and ``high`` (a triangle wave)."""
    span = high - low
    if span <= 0:
        return (low + high) / 2
    u = (position - low) % (2 * span)
    return low + (u if u <= span else 2 * span - u)


class SyntheticScene:
    """Animated synthetic scene with ground truth.

    A textured background and ``num_objects`` moving shapes whose class-correlated colours
    and textures are noisy; objects bounce off the frame borders, rotate and occlude each
    other in a fixed depth order.

    Args:
        height, width: frame size in pixels (at least 32 each).
        seed: scene identity (>= 0); the same seed always gives the same scene.
        num_objects: number of shapes (>= 0).

    Attributes:
        CLASS_NAMES: class names; label ``i`` in :meth:`render` is ``CLASS_NAMES[i]``.
    """

    CLASS_NAMES: tuple[str, ...] = ("background", "disc", "box", "triangle", "star")

    def __init__(self, height: int = 240, width: int = 320, seed: int = 0, num_objects: int = 6):
        for name, value, minimum in (("height", height, 32), ("width", width, 32),
                                     ("seed", seed, 0), ("num_objects", num_objects, 0)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
                raise ValueError(f"SyntheticScene {name} must be an int >= {minimum}, got {value!r}")
        self.height, self.width = int(height), int(width)
        self.seed = int(seed)
        self.num_objects = int(num_objects)
        rng = np.random.default_rng([self.seed, 0x5CE7E])
        self._background = self._make_background(rng)
        self._objects = [self._make_object(rng) for _ in range(self.num_objects)]

    @property
    def num_classes(self) -> int:
        return len(self.CLASS_NAMES)

    # ---- construction ----------------------------------------------------------------------

    def _make_background(self, rng: np.random.Generator) -> np.ndarray:
        """``[H, W, 3]`` float32: smooth colour blobs plus fine grain, partly overlapping
        the object colours so that colour alone does not separate objects from background."""
        h, w = self.height, self.width
        blobs = np.zeros((h, w, 3), np.float32)
        # Several octaves of smooth noise: coarse random grids upsampled bicubically.
        for cells, amplitude in ((3, 70.0), (7, 35.0), (17, 15.0)):
            grid = rng.uniform(-1, 1, size=(cells, cells + 1, 3)).astype(np.float32)
            blobs += amplitude * cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
        base = rng.uniform(70, 170, size=3).astype(np.float32)
        grain = rng.normal(0, 10, size=(h, w, 3)).astype(np.float32)
        grain = cv2.GaussianBlur(grain, (0, 0), 1.0)
        return np.clip(base + blobs + grain, 0, 255)

    def _make_object(self, rng: np.random.Generator) -> _SceneObject:
        label = int(rng.integers(1, self.num_classes))
        short = min(self.height, self.width)
        size = float(rng.uniform(0.09, 0.2) * short)
        speed = float(rng.uniform(0.5, 3.0))
        heading = float(rng.uniform(0, 2 * np.pi))
        colour = np.asarray(_CLASS_BASE_COLOURS[label], np.float32) + rng.normal(0, 30, 3)
        return _SceneObject(
            label=label, size=size,
            start=(float(rng.uniform(0, self.width)), float(rng.uniform(0, self.height))),
            velocity=(speed * np.cos(heading), speed * np.sin(heading)),
            angle=float(rng.uniform(0, 2 * np.pi)), spin=float(rng.uniform(-0.05, 0.05)),
            colour=tuple(float(c) for c in np.clip(colour, 0, 255)),
            stripe_period=float(rng.uniform(6, 20)), stripe_angle=float(rng.uniform(0, np.pi)),
            stripe_amplitude=float(rng.uniform(0.0, 0.35)), aspect=float(rng.uniform(0.5, 1.0)))

    # ---- geometry ------------------------------------------------------------------------

    def _pose(self, obj: _SceneObject, t: int) -> tuple[float, float, float]:
        """Centre ``(x, y)`` and orientation of ``obj`` at frame ``t``; objects may leave
        the frame by up to half their size before bouncing back."""
        margin = 0.5 * obj.size
        x = _reflect(obj.start[0] + obj.velocity[0] * t, margin, self.width - margin)
        y = _reflect(obj.start[1] + obj.velocity[1] * t, margin, self.height - margin)
        return x, y, obj.angle + obj.spin * t

    @staticmethod
    def _outline(obj: _SceneObject, x: float, y: float, angle: float) -> np.ndarray | None:
        """Polygon vertices ``[K, 2]`` (x, y) of a polygonal shape; ``None`` for discs."""
        r = obj.size
        if obj.label == 1:
            return None
        if obj.label == 2:      # box: rectangle inscribed in the circle of radius r
            half_diag = np.arctan(obj.aspect)
            angles = np.array([half_diag, np.pi - half_diag, np.pi + half_diag, -half_diag])
            radii = np.full(4, r)
        elif obj.label == 3:    # triangle: equilateral
            angles = np.arange(3) * 2 * np.pi / 3
            radii = np.full(3, r)
        else:                   # star: five points, inner radius 0.45 r
            angles = np.arange(10) * np.pi / 5
            radii = np.where(np.arange(10) % 2 == 0, r, 0.45 * r)
        angles = angles + angle
        return np.stack([x + radii * np.cos(angles), y + radii * np.sin(angles)], axis=1)

    def _mask(self, obj: _SceneObject, x: float, y: float, angle: float) -> np.ndarray:
        """``[H, W]`` uint8 mask (1 inside) of ``obj`` at the given pose, sub-pixel exact
        to 1/16 pixel (OpenCV's fixed-point ``shift``)."""
        mask = np.zeros((self.height, self.width), np.uint8)
        shift = 4
        scale = 1 << shift
        outline = self._outline(obj, x, y, angle)
        if outline is None:
            cv2.circle(mask, (int(round(x * scale)), int(round(y * scale))),
                       int(round(obj.size * scale)), 1, thickness=-1, lineType=cv2.LINE_8,
                       shift=shift)
        else:
            points = np.round(outline * scale).astype(np.int32)
            cv2.fillPoly(mask, [points], 1, lineType=cv2.LINE_8, shift=shift)
        return mask

    # ---- rendering -----------------------------------------------------------------------

    def render(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        """Frame ``t`` (an int >= 0) of the scene.

        Returns:
            ``(rgb, labels)``: ``rgb`` ``[H, W, 3]`` uint8 in RGB order, ``labels`` ``[H, W]``
            uint8 class indices into :attr:`CLASS_NAMES`.
        """
        if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or t < 0:
            raise ValueError(f"SyntheticScene.render: t must be an int frame index >= 0, got {t!r}")
        t = int(t)
        image = self._background.copy()
        labels = np.zeros((self.height, self.width), np.uint8)
        for obj in self._objects:          # list order is depth order: later objects in front
            x, y, angle = self._pose(obj, t)
            rows, cols = np.nonzero(self._mask(obj, x, y, angle))
            if rows.size == 0:
                continue
            # Stripes in the object's own frame, so the texture moves and turns with it.
            direction = obj.stripe_angle + angle
            along = (cols - x) * np.cos(direction) + (rows - y) * np.sin(direction)
            shade = 1.0 + obj.stripe_amplitude * np.sin(along * (2 * np.pi / obj.stripe_period))
            image[rows, cols] = np.asarray(obj.colour, np.float32) * shade[:, None].astype(np.float32)
            labels[rows, cols] = obj.label
        # Camera: slight optical blur and per-frame sensor noise, reproducible from (seed, t).
        image = cv2.GaussianBlur(image, (0, 0), 0.7)
        noise_rng = np.random.default_rng([self.seed, t, 0x401CE])
        image += noise_rng.normal(0, 6, size=image.shape).astype(np.float32)
        rgb = np.clip(np.rint(image), 0, 255).astype(np.uint8)
        return rgb, labels

    def frames(self, start: int = 0, count: int = 1):
        """Yield ``(rgb, labels)`` for frames ``start .. start + count - 1``."""
        for t in range(start, start + count):
            yield self.render(t)

    def __repr__(self) -> str:
        return (f"SyntheticScene(height={self.height}, width={self.width}, seed={self.seed}, "
                f"num_objects={self.num_objects})")
