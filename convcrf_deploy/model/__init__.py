"""PyTorch models: the ConvCRF layer, unary networks, segmentation models and checkpoints."""
from .convcrf import ConvCRF, pool, upsample
from .unaries import (UNARY_ARCHITECTURES, FastFCN, ResNetFCN, build_unary, register_unary)
from .segmentation import SegmentationModel
from .checkpoint import (DEMO_MODEL_PATH, CheckpointError, CheckpointNotFoundError, load_crf,
                         load_model, save_crf, save_model)
from .unary_files import UnarySettings, load_any_model, load_unary_file
from .constraints import with_probed_constraints

__all__ = ["ConvCRF", "pool", "upsample",
           "FastFCN", "ResNetFCN", "UNARY_ARCHITECTURES", "register_unary", "build_unary",
           "SegmentationModel", "save_model", "load_model", "save_crf", "load_crf", "DEMO_MODEL_PATH",
           "CheckpointError", "CheckpointNotFoundError",
           "UnarySettings", "load_unary_file", "load_any_model", "with_probed_constraints"]
