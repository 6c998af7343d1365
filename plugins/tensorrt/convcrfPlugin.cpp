// convcrfPlugin.cpp: the TensorRT glue of the ConvCRF plugins (see convcrfPlugin.h).
#include "convcrfPlugin.h"

#include "convcrfPluginLogic.h"
#include "convcrf_cuda.h"
#include "convcrf_math.h"

#include <atomic>
#include <cstdarg>
#include <cstdio>
#include <exception>
#include <new>

using namespace nvinfer1;

namespace convcrf {
namespace trt {

// ---- logging ---------------------------------------------------------------------------
// No std::string here: these run inside noexcept TensorRT callbacks, where an allocation
// failure turned into an exception would call std::terminate.

namespace {

std::atomic<ILoggerFinder*> gLoggerFinder{nullptr};
constexpr size_t kMessageSize = 1024;

void logFormatted(ILogger::Severity severity, IErrorRecorder* recorder, char const* format,
                  va_list args) noexcept
{
    char body[kMessageSize];
    std::vsnprintf(body, sizeof(body), format, args);
    char text[kMessageSize + 32];
    std::snprintf(text, sizeof(text), "[convcrf plugin] %s", body);
    ILoggerFinder* finder = gLoggerFinder.load();
    ILogger* logger = finder ? finder->findLogger() : nullptr;
    if (logger)
        logger->log(severity, text);
    else
        std::fprintf(stderr, "%s: %s\n", severity <= ILogger::Severity::kERROR ? "ERROR" : "WARNING", text);
    if (recorder)
        recorder->reportError(ErrorCode::kINVALID_ARGUMENT, text);
}

}  // namespace

void setLoggerFinder(ILoggerFinder* finder) noexcept
{
    gLoggerFinder.store(finder);
}

void logError(IErrorRecorder* recorder, char const* format, ...) noexcept
{
    va_list args;
    va_start(args, format);
    logFormatted(ILogger::Severity::kERROR, recorder, format, args);
    va_end(args);
}

void logWarning(char const* format, ...) noexcept
{
    va_list args;
    va_start(args, format);
    logFormatted(ILogger::Severity::kWARNING, nullptr, format, args);
    va_end(args);
}

char const* dataTypeName(DataType type) noexcept
{
    switch (type) {
    case DataType::kFLOAT: return "FLOAT";
    case DataType::kHALF: return "HALF";
    case DataType::kBF16: return "BF16";
    case DataType::kINT8: return "INT8";
    case DataType::kINT32: return "INT32";
    case DataType::kINT64: return "INT64";
    case DataType::kBOOL: return "BOOL";
    case DataType::kUINT8: return "UINT8";
    default: return "another type";
    }
}

// ---- helpers ---------------------------------------------------------------------------

namespace {

constexpr int32_t kStatusError = -1;

// May throw (std::string): call inside guarded() only.
std::string dimsError(Dims const& dims, int32_t index, std::vector<int64_t>& out)
{
    if (dims.nbDims < 0 || dims.nbDims > Dims::MAX_DIMS)
        return "input " + std::to_string(index) + " has an invalid rank " + std::to_string(dims.nbDims);
    out.assign(dims.d, dims.d + dims.nbDims);
    return {};
}

bool isSupportedType(DataType type)
{
    return type == DataType::kFLOAT || type == DataType::kHALF;
}

int32_t launcherType(DataType type)
{
    return type == DataType::kHALF ? CONVCRF_CUDA_FLOAT16 : CONVCRF_CUDA_FLOAT32;
}

char const* statusText(int32_t status)
{
    return statusMessage(status);  // the one table, plugins/common/convcrf_math.h
}

// Run `body` (which may throw) and turn exceptions into a reported error + `onError`.
template <typename R, typename Body>
R guarded(char const* where, R onError, Body body, IErrorRecorder* recorder = nullptr) noexcept
{
    try {
        return body();
    } catch (std::bad_alloc const&) {
        logError(recorder, "%s: out of host memory", where);
    } catch (std::exception const& e) {
        logError(recorder, "%s: %s", where, e.what());
    } catch (...) {
        logError(recorder, "%s: unknown exception", where);
    }
    return onError;
}

}  // namespace

// ---- base plugin -----------------------------------------------------------------------

ConvCRFPluginBase::ConvCRFPluginBase(int32_t filterSize) noexcept
    : mFilterSize(filterSize)
{
}

IPluginCapability* ConvCRFPluginBase::getCapabilityInterface(PluginCapabilityType type) noexcept
{
    switch (type) {
    case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
    case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuild*>(this);
    case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
    }
    return nullptr;
}

char const* ConvCRFPluginBase::getPluginVersion() const noexcept
{
    return kPluginVersion;
}

char const* ConvCRFPluginBase::getPluginNamespace() const noexcept
{
    return kPluginNamespace;
}

void ConvCRFPluginBase::fail(char const* format, ...) const noexcept
{
    char message[kMessageSize];
    va_list args;
    va_start(args, format);
    std::vsnprintf(message, sizeof(message), format, args);
    va_end(args);
    logError(mErrorRecorder, "%s: %s", getPluginName(), message);
}

bool ConvCRFPluginBase::checkIOCount(int32_t nbInputs, int32_t nbOutputs, char const* method) const noexcept
{
    if (nbInputs == expectedInputs() && nbOutputs == 1)
        return true;
    fail("%s: expected %d input(s) and 1 output, got %d and %d", method, expectedInputs(), nbInputs, nbOutputs);
    return false;
}

int32_t ConvCRFPluginBase::getOutputDataTypes(DataType* outputTypes, int32_t nbOutputs,
                                              DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    if (!checkIOCount(nbInputs, nbOutputs, "getOutputDataTypes") || !outputTypes || !inputTypes)
        return kStatusError;
    if (!isSupportedType(inputTypes[0])) {
        fail("input '%s' is %s; inputs must be FLOAT or HALF (export the ONNX model with fp32 or fp16 "
             "tensors)", inputName(0), dataTypeName(inputTypes[0]));
        return kStatusError;
    }
    // One type for all inputs: the kernels read q and K with one element type.
    for (int32_t i = 1; i < nbInputs; ++i) {
        if (inputTypes[i] != inputTypes[0]) {
            fail("inputs '%s' (%s) and '%s' (%s) must share one type; export the model with one "
                 "precision (fp32 or fp16) for both", inputName(0), dataTypeName(inputTypes[0]),
                 inputName(i), dataTypeName(inputTypes[i]));
            return kStatusError;
        }
    }
    outputTypes[0] = inputTypes[0];
    return 0;
}

bool ConvCRFPluginBase::supportsFormatCombination(int32_t pos, DynamicPluginTensorDesc const* inOut,
                                                  int32_t nbInputs, int32_t nbOutputs) noexcept
{
    if (!inOut || nbInputs != expectedInputs() || nbOutputs != 1 || pos < 0 || pos >= nbInputs + nbOutputs)
        return false;
    PluginTensorDesc const& desc = inOut[pos].desc;
    if (desc.format != TensorFormat::kLINEAR || !isSupportedType(desc.type))
        return false;
    // All inputs and the output share one type: position 0 decides.
    return pos == 0 || desc.type == inOut[0].desc.type;
}

int32_t ConvCRFPluginBase::configurePlugin(DynamicPluginTensorDesc const* in, int32_t nbInputs,
                                           DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    return guarded<int32_t>("configurePlugin", kStatusError, [&]() -> int32_t {
        if (!checkIOCount(nbInputs, nbOutputs, "configurePlugin") || !in || !out)
            return kStatusError;
        std::vector<Dims> dims;
        for (int32_t i = 0; i < nbInputs; ++i)
            dims.push_back(in[i].desc.dims);
        std::string const error = checkInputDims(dims.data(), nbInputs);
        if (!error.empty()) {
            fail("%s", error.c_str());
            return kStatusError;
        }
        return 0;
    }, mErrorRecorder);
}

size_t ConvCRFPluginBase::getWorkspaceSize(DynamicPluginTensorDesc const*, int32_t, DynamicPluginTensorDesc const*,
                                           int32_t) const noexcept
{
    return 0;  // the kernels need no scratch memory
}

int32_t ConvCRFPluginBase::onShapeChange(PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* out,
                                         int32_t nbOutputs) noexcept
{
    return guarded<int32_t>("onShapeChange", kStatusError, [&]() -> int32_t {
        if (!checkIOCount(nbInputs, nbOutputs, "onShapeChange") || !in || !out)
            return kStatusError;
        std::vector<Dims> dims;
        for (int32_t i = 0; i < nbInputs; ++i)
            dims.push_back(in[i].dims);
        std::string const error = checkInputDims(dims.data(), nbInputs);
        if (!error.empty()) {
            fail("%s", error.c_str());
            return kStatusError;
        }
        return 0;
    }, mErrorRecorder);
}

IPluginV3* ConvCRFPluginBase::attachToContext(IPluginResourceContext* context) noexcept
{
    IPluginV3* copy = clone();
    if (copy && context)
        static_cast<ConvCRFPluginBase*>(copy)->mErrorRecorder = context->getErrorRecorder();
    return copy;
}

PluginFieldCollection const* ConvCRFPluginBase::getFieldsToSerialize() noexcept
{
    return guarded<PluginFieldCollection const*>("getFieldsToSerialize", nullptr, [&] {
        // Rebuilt on every call; the data pointer refers to the member, valid while we live.
        mSerializedFields.clear();
        mSerializedFields.emplace_back(kFilterSizeField, &mFilterSize, PluginFieldType::kINT32, 1);
        mSerializedCollection.nbFields = static_cast<int32_t>(mSerializedFields.size());
        mSerializedCollection.fields = mSerializedFields.data();
        return static_cast<PluginFieldCollection const*>(&mSerializedCollection);
    }, mErrorRecorder);
}

int32_t ConvCRFPluginBase::launchResult(int32_t status) const noexcept
{
    if (status == kSuccess)
        return 0;
    fail("enqueue failed: %s (status %d)", statusText(status), static_cast<int>(status));
    return kStatusError;
}

// ---- ConvCRFKernel ---------------------------------------------------------------------

IPluginV3* ConvCRFKernelPlugin::clone() noexcept
{
    return guarded<IPluginV3*>("ConvCRFKernel::clone", nullptr, [&] {
        auto* copy = new ConvCRFKernelPlugin(mFilterSize);
        copy->mErrorRecorder = mErrorRecorder;
        return static_cast<IPluginV3*>(copy);
    });
}

char const* ConvCRFKernelPlugin::getPluginName() const noexcept
{
    return kName;
}

std::string ConvCRFKernelPlugin::checkInputDims(Dims const* inputs, int32_t nbInputs) const
{
    std::vector<int64_t> features;
    std::string error = nbInputs == 1 ? dimsError(inputs[0], 0, features) : "expected 1 input";
    if (error.empty())
        error = filterSizeError(mFilterSize);
    if (error.empty())
        error = checkKernelInput(features.data(), static_cast<int32_t>(features.size()));
    return error;
}

int32_t ConvCRFKernelPlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const*,
                                             int32_t, DimsExprs* outputs, int32_t nbOutputs,
                                             IExprBuilder& exprBuilder) noexcept
{
    return guarded<int32_t>("ConvCRFKernel::getOutputShapes", kStatusError, [&]() -> int32_t {
        if (!checkIOCount(nbInputs, nbOutputs, "getOutputShapes") || !inputs || !outputs)
            return kStatusError;
        if (inputs[0].nbDims != 4) {
            fail("input 'features' must be 4-D [N, D, h, w], got rank %d", inputs[0].nbDims);
            return kStatusError;
        }
        std::string const error = filterSizeError(mFilterSize);
        if (!error.empty()) {
            fail("%s", error.c_str());
            return kStatusError;
        }
        IDimensionExpr const* channels = exprBuilder.constant(kernelChannels(mFilterSize));
        if (!channels)
            return kStatusError;
        outputs[0].nbDims = 4;
        outputs[0].d[0] = inputs[0].d[0];
        outputs[0].d[1] = channels;
        outputs[0].d[2] = inputs[0].d[2];
        outputs[0].d[3] = inputs[0].d[3];
        return 0;
    }, mErrorRecorder);
}

int32_t ConvCRFKernelPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* outputDesc,
                                     void const* const* inputs, void* const* outputs, void*,
                                     cudaStream_t stream) noexcept
{
    if (!inputDesc || !outputDesc || !inputs || !outputs) {
        fail("enqueue: null tensor descriptors or pointers");
        return kStatusError;
    }
    Dims const& f = inputDesc[0].dims;
    if (f.nbDims != 4) {
        fail("enqueue: input 'features' must be 4-D");
        return kStatusError;
    }
    return launchResult(convcrf_cuda_gaussian_kernel(inputs[0], launcherType(inputDesc[0].type), f.d[0], f.d[1],
                                                     f.d[2], f.d[3], mFilterSize, outputs[0], stream));
}

