// Host tests of the ConvCRF TensorRT plugins. They need neither a GPU nor libnvinfer: they
// drive the creator and plugin objects directly (and the built .so through dlopen), the way
// TensorRT's builder and runtime would, up to but excluding enqueue.
//
// Usage: convcrf_trt_plugin_tests [case]   (no argument runs every case)
#include "convcrfPlugin.h"
#include "convcrfPluginLogic.h"
#include "convcrf_math.h"

#include <dlfcn.h>

#include "host_test.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <new>
#include <functional>
#include <memory>
#include <string>
#include <vector>

using namespace nvinfer1;
using namespace convcrf::trt;

// ---- allocation failure injection --------------------------------------------------------
// While gFailAllocations is set, every operator new throws std::bad_alloc: a noexcept plugin
// method that builds a std::string then calls std::terminate and the test process dies.
namespace {
bool gFailAllocations = false;
}

void* operator new(std::size_t size)
{
    if (gFailAllocations)
        throw std::bad_alloc();
    if (void* p = std::malloc(size ? size : 1))
        return p;
    throw std::bad_alloc();
}
void* operator new[](std::size_t size)
{
    return ::operator new(size);
}
void operator delete(void* p) noexcept
{
    std::free(p);
}
void operator delete[](void* p) noexcept
{
    std::free(p);
}
void operator delete(void* p, std::size_t) noexcept
{
    std::free(p);
}
void operator delete[](void* p, std::size_t) noexcept
{
    std::free(p);
}

