// convcrfPlugin.h: TensorRT IPluginV3 plugins ConvCRFKernel and ConvCRFMessagePassing.
//
// Thin adapters: shape and field rules live in convcrfPluginLogic.h, arithmetic in the CUDA
// launchers of plugins/cuda/convcrf_cuda.h. Every TensorRT-facing method is noexcept, catches
// everything and reports failures through the TensorRT logger (and the error recorder of the
// execution context when one is attached); nothing aborts the process.
#pragma once

#include "NvInferRuntime.h"
#include "convcrfPluginLogic.h"

#include <cstdint>
#include <string>
#include <vector>

namespace convcrf {
namespace trt {

// Logger handed over by TensorRT through setLoggerFinder() (dynamic library) or by the
// self-registering variant at load time; nullptr until then (messages then go to stderr).
void setLoggerFinder(nvinfer1::ILoggerFinder* finder) noexcept;
// printf-style error (prefixed "[convcrf plugin] ") to the logger and, when given, `recorder`.
// Formats into a fixed buffer: never allocates, never throws (callable from any noexcept path;
// messages longer than the buffer are truncated).
void logError(nvinfer1::IErrorRecorder* recorder, char const* format, ...) noexcept
    __attribute__((format(printf, 2, 3)));
void logWarning(char const* format, ...) noexcept __attribute__((format(printf, 1, 2)));
// Readable name of a TensorRT data type ("FLOAT", "HALF", ...), a static string.
char const* dataTypeName(nvinfer1::DataType type) noexcept;

// Shared implementation of both plugins; the subclasses supply inputs, shapes and the launch.
class ConvCRFPluginBase : public nvinfer1::IPluginV3,
                          public nvinfer1::IPluginV3OneCore,
                          public nvinfer1::IPluginV3OneBuild,
                          public nvinfer1::IPluginV3OneRuntime
{
public:
    explicit ConvCRFPluginBase(int32_t filterSize) noexcept;
    ~ConvCRFPluginBase() override = default;

    int32_t filterSize() const noexcept { return mFilterSize; }

    // IPluginV3
    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;

    // IPluginV3OneCore
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;

    // IPluginV3OneBuild
    int32_t getNbOutputs() const noexcept override { return 1; }
    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
                               nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept override;
    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut,
                                   int32_t nbInputs, int32_t nbOutputs) noexcept override;
    int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
                            nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
                            nvinfer1::DynamicPluginTensorDesc const* outputs,
                            int32_t nbOutputs) const noexcept override;

    // IPluginV3OneRuntime
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs,
                          nvinfer1::PluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

protected:
    // Number of inputs of the op (1 for ConvCRFKernel, 2 for ConvCRFMessagePassing).
    virtual int32_t expectedInputs() const noexcept = 0;
    // "" when the input dims (kUnknownDim for dynamic ones) are acceptable, else the reason.
    virtual std::string checkInputDims(nvinfer1::Dims const* inputs, int32_t nbInputs) const = 0;
    // Name of input `index` in messages ("features", "q", "K").
    virtual char const* inputName(int32_t index) const noexcept = 0;
    // Report a printf-style message for this plugin (prefixed with its name); never allocates.
    void fail(char const* format, ...) const noexcept __attribute__((format(printf, 2, 3)));
    // Validate the number of inputs/outputs; reports and returns false on mismatch.
    bool checkIOCount(int32_t nbInputs, int32_t nbOutputs, char const* method) const noexcept;
    // Launcher status -> TensorRT status (0 ok), reporting failures.
    int32_t launchResult(int32_t status) const noexcept;

    int32_t mFilterSize;
    nvinfer1::IErrorRecorder* mErrorRecorder{nullptr};

private:
    std::vector<nvinfer1::PluginField> mSerializedFields;
    nvinfer1::PluginFieldCollection mSerializedCollection{};
};

// features [N, D, h, w] -> K [N, k*k, h, w].
class ConvCRFKernelPlugin final : public ConvCRFPluginBase
{
public:
    static constexpr char const* kName = kKernelPluginName;
    using ConvCRFPluginBase::ConvCRFPluginBase;
    nvinfer1::IPluginV3* clone() noexcept override;
    char const* getPluginName() const noexcept override;
    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
                            nvinfer1::DimsExprs const* shapeInputs, int32_t nbShapeInputs,
                            nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
                            nvinfer1::IExprBuilder& exprBuilder) noexcept override;
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
                    void const* const* inputs, void* const* outputs, void* workspace,
                    cudaStream_t stream) noexcept override;

protected:
    int32_t expectedInputs() const noexcept override { return 1; }
    char const* inputName(int32_t) const noexcept override { return "features"; }
    std::string checkInputDims(nvinfer1::Dims const* inputs, int32_t nbInputs) const override;
};

// q [N, C, h, w], K [N, k*k, h, w] -> M [N, C, h, w].
class ConvCRFMessagePassingPlugin final : public ConvCRFPluginBase
{
public:
    static constexpr char const* kName = kMessagePassingPluginName;
    using ConvCRFPluginBase::ConvCRFPluginBase;
    nvinfer1::IPluginV3* clone() noexcept override;
    char const* getPluginName() const noexcept override;
    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
                            nvinfer1::DimsExprs const* shapeInputs, int32_t nbShapeInputs,
                            nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
                            nvinfer1::IExprBuilder& exprBuilder) noexcept override;
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
                    void const* const* inputs, void* const* outputs, void* workspace,
                    cudaStream_t stream) noexcept override;

protected:
    int32_t expectedInputs() const noexcept override { return 2; }
    char const* inputName(int32_t index) const noexcept override { return index == 0 ? "q" : "K"; }
    std::string checkInputDims(nvinfer1::Dims const* inputs, int32_t nbInputs) const override;
};

// Creator of either plugin: one field, `filter_size` (default 7), accepted as kINT32 or kINT64
// (ONNX parsers of different TensorRT releases convert an INT attribute to either).
template <typename Plugin>
class ConvCRFCreator final : public nvinfer1::IPluginCreatorV3One
{
public:
    ConvCRFCreator() noexcept;
    nvinfer1::IPluginV3* createPlugin(char const* name, nvinfer1::PluginFieldCollection const* fc,
                                      nvinfer1::TensorRTPhase phase) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override;
    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;

private:
    std::vector<nvinfer1::PluginField> mFields;
    nvinfer1::PluginFieldCollection mFieldCollection{};
};

using ConvCRFKernelCreator = ConvCRFCreator<ConvCRFKernelPlugin>;
using ConvCRFMessagePassingCreator = ConvCRFCreator<ConvCRFMessagePassingPlugin>;

// Parse a creator field collection into a filter size. Returns "" and sets filterSize on
// success (missing field -> default), else the reason. Unknown fields are warned about.
// filter_size may be INT32 or INT64; the value is range-checked before narrowing.
std::string parseFields(nvinfer1::PluginFieldCollection const* fc, int32_t& filterSize);

// The creators exported by getCreators(): process-lifetime singletons.
nvinfer1::IPluginCreatorInterface* const* pluginCreators(int32_t& nbCreators) noexcept;

}  // namespace trt
}  // namespace convcrf