// ---- ConvCRFMessagePassing -------------------------------------------------------------

IPluginV3* ConvCRFMessagePassingPlugin::clone() noexcept
{
    return guarded<IPluginV3*>("ConvCRFMessagePassing::clone", nullptr, [&] {
        auto* copy = new ConvCRFMessagePassingPlugin(mFilterSize);
        copy->mErrorRecorder = mErrorRecorder;
        return static_cast<IPluginV3*>(copy);
    });
}

char const* ConvCRFMessagePassingPlugin::getPluginName() const noexcept
{
    return kName;
}

std::string ConvCRFMessagePassingPlugin::checkInputDims(Dims const* inputs, int32_t nbInputs) const
{
    if (nbInputs != 2)
        return "expected 2 inputs (q, K)";
    std::vector<int64_t> q, kernel;
    std::string error = dimsError(inputs[0], 0, q);
    if (error.empty())
        error = dimsError(inputs[1], 1, kernel);
    if (error.empty())
        error = checkMessagePassingInputs(q.data(), static_cast<int32_t>(q.size()), kernel.data(),
                                          static_cast<int32_t>(kernel.size()), mFilterSize);
    return error;
}

int32_t ConvCRFMessagePassingPlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const*,
                                                     int32_t, DimsExprs* outputs, int32_t nbOutputs,
                                                     IExprBuilder&) noexcept
{
    return guarded<int32_t>("ConvCRFMessagePassing::getOutputShapes", kStatusError, [&]() -> int32_t {
        if (!checkIOCount(nbInputs, nbOutputs, "getOutputShapes") || !inputs || !outputs)
            return kStatusError;
        if (inputs[0].nbDims != 4 || inputs[1].nbDims != 4) {
            fail("inputs 'q' and 'K' must be 4-D NCHW, got ranks %d and %d", inputs[0].nbDims, inputs[1].nbDims);
            return kStatusError;
        }
        outputs[0] = inputs[0];  // M has q's shape
        return 0;
    }, mErrorRecorder);
}

int32_t ConvCRFMessagePassingPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* outputDesc,
                                             void const* const* inputs, void* const* outputs, void*,
                                             cudaStream_t stream) noexcept
{
    if (!inputDesc || !outputDesc || !inputs || !outputs) {
        fail("enqueue: null tensor descriptors or pointers");
        return kStatusError;
    }
    Dims const& q = inputDesc[0].dims;
    if (q.nbDims != 4) {
        fail("enqueue: input 'q' must be 4-D");
        return kStatusError;
    }
    return launchResult(convcrf_cuda_message_passing(inputs[0], inputs[1], launcherType(inputDesc[0].type), q.d[0],
                                                     q.d[1], q.d[2], q.d[3], mFilterSize, outputs[0], stream));
}

// ---- creators --------------------------------------------------------------------------

std::string parseFields(PluginFieldCollection const* fc, int32_t& filterSize)
{
    filterSize = kDefaultFilterSize;
    if (!fc)
        return {};
    if (fc->nbFields < 0 || (fc->nbFields > 0 && !fc->fields))
        return "malformed PluginFieldCollection";
    for (int32_t i = 0; i < fc->nbFields; ++i) {
        PluginField const& field = fc->fields[i];
        std::string const name = field.name ? field.name : "";
        if (name != kFilterSizeField) {
            logWarning("ignoring unknown plugin field '%s' (the only field is filter_size)", name.c_str());
            continue;
        }
        // The ONNX parser turns an INT attribute into kINT32 or kINT64 depending on the
        // TensorRT release: accept both, range-check before narrowing.
        int64_t value = 0;
        bool const integer = field.type == PluginFieldType::kINT32 || field.type == PluginFieldType::kINT64;
        if (!integer || field.length != 1 || !field.data)
            return "field filter_size must be a single integer (INT32 or INT64; ONNX attribute type INT), "
                   "got type " + std::to_string(static_cast<int32_t>(field.type)) + " with length " +
                   std::to_string(field.length);
        if (field.type == PluginFieldType::kINT32)
            value = *static_cast<int32_t const*>(field.data);
        else
            value = *static_cast<int64_t const*>(field.data);
        std::string error = filterSizeError(value);
        if (!error.empty())
            return error;
        filterSize = static_cast<int32_t>(value);
    }
    return {};
}

