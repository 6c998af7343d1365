// convcrfPluginLogic.cpp: field and shape rules of the ConvCRF TensorRT plugins.
#include "convcrfPluginLogic.h"

#include "convcrf_math.h"

#include <sstream>

namespace convcrf {
namespace trt {

std::string filterSizeError(int64_t filterSize)
{
    if (filterSize >= 1 && filterSize <= kMaxFilterSize && isValidFilterSize(static_cast<int32_t>(filterSize)))
        return {};
    std::ostringstream msg;
    msg << "filter_size=" << filterSize << " is invalid: it must be odd and in 1.." << kMaxFilterSize
        << " (the ConvCRF window is filter_size x filter_size; export the model with a valid "
           "filter_size)";
    return msg.str();
}

int64_t kernelChannels(int32_t filterSize)
{
    return int64_t(filterSize) * filterSize;
}

std::string formatDims(int64_t const* dims, int32_t nbDims)
{
    std::ostringstream out;
    out << "[";
    for (int32_t i = 0; i < nbDims; ++i)
        out << (i ? ", " : "") << dims[i];
    out << "]";
    return out.str();
}

namespace {

bool known(int64_t dim)
{
    return dim >= 0;
}

std::string checkRank4(char const* what, int64_t const* dims, int32_t nbDims)
{
    if (nbDims != 4) {
        std::ostringstream msg;
        msg << what << " must be a 4-D NCHW tensor, got rank " << nbDims << " "
            << formatDims(dims, nbDims < 0 ? 0 : nbDims);
        return msg.str();
    }
    for (int32_t i = 0; i < 4; ++i) {
        if (dims[i] < kUnknownDim) {
            std::ostringstream msg;
            msg << what << " has an invalid dimension " << formatDims(dims, nbDims);
            return msg.str();
        }
    }
    return {};
}

}  // namespace

std::string checkKernelInput(int64_t const* featureDims, int32_t nbDims)
{
    return checkRank4("ConvCRFKernel input 'features' [N, D, h, w]", featureDims, nbDims);
}

std::string checkMessagePassingInputs(int64_t const* qDims, int32_t qNbDims,
                                      int64_t const* kernelDims, int32_t kernelNbDims,
                                      int32_t filterSize)
{
    std::string error = filterSizeError(filterSize);
    if (error.empty())
        error = checkRank4("ConvCRFMessagePassing input 'q' [N, C, h, w]", qDims, qNbDims);
    if (error.empty())
        error = checkRank4("ConvCRFMessagePassing input 'K' [N, k*k, h, w]", kernelDims, kernelNbDims);
    if (!error.empty())
        return error;
    const int64_t channels = kernelChannels(filterSize);
    if (known(kernelDims[1]) && kernelDims[1] != channels) {
        std::ostringstream msg;
        msg << "ConvCRFMessagePassing: K has " << kernelDims[1] << " channels " << formatDims(kernelDims, 4)
            << " but filter_size=" << filterSize << " needs k*k=" << channels
            << "; the node's filter_size must match the ConvCRFKernel that produced K";
        return msg.str();
    }
    static char const* const names[4] = {"N", "C", "h", "w"};
    for (int32_t i : {0, 2, 3}) {
        if (known(qDims[i]) && known(kernelDims[i]) && qDims[i] != kernelDims[i]) {
            std::ostringstream msg;
            msg << "ConvCRFMessagePassing: q " << formatDims(qDims, 4) << " and K "
                << formatDims(kernelDims, 4) << " disagree in " << names[i]
                << "; both must come from the same (pooled) image";
            return msg.str();
        }
    }
    return {};
}

}  // namespace trt
}  // namespace convcrf
