// register.cpp: RegisterCustomOps, the one symbol ONNX Runtime looks up in a custom-op library
// (SessionOptions.register_custom_ops_library in Python, Ort::SessionOptions::
// RegisterCustomOpsLibrary in C++, Triton's model_operations { op_library_filename }).
#include "convcrf_ort_ops.h"

#include <cerrno>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#if defined(_WIN32)
#define CONVCRF_ORT_EXPORT __declspec(dllexport)
#else
#define CONVCRF_ORT_EXPORT __attribute__((visibility("default")))
#endif

namespace convcrf {
namespace ort {
namespace {

// The op domain and its ops for one thread setting. ONNX Runtime keeps pointers to both for the
// lifetime of every session registered with them, which may end after this library's static
// destructors ran (and releasing a domain calls into ONNX Runtime, which may be unloaded by
// then): they are created once per setting and deliberately never freed.
struct Registration {
    std::vector<std::unique_ptr<ConvCRFOp>> ops;
    OrtCustomOpDomain* domain = nullptr;
};

std::mutex registrationsMutex;
std::map<int32_t, Registration*>* registrations = nullptr;

Registration* registrationFor(int32_t threads)
{
    std::lock_guard<std::mutex> lock(registrationsMutex);
    if (registrations == nullptr)
        registrations = new std::map<int32_t, Registration*>();
    auto found = registrations->find(threads);
    if (found != registrations->end())
        return found->second;
    auto registration = std::make_unique<Registration>();
    std::vector<Device> devices{Device::kCpu};
#if defined(CONVCRF_ORT_WITH_CUDA)
    devices.push_back(Device::kCuda);
#endif
    for (Device device : devices)
        for (OpKind kind : {OpKind::kGaussianKernel, OpKind::kMessagePassing})
            for (ONNXTensorElementDataType type :
                 {ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16})
                registration->ops.push_back(std::make_unique<ConvCRFOp>(kind, device, type, threads));
    OrtApi const& api = Ort::GetApi();
    Ort::ThrowOnError(api.CreateCustomOpDomain(kDomain, &registration->domain));
    for (auto const& op : registration->ops)
        Ort::ThrowOnError(api.CustomOpDomain_Add(registration->domain, op.get()));
    Registration* kept = registration.release();
    (*registrations)[threads] = kept;
    return kept;
}

// The session config entry convcrf.num_threads: 0 when absent; an error message when invalid.
std::string readThreads(OrtSessionOptions const* options, int32_t& threads)
{
    OrtApi const& api = Ort::GetApi();
    threads = 0;
    int present = 0;
    OrtStatus* status = api.HasSessionConfigEntry(options, kThreadsConfigKey, &present);
    if (status != nullptr) {
        api.ReleaseStatus(status);
        return {};
    }
    if (!present)
        return {};
    size_t size = 0;
    Ort::ThrowOnError(api.GetSessionConfigEntry(options, kThreadsConfigKey, nullptr, &size));
    std::string value(size, '\0');
    Ort::ThrowOnError(api.GetSessionConfigEntry(options, kThreadsConfigKey, &value[0], &size));
    value.resize(value.find('\0') == std::string::npos ? value.size() : value.find('\0'));
    char* end = nullptr;
    errno = 0;
    long const parsed = std::strtol(value.c_str(), &end, 10);
    if (value.empty() || *end != '\0' || errno != 0 || parsed < 0 || parsed > 4096)
        return std::string("session config entry ") + kThreadsConfigKey + "='" + value +
               "' is not a thread count: use an integer >= 0 (0 = every CPU this process may run on)";
    threads = static_cast<int32_t>(parsed);
    return {};
}

}  // namespace
}  // namespace ort
}  // namespace convcrf

extern "C" CONVCRF_ORT_EXPORT OrtStatus* ORT_API_CALL RegisterCustomOps(OrtSessionOptions* options,
                                                                       OrtApiBase const* apiBase) noexcept
{
    using namespace convcrf::ort;
    if (apiBase == nullptr)
        return nullptr;  // nothing to report through
    OrtApi const* api = apiBase->GetApi(ORT_API_VERSION);
    if (api == nullptr) {
        // An ONNX Runtime older than the headers we were built with: report through its oldest API.
        OrtApi const* oldest = apiBase->GetApi(1);
        std::string const message = std::string("libconvcrf_ort_ops needs ONNX Runtime >= 1.16 (C API version ") +
                                    std::to_string(ORT_API_VERSION) + "); this process runs ONNX Runtime " +
                                    apiBase->GetVersionString();
        return oldest != nullptr ? oldest->CreateStatus(ORT_FAIL, message.c_str()) : nullptr;
    }
    // Every registration hands the same API (one libonnxruntime per process); set it once.
    static std::once_flag initialised;
    std::call_once(initialised, [api] { Ort::InitApi(api); });
    try {
        int32_t threads = 0;
        std::string const error = readThreads(options, threads);
        if (!error.empty())
            return makeStatus("libconvcrf_ort_ops: " + error);
        return api->AddCustomOpDomain(options, registrationFor(threads)->domain);
    } catch (Ort::Exception const& e) {
        return makeStatus(std::string("libconvcrf_ort_ops: cannot register the ConvCRF ops: ") + e.what(),
                          e.GetOrtErrorCode());
    } catch (std::exception const& e) {
        return makeStatus(std::string("libconvcrf_ort_ops: cannot register the ConvCRF ops: ") + e.what(), ORT_FAIL);
    } catch (...) {
        return makeStatus("libconvcrf_ort_ops: cannot register the ConvCRF ops", ORT_FAIL);
    }
}