template <typename Plugin>
ConvCRFCreator<Plugin>::ConvCRFCreator() noexcept
{
    try {
        // Only filter_size is listed: the ONNX parser passes exactly the listed attributes.
        mFields.emplace_back(kFilterSizeField, nullptr, PluginFieldType::kINT32, 1);
        mFieldCollection.nbFields = static_cast<int32_t>(mFields.size());
        mFieldCollection.fields = mFields.data();
    } catch (...) {
        mFieldCollection = PluginFieldCollection{};
    }
}

template <typename Plugin>
IPluginV3* ConvCRFCreator<Plugin>::createPlugin(char const*, PluginFieldCollection const* fc, TensorRTPhase) noexcept
{
    return guarded<IPluginV3*>("createPlugin", nullptr, [&]() -> IPluginV3* {
        int32_t filterSize = kDefaultFilterSize;
        std::string const error = parseFields(fc, filterSize);
        if (!error.empty()) {
            logError(nullptr, "%s: %s", getPluginName(), error.c_str());
            return nullptr;
        }
        return new Plugin(filterSize);
    });
}

template <typename Plugin>
PluginFieldCollection const* ConvCRFCreator<Plugin>::getFieldNames() noexcept
{
    return &mFieldCollection;
}

template <typename Plugin>
char const* ConvCRFCreator<Plugin>::getPluginName() const noexcept
{
    return Plugin::kName;
}

template <typename Plugin>
char const* ConvCRFCreator<Plugin>::getPluginVersion() const noexcept
{
    return kPluginVersion;
}

template <typename Plugin>
char const* ConvCRFCreator<Plugin>::getPluginNamespace() const noexcept
{
    return kPluginNamespace;
}

template class ConvCRFCreator<ConvCRFKernelPlugin>;
template class ConvCRFCreator<ConvCRFMessagePassingPlugin>;

IPluginCreatorInterface* const* pluginCreators(int32_t& nbCreators) noexcept
{
    // Function-local statics: constructed on first use, never destroyed before TensorRT is
    // done with them (they live until the library is unloaded).
    static ConvCRFKernelCreator kernelCreator;
    static ConvCRFMessagePassingCreator messagePassingCreator;
    static IPluginCreatorInterface* const creators[] = {&kernelCreator, &messagePassingCreator};
    nbCreators = static_cast<int32_t>(sizeof(creators) / sizeof(creators[0]));
    return creators;
}

}  // namespace trt
}  // namespace convcrf
