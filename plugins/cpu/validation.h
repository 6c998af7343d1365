// validation.h: the size checks every C entry point runs before it allocates or touches memory.
//
// Sizes come from callers (ctypes, C++ users) as int64: each must be >= 0 and every product
// the kernels form (elements of each tensor, its bytes, per-thread scratch) must fit in int64,
// or index arithmetic would wrap and address memory outside the buffers.
#pragma once

#include "../common/convcrf_math.h"

#include <cstdint>
#include <initializer_list>
#include <limits>

namespace convcrf {

// a * b, or false when it overflows int64 (a, b >= 0).
inline bool multiplyChecked(int64_t a, int64_t b, int64_t& out)
{
    if (a != 0 && b > std::numeric_limits<int64_t>::max() / a)
        return false;
    out = a * b;
    return true;
}

// True when the product of `sizes` times `elementBytes` fits in int64 (all sizes >= 0).
inline bool productFits(std::initializer_list<int64_t> sizes, int64_t elementBytes)
{
    int64_t product = elementBytes;
    for (int64_t size : sizes)
        if (!multiplyChecked(product, size, product))
            return false;
    return true;
}

// Shape checks shared by the gaussian-kernel and message-passing entry points: tensors
// [n, channels, h, w] and [n, k*k, h, w] of `elementBytes`, plus the per-thread row scratch of
// (k + 2) rows of (channels + k*k) padded planes.
inline Status checkWindowedShapes(int64_t n, int64_t channels, int64_t h, int64_t w,
                                  int32_t filterSize, int64_t elementBytes)
{
    if (!isValidFilterSize(filterSize))
        return kErrorInvalidFilterSize;
    if (n < 0 || channels < 0 || h < 0 || w < 0)
        return kErrorInvalidShape;
    const int64_t kk = int64_t(filterSize) * filterSize;
    // elementBytes >= 4 below, so after these two checks w + 128 and channels + kk cannot wrap.
    if (!productFits({n, channels, h, w}, elementBytes) || !productFits({channels}, elementBytes) ||
        !productFits({w}, elementBytes))
        return kErrorSizeOverflow;
    const int64_t paddedRow = w + 2 * kMaxFilterSize + 64;  // padding and vector tail
    if (!productFits({n, kk, h, w}, elementBytes) ||
        !productFits({filterSize + 2, channels + kk, paddedRow}, elementBytes))
        return kErrorSizeOverflow;
    return kSuccess;
}

}  // namespace convcrf
