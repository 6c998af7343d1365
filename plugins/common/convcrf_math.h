// convcrf_math.h: the per-element arithmetic of ConvCRF, shared by every native backend.
//
// Everything here is a `__host__ __device__` inline function with no memory allocation and no
// library calls beyond <cmath>, so the CPU library (plugins/cpu), the CUDA kernels
// (plugins/cuda) and the TensorRT plugin (plugins/tensorrt) compile the very same arithmetic.
// The CPU tests therefore exercise the exact formulas the GPU runs. The op contract these
// functions implement is written down in docs/ops.md.
//
// Layouts are NCHW, contiguous. Inside one image a tensor [C, H, W] is addressed as
// `c * plane + y * W + x` with `plane = H * W`; all indices are int64 so that tensors larger
// than 2^31 elements cannot overflow.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define CONVCRF_HD __host__ __device__ __forceinline__
#else
#define CONVCRF_HD inline
#endif

namespace convcrf {

// Largest filter size any backend accepts. The window has k*k entries per pixel; 31 keeps the
// kernel tensor (k*k channels) and the CUDA shared-memory tile within sane bounds.
constexpr int32_t kMaxFilterSize = 31;

// Status codes shared by the C API of the CPU library and the CUDA launchers.
enum Status : int32_t {
    kSuccess = 0,
    kErrorInvalidFilterSize = 1,   // filter_size even, < 1 or > kMaxFilterSize
    kErrorInvalidShape = 2,        // negative sizes, or sizes that disagree
    kErrorNullPointer = 3,         // non-empty tensor passed as a null pointer
    kErrorInvalidBlur = 4,         // blur < 1
    kErrorCuda = 5,                // a CUDA launch failed (see cudaGetLastError)
    kErrorUnsupported = 6,         // e.g. data type not compiled in
    kErrorNonFinite = 7,           // NaN or infinite values in an input that must be finite
    kErrorSizeOverflow = 8,        // a product of sizes (elements or bytes) overflows int64
    kErrorThreadStart = 9,         // a worker thread could not be started (memory, process limit)
    kErrorIsaUnavailable = 10,     // an instruction set this CPU does not support was asked for
    kErrorOutOfMemory = 11,        // an allocation failed (scratch, or a worker's buffers)
};

// The one table of what each status means, for every front end: the CPU library exports it
// (convcrf_status_message, read by the Python package), the TensorRT plugin and the ONNX
// Runtime custom ops report it. Host-only.
inline const char* statusMessage(int32_t status)
{
    switch (status) {
    case kSuccess: return "success";
    case kErrorInvalidFilterSize: return "invalid filter_size (must be odd and in 1..31)";
    case kErrorInvalidShape: return "invalid or mismatched tensor shapes";
    case kErrorNullPointer: return "null pointer for a non-empty tensor";
    case kErrorInvalidBlur: return "invalid blur (must be >= 1)";
    case kErrorCuda: return "CUDA launch failed";
    case kErrorUnsupported: return "unsupported (a data type or feature this build does not have)";
    case kErrorNonFinite: return "NaN or infinite values in the input";
    case kErrorSizeOverflow: return "tensor sizes too large (a product of the sizes overflows int64)";
    case kErrorThreadStart:
        return "could not start worker threads (memory or process limit); pass fewer threads";
    case kErrorIsaUnavailable: return "this CPU does not support the requested instruction set";
    case kErrorOutOfMemory:
        return "out of memory (a buffer of the kernel could not be allocated); use smaller frames";
    default: return "unknown status";
    }
}

CONVCRF_HD bool isValidFilterSize(int32_t filterSize)
{
    return filterSize >= 1 && filterSize <= kMaxFilterSize && (filterSize % 2) == 1;
}

// Channel of the kernel tensor K that holds offset (dy, dx): K[n, (dy+r)*k + (dx+r), y, x].
CONVCRF_HD int32_t offsetChannel(int32_t dy, int32_t dx, int32_t radius, int32_t filterSize)
{
    return (dy + radius) * filterSize + (dx + radius);
}

CONVCRF_HD bool isInside(int64_t y, int64_t x, int64_t height, int64_t width)
{
    return y >= 0 && y < height && x >= 0 && x < width;
}

// Overlap of a row of `width` pixels with the same row shifted by dx: the x for which both x
// and x + dx are inside [0, width). Loops over [begin, end) need no per-element bounds test,
// which is what lets compilers vectorise them.
CONVCRF_HD void shiftedRange(int64_t width, int32_t dx, int64_t& begin, int64_t& end)
{
    begin = dx < 0 ? -static_cast<int64_t>(dx) : 0;
    end = dx > 0 ? width - dx : width;
    if (end < begin)
        end = begin;
}

// Bit-level helpers of expPolyGeneric, for float and (in CPU code) for the vector type below.
CONVCRF_HD int32_t truncateToInt(float x)
{
    return static_cast<int32_t>(x);
}

CONVCRF_HD float floatFromBits(int32_t bits)
{
#if defined(__CUDA_ARCH__)
    return __int_as_float(bits);
#else
    float value;
    std::memcpy(&value, &bits, sizeof(value));
    return value;
#endif
}

#if !defined(__CUDACC__) && defined(__GNUC__)
// Passing 32-byte vectors by value changes the ABI in files built without AVX; these helpers
// are always inlined, so the warning GCC gives for that is noise.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"
// Eight floats as one value (GCC/Clang vector extension): on AVX2 one register, elsewhere the
// compiler splits it. The CPU kernels run the same templates on it as on single floats.
typedef float FloatVec __attribute__((vector_size(32)));
typedef int32_t IntVec __attribute__((vector_size(32)));
constexpr int kVecLanes = 8;

inline IntVec truncateToInt(FloatVec x)
{
    return __builtin_convertvector(x, IntVec);
}

inline FloatVec floatFromBits(IntVec bits)
{
    return (FloatVec)bits;  // a vector cast reinterprets the bits
}

// Sixteen floats: one register in the CPU library's AVX-512 clone (plugins/cpu/cpu_common.h).
typedef float FloatVec16 __attribute__((vector_size(64)));
typedef int32_t IntVec16 __attribute__((vector_size(64)));

inline IntVec16 truncateToInt(FloatVec16 x)
{
    return __builtin_convertvector(x, IntVec16);
}

inline FloatVec16 floatFromBits(IntVec16 bits)
{
    return (FloatVec16)bits;
}
#pragma GCC diagnostic pop
#endif

// exp(x): Cephes-style range reduction and a degree-6 polynomial (relative error below 2e-7
// on [-87, 88]). No library calls and no branches, so the CPU runs it on vectors of floats and
// the GPU on single floats with identical results. Inputs below -87.3 give ~1e-38 rather than
// 0, which is immaterial for Gaussian weights and softmax. NaN propagates.
// F is float (I = int32_t) or, on the CPU, FloatVec (I = IntVec); `F{} + c` broadcasts c.
template <typename F, typename I>
CONVCRF_HD F expPolyGeneric(F x)
{
    const F lo = F{} + -87.3f, hi = F{} + 88.3f;
    x = x < lo ? lo : x;  // two selects that map to single max/min instructions
    x = x > hi ? hi : x;
    // Round x*log2(e) to the nearest integer with the 1.5*2^23 trick (no floorf: vectorises
    // on plain SSE2).
    const float magic = 12582912.0f;
    F n = (x * 1.44269504088896341f + magic) - magic;
    F f = x - n * 0.693359375f + n * 2.12194440e-4f;
    F p = F{} + 1.9875691500e-4f;
    p = p * f + 1.3981999507e-3f;
    p = p * f + 8.3334519073e-3f;
    p = p * f + 4.1665795894e-2f;
    p = p * f + 1.6666665459e-1f;
    p = p * f + 5.0000001201e-1f;
    p = p * f * f + f + 1.0f;
    I bits = (truncateToInt(n) + 127) << 23;
    return p * floatFromBits(bits);
}

CONVCRF_HD float expPoly(float x)
{
    return expPolyGeneric<float, int32_t>(x);
}

// exp for the accumulation type: the polynomial for float, the library exp for double (the
// double path exists for gradcheck and needs full precision).
template <typename Acc>
CONVCRF_HD Acc accExp(Acc x);

template <>
CONVCRF_HD float accExp<float>(float x)
{
    return expPoly(x);
}

template <>
CONVCRF_HD double accExp<double>(double x)
{
    return exp(x);
}

// Gaussian weight of a squared feature distance: exp(-0.5 * d2).
template <typename Acc>
CONVCRF_HD Acc gaussianWeight(Acc squaredDistance)
{
    return accExp<Acc>(Acc(-0.5) * squaredDistance);
}

// One squared-distance term (F_d(p) - F_d(q))^2 accumulated in Acc.
template <typename T, typename Acc>
CONVCRF_HD Acc squaredDifference(T a, T b)
{
    Acc d = static_cast<Acc>(a) - static_cast<Acc>(b);
    return d * d;
}

// Bilinear upsampling by an integer factor, half-pixel centres (PyTorch align_corners=False,
// ONNX Resize coordinate_transformation_mode="half_pixel"): output index `dst` samples the
// input at (dst + 0.5) / factor - 0.5, clamped at 0, between i0 and i1 with weight lambda on i1.
template <typename Acc>
CONVCRF_HD void upsampleSource(int64_t dst, int32_t factor, int64_t inSize, int64_t& i0,
                               int64_t& i1, Acc& lambda)
{
    Acc src = (static_cast<Acc>(dst) + Acc(0.5)) / static_cast<Acc>(factor) - Acc(0.5);
    if (src < Acc(0))
        src = Acc(0);
    i0 = static_cast<int64_t>(src);
    if (i0 > inSize - 1)
        i0 = inSize - 1;
    i1 = i0 < inSize - 1 ? i0 + 1 : i0;
    lambda = src - static_cast<Acc>(i0);
    if (i1 == i0)
        lambda = Acc(0);
}

// Size after average pooling by `blur` with ceil mode: the last window covers the remainder.
CONVCRF_HD int64_t pooledSize(int64_t size, int32_t blur)
{
    return (size + blur - 1) / blur;
}

// Number of full-resolution pixels that low-resolution index `i` averages along one axis.
CONVCRF_HD int64_t poolCount(int64_t i, int32_t blur, int64_t size)
{
    int64_t end = (i + 1) * blur;
    return (end > size ? size : end) - i * blur;
}

}  // namespace convcrf
