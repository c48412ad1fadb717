// Single-query attention over an 8-bit KV cache, for the CPU decode step (AVX-512): half the
// bytes of the fp16 cache, which at 20 s of context is more than the int4 weights a step reads.
// Each cached key (value) row of Dh numbers is stored as int8 with one fp32 scale per head and
// position (max |x| / 127). The rows are quantised here too (quantize_into), one call per layer
// and tensor: done with torch's small ops the writes cost about as much as the bytes saved.
//
//   quantize_into(cache [B, H, P, Dh] int8, scales [B, H, P] fp32, x [B, H, T, Dh] fp32, start)
//     writes x's rows at positions start..start+T-1 (also into a 4-bit cache [B, H, P, 32] uint8:
//     kv4_attention.cpp)
//   scores_q8(q [BH, Dh] fp32, keys [BH, P, Dh] int8, key scales [BH, P], positions T)
//     -> [BH, T] fp32 (q.k / sqrt(Dh)); q is quantised to int8 per head too, and the products
//     summed by AVX-512 VNNI, 16 positions at a time (scores_q8_head: the float loop converted
//     each key first and was bound by arithmetic, at 20 GB/s of keys on 2 cores)
//   weighted_q8(weights [BH, T] fp32, values [BH, P, Dh] int8, value scales [BH, P])
//     -> [BH, Dh] fp32
// P is the cache capacity (positions allocated); only the first T are read. Dh % 16 == 0.
#include "attention.h"
#include "kernels.h"
#include <cmath>

static void check_q8(const at::Tensor& cache, const at::Tensor& scales, int64_t bh, int64_t dh) {
  TORCH_CHECK(cache.scalar_type() == at::kChar && cache.is_contiguous(), "cache: contiguous int8");
  TORCH_CHECK(cache.dim() == 3 && cache.size(0) == bh && cache.size(2) == dh, "cache: [BH, P, Dh]");
  TORCH_CHECK(scales.scalar_type() == at::kFloat && scales.is_contiguous() && scales.dim() == 2 &&
              scales.size(0) == bh && scales.size(1) == cache.size(1), "scales: [BH, P] fp32");
  TORCH_CHECK(dh % 16 == 0, "head dim must be a multiple of 16");
}

void quantize_into(at::Tensor cache, at::Tensor scales, at::Tensor x, int64_t start) {
  const bool four = cache.scalar_type() == at::kByte;  // the 4-bit cache (kv4_attention.cpp)
  TORCH_CHECK((four || cache.scalar_type() == at::kChar) && cache.is_contiguous() && cache.dim() == 4,
              "cache: [B, H, P, Dh] int8, or [B, H, P, 32] uint8 (4-bit codes of heads of 64)");
  TORCH_CHECK(scales.scalar_type() == at::kFloat && scales.is_contiguous() && scales.dim() == 3, "scales: [B, H, P] fp32");
  TORCH_CHECK(x.dim() == 4 && x.size(0) == cache.size(0) && x.size(1) == cache.size(1) &&
              x.size(3) == (four ? 2 : 1) * cache.size(3) && (!four || x.size(3) == 64), "x: [B, H, T, Dh]");
  x = x.to(at::kFloat).contiguous();
  const int64_t bh = x.size(0) * x.size(1), positions = x.size(2), dh = x.size(3), capacity = cache.size(2);
  const int64_t row_bytes = cache.size(3);
  TORCH_CHECK(start >= 0 && start + positions <= capacity, "positions out of range");
  const float* xp = x.data_ptr<float>();
  auto* cp = static_cast<uint8_t*>(cache.data_ptr());
  float* sp = scales.data_ptr<float>();
  at::parallel_for(0, bh * positions, 64, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t h = r / positions, t = r % positions, at = h * capacity + start + t;
      sp[at] = four ? quantize_row4(xp + r * dh, cp + at * row_bytes)
                    : quantize_row<0>(xp + r * dh, dh, reinterpret_cast<int8_t*>(cp + at * row_bytes));
    }
  });
}

