// convcrfPluginExports.cpp: entry points of libconvcrf_trt_plugin.so for dynamic loading
// (IPluginRegistry::loadLibrary, trt.get_plugin_registry().load_library, trtexec
// --dynamicPlugins). TENSORRTAPI exports them despite -fvisibility=hidden because the library
// is compiled with -DTENSORRT_BUILD_LIB.
#include "convcrfPlugin.h"

extern "C" TENSORRTAPI nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators)
{
    return convcrf::trt::pluginCreators(nbCreators);
}

extern "C" TENSORRTAPI void setLoggerFinder(nvinfer1::ILoggerFinder* finder)
{
    convcrf::trt::setLoggerFinder(finder);
}
