// convcrfPluginRegister.cpp: static registration for the self-registering variant
// libconvcrf_trt_plugin_static_reg.so (links libnvinfer). Loading it with dlopen/ctypes.CDLL
// registers both creators in TensorRT's global registry, which is what Polygraphy --plugins,
// trtexec --staticPlugins and ONNX Runtime's TensorRT EP (trt_extra_plugin_lib_paths) expect.
// Never load this variant and libconvcrf_trt_plugin.so (loadLibrary) in one process: the second
// registration of the same (name, version, namespace) fails.
//
// TensorRT calls setLoggerFinder() only on libraries it loads itself (loadLibrary); this variant
// is loaded by the application, so it takes TensorRT's logger from libnvinfer (getLogger()),
// before the creators are registered (static objects of one file initialise in order).
#include "convcrfPlugin.h"

namespace {

using convcrf::trt::ConvCRFKernelCreator;
using convcrf::trt::ConvCRFMessagePassingCreator;

class TensorRTLoggerFinder final : public nvinfer1::ILoggerFinder
{
public:
    nvinfer1::ILogger* findLogger() noexcept override { return getLogger(); }
};

TensorRTLoggerFinder gTensorRTLoggerFinder;

struct LoggerInstaller {
    LoggerInstaller() noexcept { convcrf::trt::setLoggerFinder(&gTensorRTLoggerFinder); }
};

LoggerInstaller const gLoggerInstaller;

}  // namespace

REGISTER_TENSORRT_PLUGIN(ConvCRFKernelCreator);
REGISTER_TENSORRT_PLUGIN(ConvCRFMessagePassingCreator);
