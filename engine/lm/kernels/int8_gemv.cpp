// The decode step's linear layers: y = x W^T for 1 to 4 rows of x (2 for CFG), with W int8
// [out, in] and one fp32 scale per output channel; x is quantised to int8 per row on the fly
// (scale = max|x| / 127), and the int8 products are summed by AVX-512 VNNI (vpdpbusd: 64
// multiply-adds per instruction), so that the pass is bound by reading the weights, not by
// arithmetic. vpdpbusd multiplies unsigned by signed bytes: x is shifted by +128 and
// 128 * sum(W row) (precomputed) is taken off again.
//
//   prepare(W [out, in] int8) -> row sums [out] int32
//   gemv(x [M, in] fp32, W, row sums, scale [out] fp32, bias [out] fp32 or empty) -> [M, out] fp32
#include "kernels.h"
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <cmath>
#include <vector>

static constexpr int64_t kMaxRows = 4;  // rows of x per call

void quantize_rows_u8(const float* x, int64_t rows, int64_t in, uint8_t* out, float* scales) {
  for (int64_t m = 0; m < rows; ++m) scales[m] = quantize_row<128>(x + m * in, in, out + m * in);
}

at::Tensor prepare(at::Tensor weight) {
  TORCH_CHECK(weight.scalar_type() == at::kChar && weight.is_contiguous() && weight.dim() == 2,
              "weight: [out, in] int8");
  return weight.to(at::kInt).sum(1, /*keepdim=*/false, at::kInt).contiguous();
}

template <int64_t Rows>
static void range_kernel(const uint8_t* xq, const int8_t* wp, const int32_t* row_sums, const float* x_scales,
                         const float* sp, const float* bp, float* yp, int64_t in, int64_t out_features, int64_t begin,
                         int64_t end) {
  for (int64_t o = begin; o < end; ++o) {
    const int8_t* row = wp + o * in;
    __m512i acc[Rows];
    for (int64_t m = 0; m < Rows; ++m) acc[m] = _mm512_setzero_si512();
    for (int64_t i = 0; i < in; i += 64) {
      _mm_prefetch(reinterpret_cast<const char*>(row + i + kGemvAheadBytes), GEMV_PREFETCH_HINT);
      const __m512i w = _mm512_loadu_si512(reinterpret_cast<const void*>(row + i));
      for (int64_t m = 0; m < Rows; ++m) {
        const __m512i x = _mm512_loadu_si512(reinterpret_cast<const void*>(xq + m * in + i));
        acc[m] = _mm512_dpbusd_epi32(acc[m], x, w);
      }
    }
    for (int64_t m = 0; m < Rows; ++m) {
      const int32_t dot = _mm512_reduce_add_epi32(acc[m]) - 128 * row_sums[o];
      float v = static_cast<float>(dot) * x_scales[m] * sp[o];
      yp[m * out_features + o] = bp ? v + bp[o] : v;
    }
  }
}

void gemv_range(const uint8_t* xq, const float* x_scales, int64_t rows, int64_t in, const int8_t* wp,
                const int32_t* row_sums, const float* scales, const float* bp, float* y, int64_t out_features,
                int64_t begin, int64_t end) {
  switch (rows) {
    case 1: range_kernel<1>(xq, wp, row_sums, x_scales, scales, bp, y, in, out_features, begin, end); break;
    case 2: range_kernel<2>(xq, wp, row_sums, x_scales, scales, bp, y, in, out_features, begin, end); break;
    case 3: range_kernel<3>(xq, wp, row_sums, x_scales, scales, bp, y, in, out_features, begin, end); break;
    default: range_kernel<4>(xq, wp, row_sums, x_scales, scales, bp, y, in, out_features, begin, end); break;
  }
}

void gemv_rows(const float* x, int64_t rows, int64_t in, const int8_t* wp, const int32_t* row_sums,
               const float* scales, const float* bp, float* y, int64_t out_features) {
  std::vector<uint8_t> xq(rows * in);
  float x_scales[kMaxRows];
  quantize_rows_u8(x, rows, in, xq.data(), x_scales);
  at::parallel_for(0, out_features, 64, [&](int64_t begin, int64_t end) {
    gemv_range(xq.data(), x_scales, rows, in, wp, row_sums, scales, bp, y, out_features, begin, end);
  });
}

at::Tensor gemv(at::Tensor x, at::Tensor weight, at::Tensor row_sums, at::Tensor scale,
                   at::Tensor bias) {
  TORCH_CHECK(x.scalar_type() == at::kFloat && x.dim() == 2, "x: [M, in] fp32");
  TORCH_CHECK(weight.scalar_type() == at::kChar && weight.is_contiguous() && weight.dim() == 2,
              "weight: [out, in] int8");
  x = x.contiguous();
  const int64_t rows = x.size(0), in = x.size(1), out_features = weight.size(0);
  TORCH_CHECK(weight.size(1) == in && in % 64 == 0, "in features must match and be a multiple of 64");
  TORCH_CHECK(rows >= 1 && rows <= kMaxRows, "1 to 4 rows");
  TORCH_CHECK(scale.scalar_type() == at::kFloat && scale.numel() == out_features, "scale: [out] fp32");
  TORCH_CHECK(row_sums.scalar_type() == at::kInt && row_sums.numel() == out_features, "row sums: [out] int32");
  auto y = at::empty({rows, out_features}, x.options());
  gemv_rows(x.data_ptr<float>(), rows, in, weight.data_ptr<int8_t>(), row_sums.data_ptr<int32_t>(),
            scale.data_ptr<float>(), bias.numel() > 0 ? bias.data_ptr<float>() : nullptr, y.data_ptr<float>(),
            out_features);
  return y;
}

// The int8 compute peak of the cores (what the prefill's GEMMs are measured against): each of
// torch's threads runs `iterations` rounds of 8 independent vpdpbusd (64 multiply-adds each) on
// registers, no memory traffic. Returns the multiply-adds done (x2 for operations).
int64_t vnni_peak(int64_t iterations) {
  const int64_t threads = at::get_num_threads();
  std::vector<int32_t> sink(threads * 16, 0);  // each thread's sums, read below: the loops stay
  at::parallel_for(0, threads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      __m512i acc[8];
      const __m512i a = _mm512_set1_epi8(static_cast<char>(t + 1)), b = _mm512_set1_epi8(3);
      for (int k = 0; k < 8; ++k) acc[k] = _mm512_set1_epi32(k);
      for (int64_t i = 0; i < iterations; ++i)
        for (int k = 0; k < 8; ++k) acc[k] = _mm512_dpbusd_epi32(acc[k], a, b);
      __m512i total = acc[0];
      for (int k = 1; k < 8; ++k) total = _mm512_add_epi32(total, acc[k]);
      _mm512_storeu_si512(reinterpret_cast<void*>(sink.data() + t * 16), total);
    }
  });
  volatile int32_t kept = 0;  // (a volatile read of every sum: no loop can be optimised away)
  for (const int32_t v : sink) kept = kept + v;
  return threads * iterations * 8 * 64;
}
