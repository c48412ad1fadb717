// The prefill's linear layers: y = x W^T for many rows of x (a prefill chunk: 2 x 256 rows),
// with int8 weights (one fp32 scale per output channel, row sums for the +128 shift, as the
// decode kernel's: int8_gemv.cpp) and x quantised to int8 per row (max|x| / 127), bound by
// arithmetic rather than by reading W. W is packed once in VNNI order (`pack_vnni`): for each
// 16 output channels and each 4 inputs, 64 bytes, so that one vpdpbusd multiplies 4 inputs of a
// row (broadcast) into 16 channels' sums and no sum needs folding at the end. A tile is 6 rows x
// 64 channels: 24 accumulators, fed by 4 weight loads and 6 broadcasts per 24 vpdpbusd. Each
// thread takes a range of 64-channel groups and runs every block of kRowBlock rows over them
// (the block's quantised rows stay in L2, a group's weights in L2 across the block's tiles).
//
//   pack_vnni(W [out, in] int8) -> [out / 16, in / 4, 16, 4] int8     (out % 64 == 0, in % 64 == 0)
//   gemm(x [M, in] fp32, packed, row sums [out] int32, scale [out] fp32, bias [out] fp32 or empty)
//     -> [M, out] fp32
#include "kernels.h"
#include <ATen/Parallel.h>
#include <immintrin.h>

static constexpr int64_t kRows = 6;       // rows per tile
static constexpr int64_t kBlocks = 4;     // 16-channel blocks per tile (64 channels)
static constexpr int64_t kRowBlock = 96;  // rows whose quantised bytes a thread keeps in L2

at::Tensor pack_vnni(at::Tensor weight) {
  TORCH_CHECK(weight.scalar_type() == at::kChar && weight.dim() == 2, "weight: [out, in] int8");
  const int64_t out_features = weight.size(0), in = weight.size(1);
  TORCH_CHECK(out_features % (16 * kBlocks) == 0 && in % 64 == 0, "out a multiple of 64, in of 64");
  return weight.reshape({out_features / 16, 16, in / 4, 4}).permute({0, 2, 1, 3}).contiguous();
}

// Rows xq[0..kRows) (each `in` bytes, +128) against channels [16 * block0, + 64) -> out. The
// accumulators are locals, the loops fully unrolled, so that they live in registers (written
// through `out` inside the loop, GCC spilled them to the stack at every step: 2.5x slower).
static inline void tile(const uint8_t* xq, const int8_t* packed, int64_t block0, int64_t in, __m512i* out) {
  __m512i acc[kRows * kBlocks];
#pragma GCC unroll 24
  for (int k = 0; k < kRows * kBlocks; ++k) acc[k] = _mm512_setzero_si512();
  const int64_t block_bytes = 16 * in;  // one 16-channel block over every input
  const int8_t* w = packed + block0 * block_bytes;
  for (int64_t k4 = 0; k4 < in / 4; ++k4) {
    __m512i wv[kBlocks];
#pragma GCC unroll 4
    for (int b = 0; b < kBlocks; ++b)
      wv[b] = _mm512_loadu_si512(reinterpret_cast<const void*>(w + b * block_bytes + k4 * 64));
#pragma GCC unroll 6
    for (int m = 0; m < kRows; ++m) {
      const __m512i xv = _mm512_set1_epi32(*reinterpret_cast<const int32_t*>(xq + m * in + 4 * k4));
#pragma GCC unroll 4
      for (int b = 0; b < kBlocks; ++b) acc[m * kBlocks + b] = _mm512_dpbusd_epi32(acc[m * kBlocks + b], xv, wv[b]);
    }
  }
#pragma GCC unroll 24
  for (int k = 0; k < kRows * kBlocks; ++k) out[k] = acc[k];
}

at::Tensor gemm(at::Tensor x, at::Tensor packed, at::Tensor row_sums, at::Tensor scale, at::Tensor bias) {
  TORCH_CHECK(x.scalar_type() == at::kFloat && x.dim() == 2, "x: [M, in] fp32");
  TORCH_CHECK(packed.scalar_type() == at::kChar && packed.is_contiguous() && packed.dim() == 4 &&
              packed.size(2) == 16 && packed.size(3) == 4, "packed: pack_vnni's [out / 16, in / 4, 16, 4]");
  x = x.contiguous();
  const int64_t rows = x.size(0), in = x.size(1), out_features = packed.size(0) * 16;
  TORCH_CHECK(packed.size(1) * 4 == in && out_features % (16 * kBlocks) == 0, "x and the packed weight disagree");
  TORCH_CHECK(scale.scalar_type() == at::kFloat && scale.numel() == out_features, "scale: [out] fp32");
  TORCH_CHECK(row_sums.scalar_type() == at::kInt && row_sums.numel() == out_features, "row sums: [out] int32");
  const bool has_bias = bias.numel() > 0;
  TORCH_CHECK(!has_bias || (bias.scalar_type() == at::kFloat && bias.numel() == out_features), "bias: [out] fp32");
  auto y = at::empty({rows, out_features}, x.options());
  const int64_t padded = (rows + kRows - 1) / kRows * kRows;  // whole tiles: extra rows are zeros (+128)
  std::vector<uint8_t> xq(padded * in, 128);
  std::vector<float> x_scales(padded, 0.f);
  const float* xp = x.data_ptr<float>();
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    quantize_rows_u8(xp + begin * in, end - begin, in, xq.data() + begin * in, x_scales.data() + begin);
  });
  const int8_t* wp = packed.data_ptr<int8_t>();
  const int32_t* sums = row_sums.data_ptr<int32_t>();
  const float* sp = scale.data_ptr<float>();
  const float* bp = has_bias ? bias.data_ptr<float>() : nullptr;
  float* yp = y.data_ptr<float>();
  const int64_t groups = out_features / (16 * kBlocks);
  at::parallel_for(0, groups, 1, [&](int64_t begin, int64_t end) {
    __m512i acc[kRows * kBlocks];
    for (int64_t block = 0; block < padded; block += kRowBlock) {
      const int64_t block_end = std::min(padded, block + kRowBlock);
      for (int64_t g = begin; g < end; ++g) {
        for (int64_t m0 = block; m0 < block_end; m0 += kRows) {
          tile(xq.data() + m0 * in, wp, g * kBlocks, in, acc);
          for (int b = 0; b < kBlocks; ++b) {
            const int64_t o = (g * kBlocks + b) * 16;
            const __m512i shift = _mm512_mullo_epi32(
                _mm512_loadu_si512(reinterpret_cast<const void*>(sums + o)), _mm512_set1_epi32(128));
            const __m512 w_scale = _mm512_loadu_ps(sp + o);
            const __m512 bias16 = bp ? _mm512_loadu_ps(bp + o) : _mm512_setzero_ps();
            for (int64_t m = 0; m < kRows && m0 + m < rows; ++m) {
              const __m512 dots = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc[m * kBlocks + b], shift));
              const __m512 scaled = _mm512_mul_ps(dots, _mm512_set1_ps(x_scales[m0 + m]));
              _mm512_storeu_ps(yp + (m0 + m) * out_features + o, _mm512_fmadd_ps(scaled, w_scale, bias16));
            }
          }
        }
      }
    }
  });
  return y;
}
