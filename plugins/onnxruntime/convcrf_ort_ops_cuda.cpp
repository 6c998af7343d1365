// convcrf_ort_ops_cuda.cpp: the CUDA execution provider's kernels: the launchers of
// libconvcrf_cuda (plugins/cuda/convcrf_cuda.h, fp32 and fp16 natively) on the compute stream
// ONNX Runtime hands the kernel. Plain C++: the launcher API takes the stream as void*, so no
// CUDA header is needed here; the kernels themselves are compiled by nvcc in plugins/cuda.
#include "convcrf_ort_ops.h"

#include "convcrf_cuda.h"
#include "convcrfPluginLogic.h"
#include "convcrf_math.h"

namespace convcrf {
namespace ort {

OrtStatusPtr computeCuda(NodeSettings const& settings, Ort::KernelContext& context, int64_t const* dims)
{
    int64_t const n = dims[0], channels = dims[1], h = dims[2], w = dims[3];
    int32_t const k = settings.filterSize;
    int32_t const dtype =
        settings.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16 ? CONVCRF_CUDA_FLOAT16 : CONVCRF_CUDA_FLOAT32;
    void* stream = context.GetGPUComputeStream();
    int32_t status = 0;
    if (settings.kind == OpKind::kGaussianKernel) {
        Ort::ConstValue features = context.GetInput(0);
        Ort::UnownedValue kernel = context.GetOutput(0, {n, trt::kernelChannels(k), h, w});
        status = convcrf_cuda_gaussian_kernel(features.GetTensorRawData(), dtype, n, channels, h, w, k,
                                              kernel.GetTensorMutableRawData(), stream);
    } else {
        Ort::ConstValue q = context.GetInput(0);
        Ort::ConstValue kernel = context.GetInput(1);
        Ort::UnownedValue messages = context.GetOutput(0, {n, channels, h, w});
        status = convcrf_cuda_message_passing(q.GetTensorRawData(), kernel.GetTensorRawData(), dtype, n, channels,
                                              h, w, k, messages.GetTensorMutableRawData(), stream);
    }
    if (status == 0)
        return nullptr;
    return makeStatus(settings.where + ": libconvcrf_cuda failed: " + statusMessage(status) + " (status " +
                          std::to_string(status) + ")",
                      ORT_RUNTIME_EXCEPTION);
}

}  // namespace ort
}  // namespace convcrf