namespace {

struct FailAllocations {
    FailAllocations() { gFailAllocations = true; }
    ~FailAllocations() { gFailAllocations = false; }
};

// Collects what the plugins log, so tests can check that errors are explained.
class CapturingLogger : public ILogger
{
public:
    void log(Severity severity, char const* msg) noexcept override
    {
        if (severity > Severity::kWARNING)
            return;
        std::snprintf(last, sizeof(last), "%s", msg);  // no allocation: usable while allocations fail
        if (!gFailAllocations)
            messages.emplace_back(msg);
    }
    char last[2048] = {};
    bool contains(char const* needle) const
    {
        for (auto const& m : messages)
            if (m.find(needle) != std::string::npos)
                return true;
        return false;
    }
    std::vector<std::string> messages;
};

class FixedLoggerFinder : public ILoggerFinder
{
public:
    explicit FixedLoggerFinder(ILogger* logger) : mLogger(logger) {}
    ILogger* findLogger() noexcept override { return mLogger; }
    ~FixedLoggerFinder() override = default;

private:
    ILogger* mLogger;
};

CapturingLogger gLogger;
FixedLoggerFinder gFinder(&gLogger);

// ---- fake IExprBuilder -----------------------------------------------------------------
// TensorRT's expression classes wrap an implementation pointer (mImpl); the fakes set it to
// small implementations that only know constants, enough for our getOutputShapes.

class FakeExprImpl : public apiv::VDimensionExpr
{
public:
    FakeExprImpl(bool constant, int64_t value) : mConstant(constant), mValue(value) {}
    bool isConstant() const override { return mConstant; }
    int64_t getConstantValue() const override { return mConstant ? mValue : -1; }
    bool isSizeTensor() const override { return false; }

private:
    bool mConstant;
    int64_t mValue;
};

class FakeExpr : public IDimensionExpr
{
public:
    FakeExpr(bool constant, int64_t value) : mFake(constant, value) { mImpl = &mFake; }
    ~FakeExpr() noexcept override = default;

private:
    FakeExprImpl mFake;
};

class FakeBuilderImpl : public apiv::VExprBuilder
{
public:
    IDimensionExpr const* constant(int64_t value) override { return make(true, value); }
    IDimensionExpr const* operation(DimensionOperation, IDimensionExpr const&, IDimensionExpr const&) override
    {
        return make(false, 0);  // not used by our plugins
    }
    IDimensionExpr const* declareSizeTensor(int32_t, IDimensionExpr const&, IDimensionExpr const&) override
    {
        return nullptr;
    }
    IDimensionExpr const* make(bool constant, int64_t value)
    {
        exprs.emplace_back(new FakeExpr(constant, value));
        return exprs.back().get();
    }
    std::deque<std::unique_ptr<FakeExpr>> exprs;
};

class FakeBuilder : public IExprBuilder
{
public:
    FakeBuilder() { mImpl = &impl; }
    ~FakeBuilder() noexcept override = default;
    FakeBuilderImpl impl;
};

// ---- helpers ---------------------------------------------------------------------------

IPluginCreatorV3One* creatorByName(char const* name)
{
    int32_t count = 0;
    IPluginCreatorInterface* const* creators = pluginCreators(count);
    for (int32_t i = 0; i < count; ++i) {
        auto* creator = static_cast<IPluginCreatorV3One*>(creators[i]);
        if (std::strcmp(creator->getPluginName(), name) == 0)
            return creator;
    }
    return nullptr;
}

std::unique_ptr<IPluginV3> create(char const* name, PluginFieldCollection const* fc,
                                  TensorRTPhase phase = TensorRTPhase::kBUILD)
{
    IPluginCreatorV3One* creator = creatorByName(name);
    return std::unique_ptr<IPluginV3>(creator ? creator->createPlugin(name, fc, phase) : nullptr);
}

std::unique_ptr<IPluginV3> createWithFilterSize(char const* name, int32_t filterSize)
{
    PluginField field(kFilterSizeField, &filterSize, PluginFieldType::kINT32, 1);
    PluginFieldCollection fc{1, &field};
    return create(name, &fc);
}

std::unique_ptr<IPluginV3> createWithFilterSize64(char const* name, int64_t filterSize)
{
    PluginField field(kFilterSizeField, &filterSize, PluginFieldType::kINT64, 1);
    PluginFieldCollection fc{1, &field};
    return create(name, &fc);
}

template <typename Capability>
Capability* capability(IPluginV3* plugin, PluginCapabilityType type)
{
    return static_cast<Capability*>(plugin->getCapabilityInterface(type));
}

int32_t serializedFilterSize(IPluginV3* plugin)
{
    auto* runtime = capability<IPluginV3OneRuntime>(plugin, PluginCapabilityType::kRUNTIME);
    PluginFieldCollection const* fc = runtime->getFieldsToSerialize();
    if (!fc || fc->nbFields != 1 || std::strcmp(fc->fields[0].name, kFilterSizeField) != 0)
        return -1;
    return *static_cast<int32_t const*>(fc->fields[0].data);
}

DynamicPluginTensorDesc tensor(DataType type, TensorFormat format, std::vector<int64_t> dims = {1, 4, 8, 8})
{
    DynamicPluginTensorDesc desc{};
    desc.desc.type = type;
    desc.desc.format = format;
    desc.desc.dims.nbDims = static_cast<int32_t>(dims.size());
    for (size_t i = 0; i < dims.size(); ++i)
        desc.desc.dims.d[i] = dims[i];
    desc.min = desc.max = desc.opt = desc.desc.dims;
    return desc;
}

// ---- test cases ------------------------------------------------------------------------

void creator_fields_and_defaults()
{
    int32_t count = 0;
    IPluginCreatorInterface* const* creators = pluginCreators(count);
    EXPECT_EQ(count, 2);
    for (char const* name : {kKernelPluginName, kMessagePassingPluginName}) {
        IPluginCreatorV3One* creator = creatorByName(name);
        REQUIRE(creator != nullptr);
        EXPECT(std::strcmp(creator->getPluginVersion(), "1") == 0);
        EXPECT(std::strcmp(creator->getPluginNamespace(), "") == 0);
        EXPECT(std::strcmp(creator->getInterfaceInfo().kind, "PLUGIN CREATOR_V3ONE") == 0);
        PluginFieldCollection const* fields = creator->getFieldNames();
        REQUIRE(fields != nullptr);
        EXPECT_EQ(fields->nbFields, 1);  // only filter_size: the ONNX parser passes listed names only
        EXPECT(std::strcmp(fields->fields[0].name, "filter_size") == 0);
        EXPECT(fields->fields[0].type == PluginFieldType::kINT32);
        // No fields at all -> default filter size 7.
        PluginFieldCollection empty{0, nullptr};
        std::unique_ptr<IPluginV3> plugin = create(name, &empty);
        REQUIRE(plugin != nullptr);
        EXPECT_EQ(serializedFilterSize(plugin.get()), 7);
        auto* core = capability<IPluginV3OneCore>(plugin.get(), PluginCapabilityType::kCORE);
        EXPECT(std::strcmp(core->getPluginName(), name) == 0);
        EXPECT(std::strcmp(core->getPluginVersion(), "1") == 0);
        EXPECT(std::strcmp(core->getPluginNamespace(), "") == 0);
    }
    EXPECT(creators[0] != creators[1]);
}

void creator_rejects_bad_fields()
{
    for (int32_t bad : {0, 2, 8, 33, -1, 1001}) {
        gLogger.messages.clear();
        EXPECT(createWithFilterSize(kKernelPluginName, bad) == nullptr);
        EXPECT(createWithFilterSize(kMessagePassingPluginName, bad) == nullptr);
        EXPECT(gLogger.contains("filter_size=" ));
        EXPECT(gLogger.contains("must be odd"));
    }
    for (int32_t good : {1, 3, 7, 31})
        EXPECT(createWithFilterSize(kKernelPluginName, good) != nullptr);
    // Wrong type (a FLOAT attribute) and wrong length are rejected with a message.
    gLogger.messages.clear();
    float asFloat = 7.0f;
    PluginField floatField(kFilterSizeField, &asFloat, PluginFieldType::kFLOAT32, 1);
    PluginFieldCollection floatFc{1, &floatField};
    EXPECT(create(kKernelPluginName, &floatFc) == nullptr);
    EXPECT(gLogger.contains("single integer (INT32 or INT64"));
    int32_t pair[2] = {7, 7};
    PluginField arrayField(kFilterSizeField, pair, PluginFieldType::kINT32, 2);
    PluginFieldCollection arrayFc{1, &arrayField};
    EXPECT(create(kMessagePassingPluginName, &arrayFc) == nullptr);
    // Unknown fields are ignored with a warning, not fatal.
    gLogger.messages.clear();
    int32_t five = 5;
    PluginField fields[2] = {PluginField("unknown_thing", &five, PluginFieldType::kINT32, 1),
                             PluginField(kFilterSizeField, &five, PluginFieldType::kINT32, 1)};
    PluginFieldCollection mixed{2, fields};
    std::unique_ptr<IPluginV3> plugin = create(kKernelPluginName, &mixed);
    REQUIRE(plugin != nullptr);
    EXPECT_EQ(serializedFilterSize(plugin.get()), 5);
    EXPECT(gLogger.contains("unknown_thing"));
    // Plain logic function agrees.
    EXPECT(filterSizeError(9).empty());
    EXPECT(!filterSizeError(32).empty());
}

void creator_accepts_int64_filter_size()
{
    // TensorRT's ONNX parser hands an INT attribute over as kINT32 or kINT64 depending on the
    // release: both are accepted, with the same range check.
    for (char const* name : {kKernelPluginName, kMessagePassingPluginName}) {
        for (int64_t good : {int64_t(1), int64_t(7), int64_t(31)}) {
            std::unique_ptr<IPluginV3> plugin = createWithFilterSize64(name, good);
            REQUIRE(plugin != nullptr);
            EXPECT_EQ(serializedFilterSize(plugin.get()), int32_t(good));
        }
        // 2^32 + 7 would read as 7 if narrowed before the check.
        for (int64_t bad : {int64_t(8), int64_t(-7), int64_t(33), (int64_t(1) << 32) + 7}) {
            gLogger.messages.clear();
            EXPECT(createWithFilterSize64(name, bad) == nullptr);
            EXPECT(gLogger.contains("must be odd"));
        }
        int64_t pair[2] = {7, 7};
        PluginField arrayField(kFilterSizeField, pair, PluginFieldType::kINT64, 2);
        PluginFieldCollection arrayFc{1, &arrayField};
        EXPECT(create(name, &arrayFc) == nullptr);
    }
}

void serialization_round_trip()
{
    for (char const* name : {kKernelPluginName, kMessagePassingPluginName}) {
        for (int32_t k : {1, 5, 11, 31}) {
            std::unique_ptr<IPluginV3> built = createWithFilterSize(name, k);
            REQUIRE(built != nullptr);
            auto* runtime = capability<IPluginV3OneRuntime>(built.get(), PluginCapabilityType::kRUNTIME);
            PluginFieldCollection const* fc = runtime->getFieldsToSerialize();
            REQUIRE(fc != nullptr);
            // Exactly what TensorRT stores in the plan, fed back at deserialisation.
            std::unique_ptr<IPluginV3> restored = create(name, fc, TensorRTPhase::kRUNTIME);
            REQUIRE(restored != nullptr);
            EXPECT_EQ(serializedFilterSize(restored.get()), k);
            // Calling it twice rebuilds the collection (no growth, same content).
            PluginFieldCollection const* again = runtime->getFieldsToSerialize();
            EXPECT_EQ(again->nbFields, 1);
        }
    }
}

void supports_format_combination()
{
    std::unique_ptr<IPluginV3> plugin = createWithFilterSize(kMessagePassingPluginName, 3);
    REQUIRE(plugin != nullptr);
    auto* build = capability<IPluginV3OneBuild>(plugin.get(), PluginCapabilityType::kBUILD);
    DataType const types[] = {DataType::kFLOAT, DataType::kHALF, DataType::kINT8, DataType::kINT32,
                              DataType::kBF16};
    TensorFormat const formats[] = {TensorFormat::kLINEAR, TensorFormat::kCHW32, TensorFormat::kHWC};
    int checked = 0;
    for (DataType t0 : types) {
        for (DataType t : types) {
            for (TensorFormat f : formats) {
                for (int32_t pos = 0; pos < 3; ++pos) {
                    DynamicPluginTensorDesc io[3] = {tensor(t0, TensorFormat::kLINEAR), tensor(t0, TensorFormat::kLINEAR),
                                                     tensor(t0, TensorFormat::kLINEAR)};
                    io[pos] = tensor(pos == 0 ? t0 : t, f);
                    bool const t0ok = t0 == DataType::kFLOAT || t0 == DataType::kHALF;
                    bool expected = f == TensorFormat::kLINEAR && t0ok && (pos == 0 || t == t0);
                    if (pos == 0)
                        expected = f == TensorFormat::kLINEAR && t0ok;
                    EXPECT_EQ(build->supportsFormatCombination(pos, io, 2, 1), expected);
                    ++checked;
                }
            }
        }
    }
    EXPECT(checked == 225);
    DynamicPluginTensorDesc io[3] = {tensor(DataType::kFLOAT, TensorFormat::kLINEAR),
                                     tensor(DataType::kFLOAT, TensorFormat::kLINEAR),
                                     tensor(DataType::kFLOAT, TensorFormat::kLINEAR)};
    EXPECT(!build->supportsFormatCombination(3, io, 2, 1));   // out of range
    EXPECT(!build->supportsFormatCombination(0, io, 1, 1));   // wrong input count
    // The kernel plugin has one input and one output.
    std::unique_ptr<IPluginV3> kernel = createWithFilterSize(kKernelPluginName, 3);
    auto* kernelBuild = capability<IPluginV3OneBuild>(kernel.get(), PluginCapabilityType::kBUILD);
    EXPECT(kernelBuild->supportsFormatCombination(1, io, 1, 1));
    io[1] = tensor(DataType::kHALF, TensorFormat::kLINEAR);
    EXPECT(!kernelBuild->supportsFormatCombination(1, io, 1, 1));
}

void output_data_types()
{
    for (char const* name : {kKernelPluginName, kMessagePassingPluginName}) {
        std::unique_ptr<IPluginV3> plugin = createWithFilterSize(name, 7);
        REQUIRE(plugin != nullptr);
        auto* build = capability<IPluginV3OneBuild>(plugin.get(), PluginCapabilityType::kBUILD);
        int32_t const nbInputs = std::strcmp(name, kKernelPluginName) == 0 ? 1 : 2;
        EXPECT_EQ(build->getNbOutputs(), 1);
        for (DataType in : {DataType::kFLOAT, DataType::kHALF}) {
            DataType inputs[2] = {in, in};
            DataType out = DataType::kINT8;
            EXPECT_EQ(build->getOutputDataTypes(&out, 1, inputs, nbInputs), 0);
            EXPECT(out == in);
        }
        DataType inputs[2] = {DataType::kINT32, DataType::kINT32};
        DataType out = DataType::kFLOAT;
        EXPECT(build->getOutputDataTypes(&out, 1, inputs, nbInputs) != 0);
        EXPECT(build->getOutputDataTypes(&out, 1, inputs, nbInputs + 1) != 0);
    }
}

void output_data_types_q_and_k_share_a_type()
{
    // q fp32 with K fp16 (or the reverse) is refused at build time with both types named,
    // instead of the kernels reading K with q's element type.
    std::unique_ptr<IPluginV3> plugin = createWithFilterSize(kMessagePassingPluginName, 7);
    REQUIRE(plugin != nullptr);
    auto* build = capability<IPluginV3OneBuild>(plugin.get(), PluginCapabilityType::kBUILD);
    DataType const pairs[2][2] = {{DataType::kFLOAT, DataType::kHALF}, {DataType::kHALF, DataType::kFLOAT}};
    for (auto const& inputs : pairs) {
        DataType out = DataType::kINT8;
        gLogger.messages.clear();
        EXPECT(build->getOutputDataTypes(&out, 1, inputs, 2) != 0);
        EXPECT(gLogger.contains("'q'") && gLogger.contains("'K'"));
        EXPECT(gLogger.contains("must share one type"));
        EXPECT(gLogger.contains("FLOAT") && gLogger.contains("HALF"));
    }
}

void noexcept_paths_survive_allocation_failure()
{
    // Every error path of a noexcept TensorRT callback must report and return while no memory
    // can be allocated (a std::string built there would throw and terminate the process).
    std::unique_ptr<IPluginV3> kernel = createWithFilterSize(kKernelPluginName, 5);
    std::unique_ptr<IPluginV3> mp = createWithFilterSize(kMessagePassingPluginName, 5);
    REQUIRE(kernel && mp);
    auto* mpBuild = capability<IPluginV3OneBuild>(mp.get(), PluginCapabilityType::kBUILD);
    auto* mpRuntime = capability<IPluginV3OneRuntime>(mp.get(), PluginCapabilityType::kRUNTIME);
    auto* kernelRuntime = capability<IPluginV3OneRuntime>(kernel.get(), PluginCapabilityType::kRUNTIME);
    auto* kernelCore = capability<IPluginV3OneCore>(kernel.get(), PluginCapabilityType::kCORE);
    IPluginCreatorV3One* creator = creatorByName(kKernelPluginName);
    REQUIRE(creator != nullptr);
    DynamicPluginTensorDesc in[2] = {tensor(DataType::kFLOAT, TensorFormat::kLINEAR, {1, 21, 8, 8}),
                                     tensor(DataType::kFLOAT, TensorFormat::kLINEAR, {1, 9, 8, 8})};
    DynamicPluginTensorDesc out = in[0];
    PluginTensorDesc rank3 = tensor(DataType::kFLOAT, TensorFormat::kLINEAR, {1, 2, 3}).desc;
    PluginTensorDesc q = tensor(DataType::kFLOAT, TensorFormat::kLINEAR, {1, 3, 8, 8}).desc;
    PluginTensorDesc mpIn[2] = {q, tensor(DataType::kFLOAT, TensorFormat::kLINEAR, {1, 25, 8, 8}).desc};
    void const* inputs[2] = {nullptr, nullptr};
    void* outputs[1] = {nullptr};
    int32_t bad = 4;
    PluginField badField(kFilterSizeField, &bad, PluginFieldType::kINT32, 1);
    PluginFieldCollection badFc{1, &badField};
    DataType mixed[2] = {DataType::kFLOAT, DataType::kHALF};
    DataType ints[2] = {DataType::kINT32, DataType::kINT32};
    DataType outType = DataType::kFLOAT;
    {
        FailAllocations failing;
        EXPECT(mpBuild->getOutputDataTypes(&outType, 1, mixed, 2) != 0);
        EXPECT(std::strstr(gLogger.last, "must share one type") != nullptr);
        EXPECT(mpBuild->getOutputDataTypes(&outType, 1, ints, 2) != 0);
        EXPECT(std::strstr(gLogger.last, "INT32") != nullptr);
        EXPECT(mpBuild->getOutputDataTypes(&outType, 1, ints, 3) != 0);  // wrong input count
        EXPECT(std::strstr(gLogger.last, "expected 2 input(s)") != nullptr);
        EXPECT(mpBuild->configurePlugin(in, 2, &out, 1) != 0);  // K channels 9 != 25
        EXPECT(kernelRuntime->enqueue(nullptr, nullptr, nullptr, nullptr, nullptr, nullptr) != 0);
        EXPECT(std::strstr(gLogger.last, "null tensor descriptors") != nullptr);
        EXPECT(kernelRuntime->enqueue(&rank3, &rank3, inputs, outputs, nullptr, nullptr) != 0);
        EXPECT(mpRuntime->enqueue(mpIn, &q, inputs, outputs, nullptr, nullptr) != 0);  // launcher refuses
        EXPECT(std::strstr(gLogger.last, "null pointer for a non-empty tensor") != nullptr);
        EXPECT(mpRuntime->onShapeChange(&rank3, 1, &rank3, 1) != 0);
        EXPECT(creator->createPlugin("node", &badFc, TensorRTPhase::kBUILD) == nullptr);
        EXPECT(kernel->clone() == nullptr);
        EXPECT(std::strcmp(kernelCore->getPluginName(), kKernelPluginName) == 0);
    }
    // Allocation works again: the same calls still succeed where they should.
    std::unique_ptr<IPluginV3> copy(kernel->clone());
    EXPECT(copy != nullptr);
}

void output_shapes_kernel()
{
    for (int32_t k : {3, 7, 11}) {
        std::unique_ptr<IPluginV3> plugin = createWithFilterSize(kKernelPluginName, k);
        REQUIRE(plugin != nullptr);
        auto* build = capability<IPluginV3OneBuild>(plugin.get(), PluginCapabilityType::kBUILD);
        FakeBuilder builder;
        // Input features [N?, 5, h?, w?]: N, h, w dynamic (non-constant expressions).
        DimsExprs in{};
        in.nbDims = 4;
        in.d[0] = builder.impl.make(false, 0);
        in.d[1] = builder.impl.make(true, 5);
        in.d[2] = builder.impl.make(false, 0);
        in.d[3] = builder.impl.make(false, 0);
        DimsExprs out{};
        EXPECT_EQ(build->getOutputShapes(&in, 1, nullptr, 0, &out, 1, builder), 0);
        EXPECT_EQ(out.nbDims, 4);
        EXPECT(out.d[0] == in.d[0]);
        EXPECT(out.d[2] == in.d[2]);
        EXPECT(out.d[3] == in.d[3]);
        REQUIRE(out.d[1] != nullptr);
        EXPECT(out.d[1]->isConstant());
        EXPECT_EQ(out.d[1]->getConstantValue(), int64_t(k) * k);
        // Rank 3 input is rejected.
        in.nbDims = 3;
        EXPECT(build->getOutputShapes(&in, 1, nullptr, 0, &out, 1, builder) != 0);
    }
}

void output_shapes_message_passing()
{
    std::unique_ptr<IPluginV3> plugin = createWithFilterSize(kMessagePassingPluginName, 5);
    REQUIRE(plugin != nullptr);
    auto* build = capability<IPluginV3OneBuild>(plugin.get(), PluginCapabilityType::kBUILD);
    FakeBuilder builder;
    DimsExprs in[2]{};
    for (auto& dims : in)
        dims.nbDims = 4;
    int64_t const q[4] = {2, 21, 40, 60}, kernel[4] = {2, 25, 40, 60};
    for (int i = 0; i < 4; ++i) {
        in[0].d[i] = builder.constant(q[i]);
        in[1].d[i] = builder.constant(kernel[i]);
    }
    DimsExprs out{};
    EXPECT_EQ(build->getOutputShapes(in, 2, nullptr, 0, &out, 1, builder), 0);
    EXPECT_EQ(out.nbDims, 4);
    for (int i = 0; i < 4; ++i)
        EXPECT_EQ(out.d[i]->getConstantValue(), q[i]);
    EXPECT(build->getOutputShapes(in, 1, nullptr, 0, &out, 1, builder) != 0);
}

void shape_validation()
{
    // Plain logic: K channels must be k*k; N/h/w must agree; unknown dims are not compared.
    int64_t const q[4] = {1, 21, 32, 48};
    int64_t kernel[4] = {1, 49, 32, 48};
    EXPECT(checkMessagePassingInputs(q, 4, kernel, 4, 7).empty());
    std::string error = checkMessagePassingInputs(q, 4, kernel, 4, 5);
    EXPECT(error.find("needs k*k=25") != std::string::npos);
    kernel[2] = 31;
    error = checkMessagePassingInputs(q, 4, kernel, 4, 7);
    EXPECT(error.find("disagree in h") != std::string::npos);
    kernel[2] = kUnknownDim;
    EXPECT(checkMessagePassingInputs(q, 4, kernel, 4, 7).empty());
    EXPECT(!checkMessagePassingInputs(q, 3, kernel, 4, 7).empty());
    int64_t const features[4] = {1, 5, -1, -1};
    EXPECT(checkKernelInput(features, 4).empty());
    EXPECT(!checkKernelInput(features, 2).empty());

    // Through the plugin: configurePlugin (build) and onShapeChange (runtime) reject mismatches
    // and say why in the log.
    std::unique_ptr<IPluginV3> plugin = createWithFilterSize(kMessagePassingPluginName, 7);
    REQUIRE(plugin != nullptr);
    auto* build = capability<IPluginV3OneBuild>(plugin.get(), PluginCapabilityType::kBUILD);
    auto* runtime = capability<IPluginV3OneRuntime>(plugin.get(), PluginCapabilityType::kRUNTIME);
    DynamicPluginTensorDesc in[2] = {tensor(DataType::kFLOAT, TensorFormat::kLINEAR, {-1, 21, -1, -1}),
                                     tensor(DataType::kFLOAT, TensorFormat::kLINEAR, {-1, 49, -1, -1})};
    DynamicPluginTensorDesc out = tensor(DataType::kFLOAT, TensorFormat::kLINEAR, {-1, 21, -1, -1});
    EXPECT_EQ(build->configurePlugin(in, 2, &out, 1), 0);
    in[1] = tensor(DataType::kFLOAT, TensorFormat::kLINEAR, {-1, 25, -1, -1});
    gLogger.messages.clear();
    EXPECT(build->configurePlugin(in, 2, &out, 1) != 0);
    EXPECT(gLogger.contains("ConvCRFMessagePassing"));
    EXPECT(gLogger.contains("needs k*k=49"));

    PluginTensorDesc rin[2] = {tensor(DataType::kFLOAT, TensorFormat::kLINEAR, {2, 21, 16, 16}).desc,
                               tensor(DataType::kFLOAT, TensorFormat::kLINEAR, {2, 49, 16, 16}).desc};
    PluginTensorDesc rout = rin[0];
    EXPECT_EQ(runtime->onShapeChange(rin, 2, &rout, 1), 0);
    rin[1].dims.d[0] = 1;
    gLogger.messages.clear();
    EXPECT(runtime->onShapeChange(rin, 2, &rout, 1) != 0);
    EXPECT(gLogger.contains("disagree in N"));
    EXPECT(runtime->onShapeChange(rin, 1, &rout, 1) != 0);
    EXPECT_EQ(build->getWorkspaceSize(in, 2, &out, 1), size_t(0));
}

// Records errors reported through the execution context.
class CountingRecorder : public IErrorRecorder
{
public:
    int32_t getNbErrors() const noexcept override { return static_cast<int32_t>(errors.size()); }
    ErrorCode getErrorCode(int32_t) const noexcept override { return ErrorCode::kINVALID_ARGUMENT; }
    ErrorDesc getErrorDesc(int32_t i) const noexcept override { return errors[i].c_str(); }
    bool hasOverflowed() const noexcept override { return false; }
    void clear() noexcept override { errors.clear(); }
    bool reportError(ErrorCode, ErrorDesc desc) noexcept override
    {
        errors.emplace_back(desc);
        return true;
    }
    RefCount incRefCount() noexcept override { return 1; }
    RefCount decRefCount() noexcept override { return 0; }
    std::vector<std::string> errors;
};

class FakeResourceContext : public IPluginResourceContext
{
public:
    explicit FakeResourceContext(IErrorRecorder* recorder) : mRecorder(recorder) {}
    IGpuAllocator* getGpuAllocator() const noexcept override { return nullptr; }
    IErrorRecorder* getErrorRecorder() const noexcept override { return mRecorder; }
    ~FakeResourceContext() noexcept override = default;

private:
    IErrorRecorder* mRecorder;
};

void clone_attach_and_delete()
{
    CountingRecorder recorder;
    FakeResourceContext context(&recorder);
    for (char const* name : {kKernelPluginName, kMessagePassingPluginName}) {
        IPluginV3* original = createWithFilterSize(name, 9).release();
        REQUIRE(original != nullptr);
        IPluginV3* copy = original->clone();
        REQUIRE(copy != nullptr);
        EXPECT(copy != original);
        // The parser deletes its object right after addPluginV3: the clone must survive that.
        delete original;
        EXPECT_EQ(serializedFilterSize(copy), 9);
        auto* runtime = capability<IPluginV3OneRuntime>(copy, PluginCapabilityType::kRUNTIME);
        IPluginV3* attached = runtime->attachToContext(&context);
        REQUIRE(attached != nullptr);
        EXPECT(attached != copy);
        delete copy;
        EXPECT_EQ(serializedFilterSize(attached), 9);
        // Errors of the attached plugin reach the context's error recorder.
        auto* attachedRuntime = capability<IPluginV3OneRuntime>(attached, PluginCapabilityType::kRUNTIME);
        recorder.clear();
        PluginTensorDesc bad = tensor(DataType::kFLOAT, TensorFormat::kLINEAR, {1, 2, 3}).desc;
        PluginTensorDesc ins[2] = {bad, bad};
        EXPECT(attachedRuntime->onShapeChange(ins, std::strcmp(name, kKernelPluginName) == 0 ? 1 : 2, &bad, 1) != 0);
        EXPECT(recorder.getNbErrors() >= 1);
        delete attached;  // deletion through IPluginV3* (virtual destructor)
    }
}

void capability_interfaces()
{
    std::unique_ptr<IPluginV3> plugin = createWithFilterSize(kKernelPluginName, 7);
    REQUIRE(plugin != nullptr);
    IPluginCapability* core = plugin->getCapabilityInterface(PluginCapabilityType::kCORE);
    IPluginCapability* build = plugin->getCapabilityInterface(PluginCapabilityType::kBUILD);
    IPluginCapability* runtime = plugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME);
    REQUIRE(core && build && runtime);
    EXPECT(std::strcmp(core->getInterfaceInfo().kind, "PLUGIN_V3ONE_CORE") == 0);
    EXPECT(std::strcmp(build->getInterfaceInfo().kind, "PLUGIN_V3ONE_BUILD") == 0);
    EXPECT(std::strcmp(runtime->getInterfaceInfo().kind, "PLUGIN_V3ONE_RUNTIME") == 0);
    EXPECT(plugin->getCapabilityInterface(static_cast<PluginCapabilityType>(42)) == nullptr);
}

