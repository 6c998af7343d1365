"""Alias kept for the import path ``convcrf_deploy.runtime.backends.native_crf``: the native
CRF now lives in :mod:`convcrf_deploy.crf.native` (with the mean-field schedule it runs, which
``ConvCRF`` shares). New code imports from :mod:`convcrf_deploy.crf`."""
from ...crf.native import (STATE_KEY, NativeCRF, NativeCRFUnavailable, argmax_classes,  # noqa: F401
                           library_available)

__all__ = ["STATE_KEY", "NativeCRF", "NativeCRFUnavailable", "argmax_classes",
           "library_available"]
