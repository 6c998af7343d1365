// convcrf_ort_ops_cpu.cpp: the CPU execution provider's kernels: libconvcrf_cpu's fp32 entry
// points (its instruction-set clones and thread pool); fp16 tensors are widened to fp32 around
// the call, which is what the contract asks (fp32 arithmetic whatever the I/O type).
#include "convcrf_ort_ops.h"

#include "convcrf_cpu.h"
#include "convcrfPluginLogic.h"
#include "convcrf_math.h"

#include <vector>

namespace convcrf {
namespace ort {

namespace {

int64_t elements(int64_t n, int64_t c, int64_t h, int64_t w)
{
    return n * c * h * w;  // checkInputs proved that it fits
}

std::vector<float> widened(Ort::ConstValue const& value, int64_t count)
{
    std::vector<float> out(static_cast<size_t>(count));
    Ort::Float16_t const* half = value.GetTensorData<Ort::Float16_t>();
    for (int64_t i = 0; i < count; ++i)
        out[i] = half[i].ToFloat();
    return out;
}

void narrow(std::vector<float> const& values, Ort::UnownedValue& output)
{
    Ort::Float16_t* half = output.GetTensorMutableData<Ort::Float16_t>();
    for (size_t i = 0; i < values.size(); ++i)
        half[i] = Ort::Float16_t(values[i]);
}

OrtStatusPtr result(NodeSettings const& settings, int32_t status)
{
    if (status == 0)
        return nullptr;
    return makeStatus(settings.where + ": libconvcrf_cpu failed: " + statusMessage(status) + " (status " +
                          std::to_string(status) + ")",
                      ORT_RUNTIME_EXCEPTION);
}

}  // namespace

OrtStatusPtr computeCpu(NodeSettings const& settings, Ort::KernelContext& context, int64_t const* dims)
{
    int64_t const n = dims[0], channels = dims[1], h = dims[2], w = dims[3];
    int32_t const k = settings.filterSize;
    int64_t const kk = trt::kernelChannels(k);
    bool const half = settings.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16;

    if (settings.kind == OpKind::kGaussianKernel) {
        Ort::ConstValue features = context.GetInput(0);
        Ort::UnownedValue kernel = context.GetOutput(0, {n, kk, h, w});
        if (!half)
            return result(settings, convcrf_gaussian_kernel_f32(features.GetTensorData<float>(), n, channels, h, w,
                                                                k, kernel.GetTensorMutableData<float>(),
                                                                settings.threads));
        std::vector<float> const in = widened(features, elements(n, channels, h, w));
        std::vector<float> out(static_cast<size_t>(elements(n, kk, h, w)));
        int32_t const status = convcrf_gaussian_kernel_f32(in.data(), n, channels, h, w, k, out.data(),
                                                           settings.threads);
        if (status == 0)
            narrow(out, kernel);
        return result(settings, status);
    }

    Ort::ConstValue q = context.GetInput(0);
    Ort::ConstValue kernel = context.GetInput(1);
    Ort::UnownedValue messages = context.GetOutput(0, {n, channels, h, w});
    if (!half)
        return result(settings, convcrf_message_passing_f32(q.GetTensorData<float>(), kernel.GetTensorData<float>(),
                                                            n, channels, h, w, k,
                                                            messages.GetTensorMutableData<float>(),
                                                            settings.threads));
    std::vector<float> const q32 = widened(q, elements(n, channels, h, w));
    std::vector<float> const k32 = widened(kernel, elements(n, kk, h, w));
    std::vector<float> out(q32.size());
    int32_t const status = convcrf_message_passing_f32(q32.data(), k32.data(), n, channels, h, w, k, out.data(),
                                                       settings.threads);
    if (status == 0)
        narrow(out, messages);
    return result(settings, status);
}

}  // namespace ort
}  // namespace convcrf