void dlopen_get_creators()
{
    void* handle = dlopen(CONVCRF_TRT_PLUGIN_PATH, RTLD_NOW | RTLD_LOCAL);
    if (!handle)
        std::fprintf(stderr, "  dlopen(%s): %s\n", CONVCRF_TRT_PLUGIN_PATH, dlerror());
    REQUIRE(handle != nullptr);
    using GetCreators = IPluginCreatorInterface* const* (*)(int32_t&);
    using SetLoggerFinder = void (*)(ILoggerFinder*);
    auto getCreators = reinterpret_cast<GetCreators>(dlsym(handle, "getCreators"));
    auto setFinder = reinterpret_cast<SetLoggerFinder>(dlsym(handle, "setLoggerFinder"));
    REQUIRE(getCreators != nullptr);
    REQUIRE(setFinder != nullptr);
    // Internal symbols stay hidden (the kernels' launchers are linked in statically).
    EXPECT(dlsym(handle, "convcrf_cuda_message_passing") == nullptr);
    setFinder(&gFinder);
    int32_t count = 0;
    IPluginCreatorInterface* const* creators = getCreators(count);
    REQUIRE(creators != nullptr);
    EXPECT_EQ(count, 2);
    std::vector<std::string> names;
    for (int32_t i = 0; i < count; ++i) {
        auto* creator = static_cast<IPluginCreatorV3One*>(creators[i]);
        names.emplace_back(creator->getPluginName());
        int32_t k = 3;
        PluginField field(kFilterSizeField, &k, PluginFieldType::kINT32, 1);
        PluginFieldCollection fc{1, &field};
        IPluginV3* plugin = creator->createPlugin("node", &fc, TensorRTPhase::kBUILD);
        EXPECT(plugin != nullptr);
        delete plugin;
        // The library's logger finder receives errors.
        gLogger.messages.clear();
        int32_t bad = 4;
        PluginField badField(kFilterSizeField, &bad, PluginFieldType::kINT32, 1);
        PluginFieldCollection badFc{1, &badField};
        EXPECT(creator->createPlugin("node", &badFc, TensorRTPhase::kBUILD) == nullptr);
        EXPECT(gLogger.contains("filter_size=4"));
    }
    EXPECT(names.size() == 2 && names[0] == kKernelPluginName && names[1] == kMessagePassingPluginName);
    setFinder(nullptr);
    EXPECT_EQ(dlclose(handle), 0);
}

