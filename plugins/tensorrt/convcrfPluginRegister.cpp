// convcrfPluginRegister.cpp: static registration for the self-registering variant
// libconvcrf_trt_plugin_static_reg.so (links libnvinfer). Loading it with dlopen/ctypes.CDLL
// registers both creators in TensorRT's global registry, which is what Polygraphy --plugins,
// trtexec --staticPlugins and ONNX Runtime's TensorRT EP (trt_extra_plugin_lib_paths) expect.
// Never load this variant and libconvcrf_trt_plugin.so (loadLibrary) in one process: the second
// registration of the same (name, version, namespace) fails.
#include "convcrfPlugin.h"

namespace {
using convcrf::trt::ConvCRFKernelCreator;
using convcrf::trt::ConvCRFMessagePassingCreator;
}  // namespace

REGISTER_TENSORRT_PLUGIN(ConvCRFKernelCreator);
REGISTER_TENSORRT_PLUGIN(ConvCRFMessagePassingCreator);
