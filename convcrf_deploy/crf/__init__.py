"""The CRF's inference algorithm without torch: the mean-field schedule and the native CRF.

* :mod:`.schedule` - the mean-field schedule (iteration order, weighting, +C, warm start,
  fast mode) written once over an executor interface (:class:`MeanFieldExecutor`);
* :mod:`.native` - the executor on NumPy arrays and the native C library
  (:class:`NativeExecutor`) and the runtime's CRF built on it (:class:`NativeCRF`);
* :mod:`.warm_start` - the video warm start (:class:`WarmStartMeanField`): one stream's
  previous result as the next frame's start, for any CRF that takes ``initial_q=``.

The PyTorch executor is :class:`convcrf_deploy.model.executors.TorchExecutor`; ``ConvCRF``
chooses between it and :class:`NativeExecutor`. Importing this package imports numpy only.
"""
from .native import (NativeCRF, NativeCRFUnavailable, NativeExecutor, MeanFieldWeights,
                     argmax_classes, library_available)
from .schedule import MeanFieldExecutor, blurred_intermediate, check_arguments, mean_field
from .warm_start import WarmStartMeanField

__all__ = ["MeanFieldExecutor", "MeanFieldWeights", "NativeCRF", "NativeCRFUnavailable",
           "NativeExecutor", "WarmStartMeanField", "argmax_classes", "blurred_intermediate",
           "check_arguments", "library_available", "mean_field"]
