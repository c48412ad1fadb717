// Single-query attention over an fp16 KV cache, for the CPU decode step (AVX-512 + F16C).
//
// One decode step reads the whole cache of every layer; torch's CPU attention kernels for one
// query over fp16 convert or copy it first. These two loops read it once, converting as they go,
// spread over torch's own thread pool (at::parallel_for). The softmax between them is torch's.
//
//   scores(q [BH, Dh] fp32, keys [BH, P, Dh] fp16, positions T) -> [BH, T] fp32 (q.k / sqrt(Dh))
//   weighted(weights [BH, T] fp32, values [BH, P, Dh] fp16)      -> [BH, Dh] fp32
// P is the cache capacity (positions allocated); only the first T are read. Dh % 16 == 0.
#include "kernels.h"
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <cmath>

static void check(const at::Tensor& cache, int64_t bh, int64_t dh) {
  TORCH_CHECK(cache.scalar_type() == at::kHalf && cache.is_contiguous(), "cache: contiguous fp16");
  TORCH_CHECK(cache.dim() == 3 && cache.size(0) == bh && cache.size(2) == dh, "cache: [BH, P, Dh]");
  TORCH_CHECK(dh % 16 == 0, "head dim must be a multiple of 16");
}

at::Tensor scores(at::Tensor q, at::Tensor keys, int64_t positions) {
  TORCH_CHECK(q.scalar_type() == at::kFloat && q.is_contiguous() && q.dim() == 2, "q: [BH, Dh] fp32");
  const int64_t bh = q.size(0), dh = q.size(1), capacity = keys.size(1);
  check(keys, bh, dh);
  TORCH_CHECK(positions > 0 && positions <= capacity, "positions out of range");
  auto out = at::empty({bh, positions}, q.options());
  const float scale = 1.0f / std::sqrt(static_cast<float>(dh));
  const float* qp = q.data_ptr<float>();
  const uint16_t* kp = reinterpret_cast<const uint16_t*>(keys.data_ptr<at::Half>());
  float* op = out.data_ptr<float>();
  at::parallel_for(0, bh, 1, [&](int64_t begin, int64_t end) {
    for (int64_t h = begin; h < end; ++h) {
      const float* qh = qp + h * dh;
      const uint16_t* kh = kp + h * capacity * dh;
      float* oh = op + h * positions;
      for (int64_t t = 0; t < positions; ++t) {
        const uint16_t* row = kh + t * dh;
        __m512 acc = _mm512_setzero_ps();
        for (int64_t d = 0; d < dh; d += 16) {
          __m512 k16 = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + d)));
          acc = _mm512_fmadd_ps(k16, _mm512_loadu_ps(qh + d), acc);
        }
        oh[t] = _mm512_reduce_add_ps(acc) * scale;
      }
    }
  });
  return out;
}

at::Tensor weighted(at::Tensor weights, at::Tensor values) {
  TORCH_CHECK(weights.scalar_type() == at::kFloat && weights.is_contiguous() && weights.dim() == 2,
              "weights: [BH, T] fp32");
  const int64_t bh = weights.size(0), positions = weights.size(1);
  const int64_t dh = values.size(2), capacity = values.size(1);
  check(values, bh, dh);
  TORCH_CHECK(positions <= capacity, "positions out of range");
  TORCH_CHECK(dh <= 256, "head dim above 256");
  auto out = at::empty({bh, dh}, weights.options());
  const float* wp = weights.data_ptr<float>();
  const uint16_t* vp = reinterpret_cast<const uint16_t*>(values.data_ptr<at::Half>());
  float* op = out.data_ptr<float>();
  at::parallel_for(0, bh, 1, [&](int64_t begin, int64_t end) {
    __m512 acc[16];
    const int64_t blocks = dh / 16;
    for (int64_t h = begin; h < end; ++h) {
      for (int64_t j = 0; j < blocks; ++j) acc[j] = _mm512_setzero_ps();
      const float* wh = wp + h * positions;
      const uint16_t* vh = vp + h * capacity * dh;
      for (int64_t t = 0; t < positions; ++t) {
        const __m512 w = _mm512_set1_ps(wh[t]);
        const uint16_t* row = vh + t * dh;
        for (int64_t j = 0; j < blocks; ++j) {
          __m512 v16 = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + 16 * j)));
          acc[j] = _mm512_fmadd_ps(w, v16, acc[j]);
        }
      }
      for (int64_t j = 0; j < blocks; ++j) _mm512_storeu_ps(op + h * dh + 16 * j, acc[j]);
    }
  });
  return out;
}
