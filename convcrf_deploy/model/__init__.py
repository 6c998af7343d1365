"""PyTorch models: the ConvCRF layer (and, built on it, full segmentation models)."""
from .convcrf import ConvCRF, pool, upsample

__all__ = ["ConvCRF", "pool", "upsample"]
