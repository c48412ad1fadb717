// The decode step's linear layers with 4-bit weights: y = x W^T for 1 to 4 rows of x, W int4
// [out, in] in groups of kGroup = 256 inputs, each group with its own fp32 scale. Half the
// bytes of int8, so less time where the pass is bound by reading the weights.
//
// Packing (pack4): 64 bytes per block of 128 inputs; byte j holds input j in its low nibble and
// input 64 + j in its high nibble, each stored as w + 8 (0..15). One mask gives inputs 0..63, a
// shift and the mask 64..127; subtracting 8 makes them signed bytes for AVX-512 VNNI (vpdpbusd
// multiplies unsigned by signed bytes). x is quantised per row to int8 and shifted by +128 to be
// the unsigned side, as in int8_gemv.cpp: sum((x + 128) w) = sum(x w) + 128 sum(w), and the
// second term, with the group scales, is one constant per output (pack4 returns it). The integer
// sums of a group are scaled once (converting and scaling per group is what bounds this kernel on
// 2 cores: groups of 256 were 15 % faster than of 128, with the same logit error, measured).
//
//   pack4(W [out, in] int8 in -8..7, scales [out, in / 256] fp32)
//     -> (packed [out, in / 2] uint8, offsets [out] fp32 = 128 sum_g scale_g sum(W in g))
//   gemv4(x [M, in] fp32, packed, scales, offsets, bias [out] fp32 or empty) -> [M, out] fp32
#include "kernels.h"
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <cmath>

static constexpr int64_t kMaxRows = 4;
static constexpr int64_t kGroup = 256;  // inputs per scale
static constexpr int64_t kBlock = 128;  // inputs per 64 packed bytes
// The weights are read this far ahead by software prefetch: the unpacking between loads leaves the
// hardware prefetcher behind (measured on 2 cores: 22 GB/s of weights without, 28-30 with, where
// a plain read runs at 31; the int8 kernel, with less work per byte, gains nothing from it).
static constexpr int64_t kPrefetchBytes = 4096;

std::vector<at::Tensor> pack4(at::Tensor weight, at::Tensor scales) {
  TORCH_CHECK(weight.scalar_type() == at::kChar && weight.is_contiguous() && weight.dim() == 2,
              "weight: [out, in] int8 holding -8..7");
  const int64_t out_features = weight.size(0), in = weight.size(1);
  TORCH_CHECK(in % kGroup == 0, "in features must be a multiple of the group");
  const int64_t groups = in / kGroup;
  TORCH_CHECK(scales.scalar_type() == at::kFloat && scales.is_contiguous() &&
              scales.numel() == out_features * groups, "scales: [out, in / group] fp32");
  auto packed = at::empty({out_features, in / 2}, weight.options().dtype(at::kByte));
  auto offsets = at::empty({out_features}, scales.options());
  const int8_t* wp = weight.data_ptr<int8_t>();
  const float* sp = scales.data_ptr<float>();
  uint8_t* pp = packed.data_ptr<uint8_t>();
  float* op = offsets.data_ptr<float>();
  for (int64_t o = 0; o < out_features; ++o) {
    double offset = 0.0;
    for (int64_t b = 0; b < in / kBlock; ++b) {
      const int8_t* block = wp + o * in + b * kBlock;
      uint8_t* dst = pp + o * (in / 2) + b * 64;
      int64_t sum = 0;
      for (int64_t j = 0; j < 64; ++j) {
        TORCH_CHECK(block[j] >= -8 && block[j] <= 7 && block[64 + j] >= -8 && block[64 + j] <= 7,
                    "int4 weights must lie in -8..7");
        dst[j] = static_cast<uint8_t>((block[j] + 8) | ((block[64 + j] + 8) << 4));
        sum += block[j] + block[64 + j];
      }
      offset += 128.0 * sp[o * groups + b * kBlock / kGroup] * static_cast<double>(sum);
    }
    op[o] = static_cast<float>(offset);
  }
  return {packed, offsets};
}

