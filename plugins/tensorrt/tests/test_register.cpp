// Host test of the self-registering variant (convcrfPluginRegister.cpp) without libnvinfer:
// this file supplies the two libnvinfer entry points the variant uses, getPluginRegistry() and
// getLogger(), with fakes, so the test sees what TensorRT would see when the library loads.
//
// Usage: convcrf_trt_register_tests [case]
#include "convcrfPlugin.h"
#include "convcrfPluginLogic.h"

#include "host_test.h"

#include <cstring>
#include <string>
#include <vector>

using namespace nvinfer1;

namespace {

class CapturingLogger : public ILogger
{
public:
    void log(Severity severity, char const* msg) noexcept override
    {
        if (severity <= Severity::kWARNING)
            messages.emplace_back(msg);
    }
    bool contains(char const* needle) const
    {
        for (auto const& m : messages)
            if (m.find(needle) != std::string::npos)
                return true;
        return false;
    }
    std::vector<std::string> messages;
};

// Records registrations; every other method is unused by the variant.
class FakeRegistry : public IPluginRegistry
{
public:
    bool registerCreator(IPluginCreatorInterface& creator, AsciiChar const* const) noexcept override
    {
        creators.push_back(&creator);
        return true;
    }
    IPluginCreatorInterface* const* getAllCreators(int32_t* const n) const noexcept override
    {
        *n = static_cast<int32_t>(creators.size());
        return creators.data();
    }
    IPluginCreatorInterface* getCreator(AsciiChar const* const, AsciiChar const* const,
                                        AsciiChar const* const) noexcept override
    {
        return nullptr;
    }
    bool deregisterCreator(IPluginCreatorInterface const&) noexcept override { return false; }
    void setErrorRecorder(IErrorRecorder* const) noexcept override {}
    IErrorRecorder* getErrorRecorder() const noexcept override { return nullptr; }
    bool isParentSearchEnabled() const override { return false; }
    void setParentSearchEnabled(bool const) override {}
    PluginLibraryHandle loadLibrary(AsciiChar const*) noexcept override { return nullptr; }
    void deregisterLibrary(PluginLibraryHandle) noexcept override {}
    IPluginResource* acquirePluginResource(AsciiChar const*, IPluginResource*) noexcept override { return nullptr; }
    int32_t releasePluginResource(AsciiChar const*) noexcept override { return 0; }
#if NV_TENSORRT_MAJOR < 11
    // TensorRT 10: the deprecated IPluginCreator (V2) overloads are still pure virtual.
    bool registerCreator(IPluginCreator&, AsciiChar const* const) noexcept override { return false; }
    IPluginCreator* const* getPluginCreatorList(int32_t* const n) const noexcept override
    {
        *n = 0;
        return nullptr;
    }
    IPluginCreator* getPluginCreator(AsciiChar const* const, AsciiChar const* const, AsciiChar const* const) noexcept override
    {
        return nullptr;
    }
    bool deregisterCreator(IPluginCreator const&) noexcept override { return false; }
#else
    IPluginCreatorInterface* const* getAllCreatorsRecursive(int32_t* const n) noexcept override
    {
        return getAllCreators(n);
    }
#endif
    std::vector<IPluginCreatorInterface*> creators;
};

FakeRegistry& registry()
{
    static FakeRegistry instance;  // constructed on first use: registration runs at load time
    return instance;
}

CapturingLogger& tensorrtLogger()
{
    static CapturingLogger instance;
    return instance;
}

IPluginCreatorV3One* registeredCreator(char const* name)
{
    for (IPluginCreatorInterface* creator : registry().creators) {
        auto* v3 = static_cast<IPluginCreatorV3One*>(creator);
        if (std::strcmp(v3->getPluginName(), name) == 0)
            return v3;
    }
    return nullptr;
}

void registers_both_creators()
{
    EXPECT_EQ(registry().creators.size(), size_t(2));
    EXPECT(registeredCreator(convcrf::trt::kKernelPluginName) != nullptr);
    EXPECT(registeredCreator(convcrf::trt::kMessagePassingPluginName) != nullptr);
}

void errors_reach_the_tensorrt_logger()
{
    // TensorRT never calls setLoggerFinder on this variant: its messages must still reach the
    // logger of the application's TensorRT (getLogger()), not stderr.
    for (char const* name : {convcrf::trt::kKernelPluginName, convcrf::trt::kMessagePassingPluginName}) {
        IPluginCreatorV3One* creator = registeredCreator(name);
        REQUIRE(creator != nullptr);
        tensorrtLogger().messages.clear();
        int32_t bad = 4;
        PluginField field(convcrf::trt::kFilterSizeField, &bad, PluginFieldType::kINT32, 1);
        PluginFieldCollection fc{1, &field};
        EXPECT(creator->createPlugin("node", &fc, TensorRTPhase::kBUILD) == nullptr);
        EXPECT(tensorrtLogger().contains("filter_size=4"));
        EXPECT(tensorrtLogger().contains(name));
    }
}

const convcrf::test::Case kCases[] = {
    {"registers_both_creators", registers_both_creators},
    {"errors_reach_the_tensorrt_logger", errors_reach_the_tensorrt_logger},
};

}  // namespace

extern "C" IPluginRegistry* getPluginRegistry() noexcept
{
    return &registry();
}

extern "C" ILogger* getLogger() noexcept
{
    return &tensorrtLogger();
}

int main(int argc, char** argv)
{
    return convcrf::test::run(kCases, argc, argv);
}
