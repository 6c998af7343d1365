// row_buffers.h: zero-padded row copies, the access pattern every windowed kernel shares.
//
// A windowed kernel reads, for output row y, the rows y-r..y+r of a [C, H, W] tensor shifted by
// dx in -r..r. A padded copy of a row ([C][paddedStride] with the row at offset `pad` and zeros
// around it and up to the vector-rounded width) lets the inner loops run over whole vectors
// with no bounds test: out-of-image neighbours read zeros, which the op contract asks for.
// Each thread keeps a ring of the last rows it padded, so consecutive output rows reuse them
// (one copy per input row per chunk of rows instead of one per window position).
#pragma once

#include "cpu_common.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

namespace convcrf {

// Width bookkeeping of one call: `vectorWidth` rounds w up to whole register blocks;
// `paddedStride` adds `pad` zeros on each side.
struct RowGeometry {
    int64_t channels = 0, h = 0, w = 0;
    int64_t pad = 0;           // zeros left of x = 0 (the window radius)
    int64_t vectorWidth = 0;   // w rounded up to the register block
    int64_t paddedStride = 0;  // vectorWidth + 2 * pad: one padded channel row
};

inline RowGeometry makeRowGeometry(int64_t channels, int64_t h, int64_t w, int64_t pad,
                                   int64_t block)
{
    RowGeometry g;
    g.channels = channels;
    g.h = h;
    g.w = w;
    g.pad = pad;
    g.vectorWidth = roundUp(std::max<int64_t>(w, 1), block);
    g.paddedStride = g.vectorWidth + 2 * pad;
    return g;
}

// Ring of padded rows of one tensor ([N, channels, h, w]), keyed by (image, row). The slots
// start 64-byte aligned: with `pad` and `paddedStride` multiples of 16 floats, element x of a
// row is 64-byte aligned whenever x is a multiple of 16.
class PaddedRowRing {
public:
    void reset(const RowGeometry& geo, int64_t slots)
    {
        tags_.assign(static_cast<size_t>(slots), -1);
        if (geo.channels == geo_.channels && geo.w == geo_.w && geo.pad == geo_.pad &&
            geo.paddedStride == geo_.paddedStride && slots == slots_) {
            geo_ = geo;  // same layout: the padding is still zero (rows only write [pad, pad+w))
            return;
        }
        geo_ = geo;
        slots_ = slots;
        slotSize_ = geo.channels * geo.paddedStride;
        storage_.assign(static_cast<size_t>(slots * slotSize_ + kAlignFloats), 0.0f);
        const uintptr_t address = reinterpret_cast<uintptr_t>(storage_.data());
        const uintptr_t aligned = (address + 63) & ~uintptr_t(63);
        base_ = storage_.data() + (aligned - address) / sizeof(float);
    }

    // Channel 0 of row `row` of image `image`, padded: element x of channel c is at
    // result[c * paddedStride + pad + x], zeros for x < 0 and x >= w (up to the padding).
    const float* row(const float* tensor, int64_t image, int64_t row)
    {
        const int64_t tag = image * geo_.h + row;
        const int64_t slot = row % static_cast<int64_t>(tags_.size());
        float* out = base_ + slot * slotSize_;
        if (tags_[static_cast<size_t>(slot)] == tag)
            return out;
        const float* src = tensor + (image * geo_.channels * geo_.h + row) * geo_.w;
        const int64_t plane = geo_.h * geo_.w;
        for (int64_t c = 0; c < geo_.channels; ++c)  // the padding stays zero from reset()
            std::memcpy(out + c * geo_.paddedStride + geo_.pad, src + c * plane,
                        static_cast<size_t>(geo_.w) * sizeof(float));
        tags_[static_cast<size_t>(slot)] = tag;
        return out;
    }

private:
    static constexpr int64_t kAlignFloats = 16;
    RowGeometry geo_;
    int64_t slots_ = 0, slotSize_ = 0;
    std::vector<float> storage_;
    float* base_ = nullptr;
    std::vector<int64_t> tags_;
};

// Copy one row of w floats to dst[0, w) and zero dst[w, width).
inline void copyRowZeroTail(const float* src, int64_t w, float* dst, int64_t width)
{
    std::memcpy(dst, src, static_cast<size_t>(w) * sizeof(float));
    std::fill(dst + w, dst + width, 0.0f);
}

}  // namespace convcrf
