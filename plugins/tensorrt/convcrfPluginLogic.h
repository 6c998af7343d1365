// convcrfPluginLogic.h: the TensorRT-free part of the ConvCRF plugins.
//
// Field validation and shape rules as plain functions on integers and strings, so the host
// tests exercise them without TensorRT types and the plugin classes stay thin adapters. Every
// check returns an empty string when the input is valid and otherwise a message that names
// the problem and the fix (it is logged verbatim by the plugin).
#pragma once

#include <cstdint>
#include <string>

namespace convcrf {
namespace trt {

constexpr char const* kKernelPluginName = "ConvCRFKernel";
constexpr char const* kMessagePassingPluginName = "ConvCRFMessagePassing";
// Bump when the serialised fields change: engines store (name, version, namespace, fields).
constexpr char const* kPluginVersion = "1";
constexpr char const* kPluginNamespace = "";
constexpr char const* kFilterSizeField = "filter_size";
constexpr int32_t kDefaultFilterSize = 7;

// Dimension value meaning "not known yet" (TensorRT's -1 for dynamic dimensions at build time).
constexpr int64_t kUnknownDim = -1;

// "" when filterSize is odd and in 1..kMaxFilterSize, else the reason.
std::string filterSizeError(int64_t filterSize);

// Number of K channels for a filter size: k * k.
int64_t kernelChannels(int32_t filterSize);

// ConvCRFKernel input: features [N, D, h, w]. Dims may be kUnknownDim.
std::string checkKernelInput(int64_t const* featureDims, int32_t nbDims);

// ConvCRFMessagePassing inputs: q [N, C, h, w], K [N, k*k, h, w]. Dims may be kUnknownDim;
// only dims known on both sides are compared.
std::string checkMessagePassingInputs(int64_t const* qDims, int32_t qNbDims,
                                      int64_t const* kernelDims, int32_t kernelNbDims,
                                      int32_t filterSize);

// Human-readable "[1, 49, 32, 32]" (unknown dims as -1) for error messages.
std::string formatDims(int64_t const* dims, int32_t nbDims);

}  // namespace trt
}  // namespace convcrf
