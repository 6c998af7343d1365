"""Data for evaluation and training: the paper's synthetic noisy unary and labelled folders.

* :mod:`.synthetic` — the paper's Section 5.1 noisy unary made from a ground truth
  (numpy + OpenCV).
* :mod:`.folder`    — :class:`LabelledFolder`, image/label pairs on disk (the ConvCRF sample
  layout or PASCAL VOC 2012's).
"""
from .folder import DatasetError, LabelledFolder, LabelledSample, voc_colour_to_index
from .synthetic import synthetic_logits, synthetic_unary

__all__ = ["DatasetError", "LabelledFolder", "LabelledSample", "synthetic_logits", "synthetic_unary",
           "voc_colour_to_index"]
