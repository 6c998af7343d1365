"""Stand-ins for libraries' objects, shared by tests in several folders."""
from __future__ import annotations


class RefusingVideoWriter:
    """An ``cv2.VideoWriter`` that cannot open (what OpenCV returns for a codec or container
    it cannot write): ``monkeypatch.setattr(cv2, "VideoWriter", RefusingVideoWriter)``."""

    def __init__(self, *args):
        pass

    def isOpened(self):
        return False

    def release(self):
        pass