void enqueue_without_launch()
{
    // Paths of enqueue that return before any CUDA call, so they run without a GPU: bad
    // descriptors are reported (never abort), empty tensors succeed without a launch.
    std::unique_ptr<IPluginV3> kernel = createWithFilterSize(kKernelPluginName, 5);
    std::unique_ptr<IPluginV3> mp = createWithFilterSize(kMessagePassingPluginName, 5);
    REQUIRE(kernel && mp);
    auto* kernelRuntime = capability<IPluginV3OneRuntime>(kernel.get(), PluginCapabilityType::kRUNTIME);
    auto* mpRuntime = capability<IPluginV3OneRuntime>(mp.get(), PluginCapabilityType::kRUNTIME);
    gLogger.messages.clear();
    EXPECT(kernelRuntime->enqueue(nullptr, nullptr, nullptr, nullptr, nullptr, nullptr) != 0);
    EXPECT(gLogger.contains("null tensor descriptors"));

    PluginTensorDesc rank3 = tensor(DataType::kFLOAT, TensorFormat::kLINEAR, {1, 2, 3}).desc;
    void const* inputs[2] = {nullptr, nullptr};
    void* outputs[1] = {nullptr};
    gLogger.messages.clear();
    EXPECT(kernelRuntime->enqueue(&rank3, &rank3, inputs, outputs, nullptr, nullptr) != 0);
    EXPECT(gLogger.contains("must be 4-D"));

    // N = 0: nothing to compute, success, no CUDA call (null pointers are never touched).
    PluginTensorDesc features = tensor(DataType::kHALF, TensorFormat::kLINEAR, {0, 5, 16, 16}).desc;
    PluginTensorDesc k = tensor(DataType::kHALF, TensorFormat::kLINEAR, {0, 25, 16, 16}).desc;
    EXPECT_EQ(kernelRuntime->enqueue(&features, &k, inputs, outputs, nullptr, nullptr), 0);
    PluginTensorDesc q = tensor(DataType::kFLOAT, TensorFormat::kLINEAR, {2, 0, 16, 16}).desc;
    PluginTensorDesc mpIn[2] = {q, tensor(DataType::kFLOAT, TensorFormat::kLINEAR, {2, 25, 16, 16}).desc};
    EXPECT_EQ(mpRuntime->enqueue(mpIn, &q, inputs, outputs, nullptr, nullptr), 0);
    // Non-empty tensors with null device pointers: the launcher refuses, the plugin reports.
    mpIn[0].dims.d[1] = 3;
    gLogger.messages.clear();
    EXPECT(mpRuntime->enqueue(mpIn, &mpIn[0], inputs, outputs, nullptr, nullptr) != 0);
    EXPECT(gLogger.contains("null pointer for a non-empty tensor"));
}

const convcrf::test::Case kCases[] = {
    {"creator_fields_and_defaults", creator_fields_and_defaults},
    {"creator_rejects_bad_fields", creator_rejects_bad_fields},
    {"creator_accepts_int64_filter_size", creator_accepts_int64_filter_size},
    {"serialization_round_trip", serialization_round_trip},
    {"supports_format_combination", supports_format_combination},
    {"output_data_types", output_data_types},
    {"output_data_types_q_and_k_share_a_type", output_data_types_q_and_k_share_a_type},
    {"noexcept_paths_survive_allocation_failure", noexcept_paths_survive_allocation_failure},
    {"output_shapes_kernel", output_shapes_kernel},
    {"output_shapes_message_passing", output_shapes_message_passing},
    {"shape_validation", shape_validation},
    {"clone_attach_and_delete", clone_attach_and_delete},
    {"capability_interfaces", capability_interfaces},
    {"dlopen_get_creators", dlopen_get_creators},
    {"enqueue_without_launch", enqueue_without_launch},
};

}  // namespace

int main(int argc, char** argv)
{
    setLoggerFinder(&gFinder);  // the statically linked copy's logger (dlopen has its own)
    return convcrf::test::run(kCases, argc, argv);
}
