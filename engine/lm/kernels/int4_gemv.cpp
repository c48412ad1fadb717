// The decode step's linear layers with 4-bit weights: y = x W^T for 1 to 4 rows of x, W int4
// [out, in] in groups of kGroup = 256 inputs, each group with its own fp32 scale. Half the
// bytes of int8, so less time where the pass is bound by reading the weights.
//
// Packing (pack4), in VNNI order as the prefill GEMM's (int8_gemm.cpp): the outputs in blocks of
// 16 channels, 64 bytes per block and 8 inputs: the 4-byte lane c holds channel c's inputs
// 8s..8s+3 in its low nibbles and 8s+4..8s+7 in its high ones, each stored as w + 8 (0..15).
// Tiles of 4 blocks (64 channels) are one stream, the blocks interleaved per 8 inputs, so that a
// thread reads memory in order (separate 8 KiB streams per block read at 17-19 GB/s from memory
// where in order they reach the memory's speed). One mask gives the first four inputs of 16 channels, a shift and the mask the next
// four, ready for AVX-512 VNNI's vpdpbusd (unsigned weights times signed int8 x, four inputs
// summed per lane): no horizontal sums, and 8 vector ops per 64 bytes where the previous layout
// (a channel's inputs along the vector, summed across it at the end) took 13 and, on 2 cores, ran
// below the memory's speed. x is quantised per row to signed int8; the +8 of the weights adds
// 8 sum(x in the group) to each channel's group sum, taken off before the group's scale.
//
//   pack4(W [out, in] int8 in -8..7, scales [out, in / 256] fp32)
//     -> (packed [out, in / 2] uint8 in that order, scales in block order [out / 16, in / 256, 16])
//   gemv4(x [M, in] fp32, packed, block scales, bias [out] fp32 or empty) -> [M, out] fp32
#include "kernels.h"
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <cmath>

static constexpr int64_t kMaxRows = 4;
static constexpr int64_t kGroup = 256;  // inputs per scale
static constexpr int64_t kChannels = 16;  // outputs per block (one vector of int32 sums)
static constexpr int64_t kStep = 8;  // inputs per 64 packed bytes of a block
static constexpr int64_t kTileBlocks = 4;  // blocks interleaved per step in one stream (64 channels)

std::vector<at::Tensor> pack4(at::Tensor weight, at::Tensor scales) {
  TORCH_CHECK(weight.scalar_type() == at::kChar && weight.is_contiguous() && weight.dim() == 2,
              "weight: [out, in] int8 holding -8..7");
  const int64_t out_features = weight.size(0), in = weight.size(1);
  TORCH_CHECK(in % kGroup == 0, "in features must be a multiple of the group");
  TORCH_CHECK(out_features % kChannels == 0, "out features must be a multiple of 16");
  const int64_t groups = in / kGroup;
  TORCH_CHECK(scales.scalar_type() == at::kFloat && scales.is_contiguous() &&
              scales.numel() == out_features * groups, "scales: [out, in / group] fp32");
  TORCH_CHECK(weight.min().item<int8_t>() >= -8 && weight.max().item<int8_t>() <= 7, "int4 weights must lie in -8..7");
  auto packed = at::empty({out_features, in / 2}, weight.options().dtype(at::kByte));
  const int8_t* wp = weight.data_ptr<int8_t>();
  uint8_t* pp = packed.data_ptr<uint8_t>();
  const int64_t blocks = out_features / kChannels;
  for (int64_t tile = 0; tile * kTileBlocks < blocks; ++tile) {
    const int64_t first = tile * kTileBlocks, count = std::min<int64_t>(kTileBlocks, blocks - first);
    uint8_t* stream = pp + first * kChannels * (in / 2);  // the tile's one stream: per step, its blocks
    for (int64_t s = 0; s < in / kStep; ++s)
      for (int64_t b = 0; b < count; ++b)
        for (int64_t c = 0; c < kChannels; ++c)
          for (int64_t j = 0; j < 4; ++j) {
            const int8_t* w = wp + ((first + b) * kChannels + c) * in + s * kStep + j;
            stream[(s * count + b) * 64 + c * 4 + j] = static_cast<uint8_t>((w[0] + 8) | ((w[4] + 8) << 4));
          }
  }
  // [out / 16, 16, groups] -> [out / 16, groups, 16]: a block's 16 scales of a group in one vector
  auto block_scales = scales.view({out_features / kChannels, kChannels, groups}).transpose(1, 2).contiguous();
  return {packed, block_scales.view({out_features, groups})};
}