template <int64_t Rows>
static void rows_kernel4(const uint8_t* xq, const uint8_t* pp, const float* x_scales, const float* sp,
                         const float* offsets, const float* bp, float* yp, int64_t in, int64_t out_features) {
  const int64_t groups = in / kGroup;
  const __m512i low_nibbles = _mm512_set1_epi8(0x0F);
  const __m512i eight = _mm512_set1_epi8(8);
  at::parallel_for(0, out_features, 32, [&](int64_t begin, int64_t end) {
    for (int64_t o = begin; o < end; ++o) {
      const uint8_t* row = pp + o * (in / 2);
      const float* scales = sp + o * groups;
      __m512 accf[Rows];
      for (int64_t m = 0; m < Rows; ++m) accf[m] = _mm512_setzero_ps();
      for (int64_t g = 0; g < groups; ++g) {
        __m512i acc0[Rows], acc1[Rows];  // one per half block: shorter chains of dependent vpdpbusd
        for (int64_t m = 0; m < Rows; ++m) acc0[m] = acc1[m] = _mm512_setzero_si512();
        for (int64_t b = 0; b < kGroup / kBlock; ++b) {
          const int64_t first = g * kGroup + b * kBlock;  // the block's first input
          const uint8_t* bytes = row + first / 2;
          _mm_prefetch(reinterpret_cast<const char*>(bytes + kPrefetchBytes), _MM_HINT_T0);
          const __m512i both = _mm512_loadu_si512(reinterpret_cast<const void*>(bytes));
          const __m512i w0 = _mm512_sub_epi8(_mm512_and_si512(both, low_nibbles), eight);  // inputs 0..63
          const __m512i w1 = _mm512_sub_epi8(_mm512_and_si512(_mm512_srli_epi16(both, 4), low_nibbles), eight);
          for (int64_t m = 0; m < Rows; ++m) {
            const uint8_t* xb = xq + m * in + first;
            acc0[m] = _mm512_dpbusd_epi32(acc0[m], _mm512_loadu_si512(reinterpret_cast<const void*>(xb)), w0);
            acc1[m] = _mm512_dpbusd_epi32(acc1[m], _mm512_loadu_si512(reinterpret_cast<const void*>(xb + 64)), w1);
          }
        }
        const __m512 s = _mm512_set1_ps(scales[g]);
        for (int64_t m = 0; m < Rows; ++m)
          accf[m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(acc0[m], acc1[m])), s, accf[m]);
      }
      for (int64_t m = 0; m < Rows; ++m) {
        const float v = (_mm512_reduce_add_ps(accf[m]) - offsets[o]) * x_scales[m];
        yp[m * out_features + o] = bp ? v + bp[o] : v;
      }
    }
  });
}

void gemv4_rows(const float* x, int64_t rows, int64_t in, const uint8_t* pp, const float* sp,
                const float* op, const float* bp, float* y, int64_t out_features) {
  with_quantised_rows(x, rows, in, [&](auto count, const uint8_t* qp, const float* x_scales) {
    rows_kernel4<decltype(count)::value>(qp, pp, x_scales, sp, op, bp, y, in, out_features);
  });
}

at::Tensor gemv4(at::Tensor x, at::Tensor packed, at::Tensor scales, at::Tensor offsets, at::Tensor bias) {
  TORCH_CHECK(x.scalar_type() == at::kFloat && x.dim() == 2, "x: [M, in] fp32");
  TORCH_CHECK(packed.scalar_type() == at::kByte && packed.is_contiguous() && packed.dim() == 2,
              "packed: [out, in / 2] uint8 (pack4)");
  x = x.contiguous();
  const int64_t rows = x.size(0), in = x.size(1), out_features = packed.size(0);
  TORCH_CHECK(packed.size(1) * 2 == in && in % kGroup == 0, "in features must match and be a multiple of the group");
  TORCH_CHECK(rows >= 1 && rows <= kMaxRows, "1 to 4 rows");
  TORCH_CHECK(scales.scalar_type() == at::kFloat && scales.is_contiguous() &&
              scales.numel() == out_features * (in / kGroup), "scales: [out, in / group] fp32");
  TORCH_CHECK(offsets.scalar_type() == at::kFloat && offsets.numel() == out_features, "offsets: [out] fp32 (pack4)");
  auto y = at::empty({rows, out_features}, x.options());
  gemv4_rows(x.data_ptr<float>(), rows, in, packed.data_ptr<uint8_t>(), scales.data_ptr<float>(),
             offsets.data_ptr<float>(), bias.numel() > 0 ? bias.data_ptr<float>() : nullptr, y.data_ptr<float>(),
             out_features);
  return y;
}
