// convcrf_ort_ops.h: the ConvCRF ops as ONNX Runtime custom ops (library libconvcrf_ort_ops).
//
// `ConvCRFKernel` and `ConvCRFMessagePassing` of domain `trt.plugins` (docs/ops.md), as the
// `plugin` export flavour writes them, on ONNX Runtime's CPU execution provider (the kernels of
// libconvcrf_cpu, its thread pool) and, in libconvcrf_ort_ops_cuda, also on the CUDA execution
// provider (the launchers of libconvcrf_cuda on ONNX Runtime's compute stream). fp32 and fp16;
// shapes are read at every run (dynamic N, h, w); fp16 is computed in fp32 as the contract says.
//
// Built against the ONNX Runtime 1.16 C/C++ API headers (ORT_API_VERSION 16) without linking
// libonnxruntime: the runtime that loads the library hands its API to RegisterCustomOps, so one
// build loads in every ONNX Runtime from 1.16 on.
//
// Errors: an invalid node (attribute of the wrong type or value, rank other than 4 where the
// graph says so) fails the session's creation, and an invalid input at run time fails the run,
// each with an ONNX Runtime status whose message names the node, the problem and the fix. No
// exception leaves the library: every callback ONNX Runtime calls catches everything.
#pragma once

#define ORT_API_MANUAL_INIT
#include <onnxruntime_cxx_api.h>
#undef ORT_API_MANUAL_INIT

#include <cstdint>
#include <string>

namespace convcrf {
namespace ort {

// Op domain of the custom nodes (docs/ops.md).
constexpr char const* kDomain = "trt.plugins";
// Session configuration entry with the CRF ops' worker threads (absent or 0: every CPU the
// process may run on, libconvcrf_cpu's default). Read when the library is registered.
constexpr char const* kThreadsConfigKey = "convcrf.num_threads";

enum class OpKind { kGaussianKernel, kMessagePassing };
enum class Device { kCpu, kCuda };

// What a node computes, fixed when ONNX Runtime creates its kernel.
struct NodeSettings {
    OpKind kind;
    Device device;
    ONNXTensorElementDataType type;  // FLOAT or FLOAT16, that of every input and the output
    int32_t filterSize;
    int32_t threads;                 // CPU worker threads, 0 = library default
    std::string where;               // "ConvCRFKernel node 'name'", the prefix of every message
};

// The kernel of one graph node.
struct NodeKernel {
    explicit NodeKernel(NodeSettings settings) : settings(std::move(settings)) {}
    OrtStatusPtr ComputeV2(OrtKernelContext* context) noexcept;

    NodeSettings settings;
};

// One (op, device, data type) registration. ONNX Runtime merges the registrations of one name
// into one schema whose inputs accept fp32 and fp16, and picks the kernel by the input types.
struct ConvCRFOp : Ort::CustomOpBase<ConvCRFOp, NodeKernel, /*WithStatus=*/true> {
    ConvCRFOp(OpKind kind, Device device, ONNXTensorElementDataType type, int32_t threads)
        : kind_(kind), device_(device), type_(type), threads_(threads) {}

    OrtStatusPtr CreateKernelV2(OrtApi const& api, OrtKernelInfo const* info, void** kernel) const noexcept;

    char const* GetName() const noexcept;
    char const* GetExecutionProviderType() const noexcept;
    size_t GetInputTypeCount() const noexcept { return kind_ == OpKind::kGaussianKernel ? 1 : 2; }
    ONNXTensorElementDataType GetInputType(size_t) const noexcept { return type_; }
    size_t GetOutputTypeCount() const noexcept { return 1; }
    ONNXTensorElementDataType GetOutputType(size_t) const noexcept { return type_; }

private:
    OpKind kind_;
    Device device_;
    ONNXTensorElementDataType type_;
    int32_t threads_;
};

// Device parts of NodeKernel::ComputeV2, after the shapes were validated. `dims` are
// [N, C or D, h, w] of the first input; they return nullptr or an ONNX Runtime status.
OrtStatusPtr computeCpu(NodeSettings const& settings, Ort::KernelContext& context, int64_t const* dims);
#if defined(CONVCRF_ORT_WITH_CUDA)
OrtStatusPtr computeCuda(NodeSettings const& settings, Ort::KernelContext& context, int64_t const* dims);
#endif

// An ONNX Runtime status with `message` (ORT_INVALID_ARGUMENT unless said otherwise).
OrtStatusPtr makeStatus(std::string const& message, OrtErrorCode code = ORT_INVALID_ARGUMENT) noexcept;

}  // namespace ort
}  // namespace convcrf