// Rows of quantised x (signed int8) against the tile of Blocks blocks of 16 channels from `block`.
template <int64_t Rows, int64_t Blocks>
static inline void tile_kernel4(const int8_t* xq, const int32_t* x_sums, const float* x_scales, const uint8_t* pp,
                                const float* sp, const float* bp, float* yp, int64_t in, int64_t out_features,
                                int64_t block) {
  const int64_t groups = in / kGroup;
  const uint8_t* stream = pp + block * kChannels * (in / 2);
  // The tile's block scales (Blocks * groups * 64 bytes, side by side), first read after its first
  // group's 8 KiB of weights: fetched now, else each group's end waits on them. Whole int4 steps
  // took 0.94-0.96x the time at 20 positions and 0.96-0.98x at 1250 with this fetch (alternated
  // in one process on 2 cores, sum() at 75-80 GB/s; without any scales, wrong numbers, 0.93x at
  // 20). Fetched one tile earlier they were gone from L1 when read: 1.00x.
  const float* tile_scales = sp + block * groups * kChannels;
  for (int64_t i = 0; i < Blocks * groups * kChannels; i += 16)
    _mm_prefetch(reinterpret_cast<const char*>(tile_scales + i), _MM_HINT_T0);
  const __m512i low_nibbles = _mm512_set1_epi8(0x0F);
  __m512 sums[Rows][Blocks];  // (in registers where they fit; updated once per group)
  for (int64_t m = 0; m < Rows; ++m)
    for (int64_t b = 0; b < Blocks; ++b) sums[m][b] = _mm512_setzero_ps();
  for (int64_t g = 0; g < groups; ++g) {
    __m512i acc[Rows][Blocks];
    for (int64_t m = 0; m < Rows; ++m)
      for (int64_t b = 0; b < Blocks; ++b) acc[m][b] = _mm512_setzero_si512();
    for (int64_t s = g * (kGroup / kStep); s < (g + 1) * (kGroup / kStep); ++s) {
      __m512i first[Rows], second[Rows];  // inputs 8s..8s+3 and 8s+4..8s+7, broadcast
      for (int64_t m = 0; m < Rows; ++m) {
        const int8_t* x = xq + m * in + s * kStep;
        first[m] = _mm512_set1_epi32(*reinterpret_cast<const int32_t*>(x));
        second[m] = _mm512_set1_epi32(*reinterpret_cast<const int32_t*>(x + 4));
      }
      const uint8_t* step = stream + s * Blocks * 64;
      for (int64_t b = 0; b < Blocks; ++b) {
        _mm_prefetch(reinterpret_cast<const char*>(step + b * 64 + kGemvAheadBytes), GEMV_PREFETCH_HINT);
        const __m512i both = _mm512_loadu_si512(reinterpret_cast<const void*>(step + b * 64));
        const __m512i low = _mm512_and_si512(both, low_nibbles);
        const __m512i high = _mm512_and_si512(_mm512_srli_epi16(both, 4), low_nibbles);
        for (int64_t m = 0; m < Rows; ++m) {
          acc[m][b] = _mm512_dpbusd_epi32(acc[m][b], low, first[m]);
          acc[m][b] = _mm512_dpbusd_epi32(acc[m][b], high, second[m]);
        }
      }
    }
    for (int64_t b = 0; b < Blocks; ++b) {
      const __m512 scale = _mm512_loadu_ps(tile_scales + (b * groups + g) * kChannels);
      for (int64_t m = 0; m < Rows; ++m) {  // minus the weights' +8: 8 sum(x in the group)
        const __m512i exact = _mm512_sub_epi32(acc[m][b], _mm512_set1_epi32(8 * x_sums[m * groups + g]));
        sums[m][b] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(exact), scale, sums[m][b]);
      }
    }
  }
  for (int64_t b = 0; b < Blocks; ++b) {
    const int64_t o = (block + b) * kChannels;
    const __m512 bias = bp ? _mm512_loadu_ps(bp + o) : _mm512_setzero_ps();
    for (int64_t m = 0; m < Rows; ++m)
      _mm512_storeu_ps(yp + m * out_features + o, _mm512_fmadd_ps(sums[m][b], _mm512_set1_ps(x_scales[m]), bias));
  }
}

int64_t gemv4_tiles(int64_t out_features) {
  return (out_features / kChannels + kTileBlocks - 1) / kTileBlocks;
}

