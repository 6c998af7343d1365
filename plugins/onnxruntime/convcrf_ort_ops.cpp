// convcrf_ort_ops.cpp: attributes, shape rules and errors of the ONNX Runtime custom ops.
//
// The rules are those of the TensorRT plugin (plugins/tensorrt/convcrfPluginLogic.h, shared
// source), so both runtimes accept and refuse the same nodes with the same words.
#include "convcrf_ort_ops.h"

#include "convcrfPluginLogic.h"
#include "convcrf_math.h"
#include "validation.h"

#include <exception>
#include <new>
#include <sstream>
#include <vector>

namespace convcrf {
namespace ort {

namespace {

char const* opName(OpKind kind)
{
    return kind == OpKind::kGaussianKernel ? trt::kKernelPluginName : trt::kMessagePassingPluginName;
}

// Calls an OrtApi function returning a status; true on success (the status is released).
bool succeeded(OrtStatus* status)
{
    if (status == nullptr)
        return true;
    Ort::GetApi().ReleaseStatus(status);
    return false;
}

// Whether attribute `name` exists with a type other than the one that just failed to read.
// (The C API has no "attribute type" query: a read of the wrong type fails like a missing
// attribute, so probe the other types a node could carry.)
bool hasAttributeOfOtherType(OrtKernelInfo const* info, char const* name)
{
    OrtApi const& api = Ort::GetApi();
    int64_t i = 0;
    float f = 0.0f;
    size_t size = 0;
    return succeeded(api.KernelInfoGetAttribute_int64(info, name, &i)) ||
           succeeded(api.KernelInfoGetAttribute_float(info, name, &f)) ||
           succeeded(api.KernelInfoGetAttribute_string(info, name, nullptr, &size)) ||
           succeeded(api.KernelInfoGetAttributeArray_int64(info, name, nullptr, &size)) ||
           succeeded(api.KernelInfoGetAttributeArray_float(info, name, nullptr, &size));
}

std::string nodeName(OrtKernelInfo const* info)
{
    OrtApi const& api = Ort::GetApi();
    size_t size = 0;
    if (!succeeded(api.KernelInfo_GetNodeName(info, nullptr, &size)) || size == 0)
        return {};
    std::string name(size, '\0');
    if (!succeeded(api.KernelInfo_GetNodeName(info, &name[0], &size)))
        return {};
    name.resize(name.find('\0') == std::string::npos ? name.size() : name.find('\0'));
    return name;
}

// filter_size: INT, default 7 (docs/ops.md), odd in 1..31. "" or the reason.
std::string readFilterSize(OrtKernelInfo const* info, int32_t& filterSize)
{
    int64_t value = 0;
    if (!succeeded(Ort::GetApi().KernelInfoGetAttribute_int64(info, trt::kFilterSizeField, &value))) {
        if (hasAttributeOfOtherType(info, trt::kFilterSizeField))
            return "attribute filter_size must be an INT (an odd window size in 1..31); export "
                   "the model again with convcrf-export";
        filterSize = trt::kDefaultFilterSize;
        return {};
    }
    std::string error = trt::filterSizeError(value);
    if (error.empty())
        filterSize = static_cast<int32_t>(value);
    return error;
}

// plugin_version / plugin_namespace: STRING, default and only allowed value `expected`.
std::string checkStringAttribute(OrtKernelInfo const* info, char const* name, char const* expected)
{
    OrtApi const& api = Ort::GetApi();
    size_t size = 0;
    if (!succeeded(api.KernelInfoGetAttribute_string(info, name, nullptr, &size))) {
        if (hasAttributeOfOtherType(info, name))
            return std::string("attribute ") + name + " must be a STRING (\"" + expected + "\")";
        return {};
    }
    std::string value(size, '\0');
    if (size > 0 && !succeeded(api.KernelInfoGetAttribute_string(info, name, &value[0], &size)))
        return std::string("attribute ") + name + " cannot be read";
    value.resize(value.find('\0') == std::string::npos ? value.size() : value.find('\0'));
    if (value != expected)
        return std::string("attribute ") + name + " is \"" + value + "\" but this library implements \"" +
               expected + "\" (docs/ops.md); export the model with this version of convcrf-deploy";
    return {};
}

// Dims of input `index` as the graph declares them (-1 unknown); false when the graph gives
// no shape. ONNX Runtime reports a missing shape as rank 0, so rank 0 counts as unknown.
bool declaredDims(OrtKernelInfo const* info, size_t index, std::vector<int64_t>& dims)
{
    OrtApi const& api = Ort::GetApi();
    OrtTypeInfo* typeInfo = nullptr;
    if (!succeeded(api.KernelInfo_GetInputTypeInfo(info, index, &typeInfo)) || typeInfo == nullptr)
        return false;
    Ort::TypeInfo owned(typeInfo);
    if (owned.GetONNXType() != ONNX_TYPE_TENSOR)
        return false;
    auto tensorInfo = owned.GetTensorTypeAndShapeInfo();
    if (tensorInfo.GetDimensionsCount() == 0)
        return false;
    dims = tensorInfo.GetShape();
    return true;
}

// Load-time shape rules on what the graph declares (the run-time check repeats them on the
// real shapes). "" or the reason.
std::string checkDeclaredShapes(OrtKernelInfo const* info, OpKind kind, int32_t filterSize)
{
    std::vector<int64_t> first;
    std::vector<int64_t> second;
    bool const haveFirst = declaredDims(info, 0, first);
    if (kind == OpKind::kGaussianKernel)
        return haveFirst ? trt::checkKernelInput(first.data(), static_cast<int32_t>(first.size())) : "";
    bool const haveSecond = declaredDims(info, 1, second);
    if (!haveFirst && !haveSecond)
        return {};
    // An undeclared side is "rank 4, all unknown" so that the declared one is still checked.
    if (!haveFirst)
        first.assign(4, trt::kUnknownDim);
    if (!haveSecond)
        second.assign(4, trt::kUnknownDim);
    return trt::checkMessagePassingInputs(first.data(), static_cast<int32_t>(first.size()), second.data(),
                                          static_cast<int32_t>(second.size()), filterSize);
}

char const* typeText(ONNXTensorElementDataType type)
{
    switch (type) {
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT: return "float32";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16: return "float16";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE: return "float64";
    default: return "a non-float type";
    }
}

// Run-time rules on the inputs' real shapes and types; fills dims[4] of input 0. "" or the reason.
std::string checkInputs(NodeSettings const& settings, Ort::KernelContext& context, int64_t* dims)
{
    size_t const expected = settings.kind == OpKind::kGaussianKernel ? 1 : 2;
    if (context.GetInputCount() != expected || context.GetOutputCount() != 1) {
        std::ostringstream msg;
        msg << "expects " << expected << " input(s) and 1 output, got " << context.GetInputCount()
            << " and " << context.GetOutputCount();
        return msg.str();
    }
    std::vector<int64_t> shapes[2];
    for (size_t i = 0; i < expected; ++i) {
        Ort::ConstValue input = context.GetInput(i);
        if (!input.IsTensor())
            return "inputs must be tensors";
        auto info = input.GetTensorTypeAndShapeInfo();
        if (info.GetElementType() != settings.type) {
            std::ostringstream msg;
            msg << "input " << i << " is " << typeText(info.GetElementType()) << " but the node runs "
                << typeText(settings.type) << "; every input must have the same type (float32 or float16)";
            return msg.str();
        }
        shapes[i] = info.GetShape();
    }
    std::string error = settings.kind == OpKind::kGaussianKernel
        ? trt::checkKernelInput(shapes[0].data(), static_cast<int32_t>(shapes[0].size()))
        : trt::checkMessagePassingInputs(shapes[0].data(), static_cast<int32_t>(shapes[0].size()),
                                         shapes[1].data(), static_cast<int32_t>(shapes[1].size()),
                                         settings.filterSize);
    if (!error.empty())
        return error;
    for (int32_t axis = 0; axis < 4; ++axis) {
        if (shapes[0][axis] < 0)
            return "input 0 has a negative dimension " + trt::formatDims(shapes[0].data(), 4);
        dims[axis] = shapes[0][axis];
    }
    // Sizes of the output (and of the fp32 copies of fp16 tensors) must be addressable.
    int64_t const kk = trt::kernelChannels(settings.filterSize);
    if (!productFits({dims[0], kk, dims[2], dims[3]}, sizeof(float)) ||
        !productFits({dims[0], dims[1], dims[2], dims[3]}, sizeof(float)))
        return "tensor sizes " + trt::formatDims(dims, 4) + " are too large (a product overflows int64)";
    return {};
}

}  // namespace

OrtStatusPtr makeStatus(std::string const& message, OrtErrorCode code) noexcept
{
    return Ort::GetApi().CreateStatus(code, message.c_str());
}

char const* ConvCRFOp::GetName() const noexcept
{
    return opName(kind_);
}

char const* ConvCRFOp::GetExecutionProviderType() const noexcept
{
    // nullptr: the CPU execution provider.
    return device_ == Device::kCuda ? "CUDAExecutionProvider" : nullptr;
}

OrtStatusPtr ConvCRFOp::CreateKernelV2(OrtApi const&, OrtKernelInfo const* info, void** kernel) const noexcept
{
    try {
        *kernel = nullptr;
        std::string const name = nodeName(info);
        NodeSettings settings{kind_, device_, type_, trt::kDefaultFilterSize, threads_,
                              std::string(opName(kind_)) + (name.empty() ? " node (unnamed)" : " node '" + name + "'")};
        std::string error = readFilterSize(info, settings.filterSize);
        if (error.empty())
            error = checkStringAttribute(info, "plugin_version", trt::kPluginVersion);
        if (error.empty())
            error = checkStringAttribute(info, "plugin_namespace", trt::kPluginNamespace);
        if (error.empty())
            error = checkDeclaredShapes(info, kind_, settings.filterSize);
        if (!error.empty())
            return makeStatus(settings.where + ": " + error, ORT_INVALID_GRAPH);
        *kernel = new NodeKernel(std::move(settings));
        return nullptr;
    } catch (std::bad_alloc const&) {
        return makeStatus(std::string(opName(kind_)) + ": out of memory creating the kernel", ORT_FAIL);
    } catch (std::exception const& e) {
        return makeStatus(std::string(opName(kind_)) + ": " + e.what(), ORT_FAIL);
    } catch (...) {
        return makeStatus(std::string(opName(kind_)) + ": unknown error creating the kernel", ORT_FAIL);
    }
}

OrtStatusPtr NodeKernel::ComputeV2(OrtKernelContext* context) noexcept
{
    try {
        Ort::KernelContext ctx(context);
        int64_t dims[4] = {0, 0, 0, 0};
        std::string const error = checkInputs(settings, ctx, dims);
        if (!error.empty())
            return makeStatus(settings.where + ": " + error);
#if defined(CONVCRF_ORT_WITH_CUDA)
        if (settings.device == Device::kCuda)
            return computeCuda(settings, ctx, dims);
#endif
        return computeCpu(settings, ctx, dims);
    } catch (Ort::Exception const& e) {
        return makeStatus(settings.where + ": " + e.what(), e.GetOrtErrorCode());
    } catch (std::bad_alloc const&) {
        return makeStatus(settings.where + ": out of memory", ORT_FAIL);
    } catch (std::exception const& e) {
        return makeStatus(settings.where + ": " + e.what(), ORT_FAIL);
    } catch (...) {
        return makeStatus(settings.where + ": unknown error", ORT_FAIL);
    }
}

}  // namespace ort
}  // namespace convcrf