float scores_q8_head(const float* q, const int8_t* keys, const float* key_scales, int64_t positions, int64_t dh,
                     float scale, float* out) {
  if (dh % 64 != 0 || dh > 256)  // (every MusicGen has Dh = 64) the float loop
    return scores_head(q, keys, positions, dh, scale, load16_int8, [key_scales](int64_t t) { return key_scales[t]; },
                       out);
  // q as int8 (one scale for the head); vpdpbusd multiplies unsigned by signed bytes, so |q| is
  // the unsigned side and each key byte is negated where q is negative.
  const int64_t chunks = dh / 64;
  alignas(64) int8_t q8[256];
  const float q_scale = quantize_row<0>(q, dh, q8);
  __m512i magnitude[4];
  __mmask64 negative[4];
  for (int64_t c = 0; c < chunks; ++c) {
    const __m512i v = _mm512_load_si512(reinterpret_cast<const void*>(q8 + 64 * c));
    magnitude[c] = _mm512_abs_epi8(v);
    negative[c] = _mm512_movepi8_mask(v);
  }
  const __m512i zero = _mm512_setzero_si512();
  const __m512 factor = _mm512_set1_ps(q_scale * scale);
  auto dot = [&](int64_t t) {  // 16 partial sums of q8 . key t
    __m512i acc = zero;
    for (int64_t c = 0; c < chunks; ++c) {
      const __m512i k = _mm512_loadu_si512(reinterpret_cast<const void*>(keys + t * dh + 64 * c));
      acc = _mm512_dpbusd_epi32(acc, magnitude[c], _mm512_mask_sub_epi8(k, negative[c], zero, k));
    }
    return acc;
  };
  int64_t t = 0;
  const int64_t ahead = rows_ahead(dh);
  __m512 peak = _mm512_set1_ps(-INFINITY);
  for (; t + 16 <= positions; t += 16) {
    fetch_rows(keys, t + ahead, 16, dh, positions);
    fetch_rows(key_scales, t + ahead, 16, 4, positions);
    __m512i partial[16];
    for (int i = 0; i < 16; ++i) partial[i] = dot(t + i);
    const __m512 sums = _mm512_cvtepi32_ps(sum16(partial));
    const __m512 scores = _mm512_mul_ps(_mm512_mul_ps(sums, factor), _mm512_loadu_ps(key_scales + t));
    peak = _mm512_max_ps(peak, scores);
    _mm512_storeu_ps(out + t, scores);
  }
  float top = _mm512_reduce_max_ps(peak);
  for (; t < positions; ++t) {
    out[t] = static_cast<float>(_mm512_reduce_add_epi32(dot(t))) * q_scale * scale * key_scales[t];
    top = std::max(top, out[t]);
  }
  return top;
}

at::Tensor scores_q8(at::Tensor q, at::Tensor keys, at::Tensor key_scales, int64_t positions) {
  TORCH_CHECK(q.scalar_type() == at::kFloat && q.is_contiguous() && q.dim() == 2, "q: [BH, Dh] fp32");
  const int64_t bh = q.size(0), dh = q.size(1), capacity = keys.size(1);
  check_q8(keys, key_scales, bh, dh);
  TORCH_CHECK(positions > 0 && positions <= capacity, "positions out of range");
  auto out = at::empty({bh, positions}, q.options());
  const float* qp = q.data_ptr<float>();
  const int8_t* kp = keys.data_ptr<int8_t>();
  const float* sp = key_scales.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const float scale = 1.0f / std::sqrt(static_cast<float>(dh));
  at::parallel_for(0, bh, 1, [&](int64_t begin, int64_t end) {
    for (int64_t h = begin; h < end; ++h)
      scores_q8_head(qp + h * dh, kp + h * capacity * dh, sp + h * capacity, positions, dh, scale, op + h * positions);
  });
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
  weighted_loop(weights.data_ptr<float>(), values.data_ptr<int8_t>(), bh, positions, capacity, dh, load16_int8,
                [sp, capacity](int64_t h, int64_t t) { return sp[h * capacity + t]; }, out.data_ptr<float>());
  return out;
}
