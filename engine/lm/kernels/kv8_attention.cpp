// Single-query attention over an 8-bit KV cache, for the CPU decode step (AVX-512): half the
// bytes of the fp16 cache, which at 20 s of context is more than the int4 weights a step reads.
// Each cached key (value) row of Dh numbers is stored as int8 with one fp32 scale per head and
// position (max |x| / 127). The rows are quantised here too (quantize_into), one call per layer
// and tensor: done with torch's small ops the writes cost about as much as the bytes saved.
//
//   quantize_into(cache [B, H, P, Dh] int8, scales [B, H, P] fp32, x [B, H, T, Dh] fp32, start)
//     writes x's rows at positions start..start+T-1
//   scores_q8(q [BH, Dh] fp32, keys [BH, P, Dh] int8, key scales [BH, P], positions T)
//     -> [BH, T] fp32 (q.k / sqrt(Dh))
//   weighted_q8(weights [BH, T] fp32, values [BH, P, Dh] int8, value scales [BH, P])
//     -> [BH, Dh] fp32
// P is the cache capacity (positions allocated); only the first T are read. Dh % 16 == 0.
#include "attention.h"
#include "kernels.h"
#include <cmath>

static const auto load16 = [](const int8_t* p) {  // (a lambda, so that the loops inline it)
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
};

static void check_q8(const at::Tensor& cache, const at::Tensor& scales, int64_t bh, int64_t dh) {
  TORCH_CHECK(cache.scalar_type() == at::kChar && cache.is_contiguous(), "cache: contiguous int8");
  TORCH_CHECK(cache.dim() == 3 && cache.size(0) == bh && cache.size(2) == dh, "cache: [BH, P, Dh]");
  TORCH_CHECK(scales.scalar_type() == at::kFloat && scales.is_contiguous() && scales.dim() == 2 &&
              scales.size(0) == bh && scales.size(1) == cache.size(1), "scales: [BH, P] fp32");
  TORCH_CHECK(dh % 16 == 0, "head dim must be a multiple of 16");
}

void quantize_into(at::Tensor cache, at::Tensor scales, at::Tensor x, int64_t start) {
  TORCH_CHECK(cache.scalar_type() == at::kChar && cache.is_contiguous() && cache.dim() == 4, "cache: [B, H, P, Dh] int8");
  TORCH_CHECK(scales.scalar_type() == at::kFloat && scales.is_contiguous() && scales.dim() == 3, "scales: [B, H, P] fp32");
  TORCH_CHECK(x.dim() == 4 && x.size(0) == cache.size(0) && x.size(1) == cache.size(1) && x.size(3) == cache.size(3),
              "x: [B, H, T, Dh]");
  x = x.to(at::kFloat).contiguous();
  const int64_t bh = x.size(0) * x.size(1), positions = x.size(2), dh = x.size(3), capacity = cache.size(2);
  TORCH_CHECK(start >= 0 && start + positions <= capacity, "positions out of range");
  const float* xp = x.data_ptr<float>();
  int8_t* cp = cache.data_ptr<int8_t>();
  float* sp = scales.data_ptr<float>();
  at::parallel_for(0, bh * positions, 64, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t h = r / positions, t = r % positions;
      sp[h * capacity + start + t] = quantize_row<0>(xp + r * dh, dh, cp + (h * capacity + start + t) * dh);
    }
  });
}

at::Tensor scores_q8(at::Tensor q, at::Tensor keys, at::Tensor key_scales, int64_t positions) {
  TORCH_CHECK(q.scalar_type() == at::kFloat && q.is_contiguous() && q.dim() == 2, "q: [BH, Dh] fp32");
  const int64_t bh = q.size(0), dh = q.size(1), capacity = keys.size(1);
  check_q8(keys, key_scales, bh, dh);
  TORCH_CHECK(positions > 0 && positions <= capacity, "positions out of range");
  auto out = at::empty({bh, positions}, q.options());
  const float* sp = key_scales.data_ptr<float>();
  scores_loop(q.data_ptr<float>(), keys.data_ptr<int8_t>(), bh, positions, capacity, dh,
              1.0f / std::sqrt(static_cast<float>(dh)), load16,
              [sp, capacity](int64_t h, int64_t t) { return sp[h * capacity + t]; }, out.data_ptr<float>());
  return out;
}

at::Tensor weighted_q8(at::Tensor weights, at::Tensor values, at::Tensor value_scales) {
  TORCH_CHECK(weights.scalar_type() == at::kFloat && weights.is_contiguous() && weights.dim() == 2,
              "weights: [BH, T] fp32");
  const int64_t bh = weights.size(0), positions = weights.size(1);
  const int64_t dh = values.size(2), capacity = values.size(1);
  check_q8(values, value_scales, bh, dh);
  TORCH_CHECK(positions <= capacity, "positions out of range");
  TORCH_CHECK(dh <= 256, "head dim above 256");
  auto out = at::empty({bh, dh}, weights.options());
  const float* sp = value_scales.data_ptr<float>();
  weighted_loop(weights.data_ptr<float>(), values.data_ptr<int8_t>(), bh, positions, capacity, dh, load16,
                [sp, capacity](int64_t h, int64_t t) { return sp[h * capacity + t]; }, out.data_ptr<float>());
  return out;
}