template <int64_t Rows>
static void tiles_kernel4(const int8_t* xq, const int32_t* x_sums, const float* x_scales, const uint8_t* pp,
                          const float* sp, const float* bp, float* yp, int64_t in, int64_t out_features, int64_t begin,
                          int64_t end) {
  const int64_t blocks = out_features / kChannels;
  for (int64_t tile = begin; tile < end; ++tile) {
    const int64_t block = tile * kTileBlocks;
    switch (std::min<int64_t>(kTileBlocks, blocks - block)) {  // the last tile may hold fewer blocks
      case 1: tile_kernel4<Rows, 1>(xq, x_sums, x_scales, pp, sp, bp, yp, in, out_features, block); break;
      case 2: tile_kernel4<Rows, 2>(xq, x_sums, x_scales, pp, sp, bp, yp, in, out_features, block); break;
      case 3: tile_kernel4<Rows, 3>(xq, x_sums, x_scales, pp, sp, bp, yp, in, out_features, block); break;
      default: tile_kernel4<Rows, 4>(xq, x_sums, x_scales, pp, sp, bp, yp, in, out_features, block); break;
    }
  }
}

float quantize_input4(const float* x, int64_t in, int8_t* xq, int32_t* group_sums) {
  const float scale = quantize_row<0>(x, in, xq);
  for (int64_t g = 0; g < in / kGroup; ++g) {
    int32_t sum = 0;
    for (int64_t i = g * kGroup; i < (g + 1) * kGroup; ++i) sum += xq[i];
    group_sums[g] = sum;
  }
  return scale;
}

void gemv4_range(const int8_t* xq, const int32_t* x_sums, const float* x_scales, int64_t rows, int64_t in,
                 const uint8_t* pp, const float* sp, const float* bp, float* y, int64_t out_features, int64_t begin,
                 int64_t end) {
  switch (rows) {
    case 1: tiles_kernel4<1>(xq, x_sums, x_scales, pp, sp, bp, y, in, out_features, begin, end); break;
    case 2: tiles_kernel4<2>(xq, x_sums, x_scales, pp, sp, bp, y, in, out_features, begin, end); break;
    case 3: tiles_kernel4<3>(xq, x_sums, x_scales, pp, sp, bp, y, in, out_features, begin, end); break;
    default: tiles_kernel4<4>(xq, x_sums, x_scales, pp, sp, bp, y, in, out_features, begin, end); break;
  }
}

void gemv4_rows(const float* x, int64_t rows, int64_t in, const uint8_t* pp, const float* sp, const float* bp,
                float* y, int64_t out_features) {
  const int64_t groups = in / kGroup;
  std::vector<int8_t> xq(rows * in);
  std::vector<int32_t> x_sums(rows * groups);
  float x_scales[kMaxRows];
  for (int64_t m = 0; m < rows; ++m)
    x_scales[m] = quantize_input4(x + m * in, in, xq.data() + m * in, x_sums.data() + m * groups);
  at::parallel_for(0, gemv4_tiles(out_features), 1, [&](int64_t begin, int64_t end) {
    gemv4_range(xq.data(), x_sums.data(), x_scales, rows, in, pp, sp, bp, y, out_features, begin, end);
  });
}

at::Tensor gemv4(at::Tensor x, at::Tensor packed, at::Tensor scales, at::Tensor bias) {
  TORCH_CHECK(x.scalar_type() == at::kFloat && x.dim() == 2, "x: [M, in] fp32");
  TORCH_CHECK(packed.scalar_type() == at::kByte && packed.is_contiguous() && packed.dim() == 2,
              "packed: [out, in / 2] uint8 (pack4)");
  x = x.contiguous();
  const int64_t rows = x.size(0), in = x.size(1), out_features = packed.size(0);
  TORCH_CHECK(packed.size(1) * 2 == in && in % kGroup == 0, "in features must match and be a multiple of the group");
  TORCH_CHECK(out_features % kChannels == 0, "out features: a multiple of 16");
  TORCH_CHECK(rows >= 1 && rows <= kMaxRows, "1 to 4 rows");
  TORCH_CHECK(scales.scalar_type() == at::kFloat && scales.is_contiguous() &&
              scales.numel() == out_features * (in / kGroup), "scales: pack4's block scales, fp32");
  TORCH_CHECK(bias.numel() == 0 || (bias.scalar_type() == at::kFloat && bias.numel() == out_features),
              "bias: [out] fp32 or empty");
  auto y = at::empty({rows, out_features}, x.options());
  gemv4_rows(x.data_ptr<float>(), rows, in, packed.data_ptr<uint8_t>(), scales.data_ptr<float>(),
             bias.numel() > 0 ? bias.contiguous().data_ptr<float>() : nullptr, y.data_ptr<float>(), out_features);
  return y;
}
