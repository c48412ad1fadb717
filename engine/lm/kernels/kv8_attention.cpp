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
//     -> [BH, Dh] fp32 (heads of 64: the weights times the value scales held as two uint8 digits
//     per block of 64 positions and summed by VNNI, as the 4-bit cache's; softmax_weighted_q8_head
//     takes the scores and their exps in the same loop)
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

namespace {

// Heads of 64: out [64] = sum_t w_t v_t, where (Softmax) w_t = exp(w[t] - top) value_scales[t] (w:
// scores) -> the sum of the exps; else w_t = w[t] (softmax weights times value scales) -> 0.
// vpdpbusd sums 4 products per 32-bit lane: unsigned weights (two uint8 digits per block of 64
// positions, attention.h's WeightDigits, as the 4-bit cache's) times the signed values of 4
// positions. Each 4 positions' 4 rows of 64 bytes are interleaved by bytes, then by pairs (8
// unpacks, within 128-bit lanes): vector k's lane 4 L + m then holds number 16 L + 4 k + m of the
// 4 rows, and the sums are put back in order once, at the end. (The float loop converted each
// number and took 17 vector ops a position where this takes 5.5.)
template <bool Softmax>
float weighted_q8_64(const float* w, float top, const float* value_scales, const int8_t* values, int64_t positions,
                     float* out) {
  __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
  __m512 exp_sum = _mm512_setzero_ps();
  const __m512 top16 = _mm512_set1_ps(top);
  const int64_t ahead = rows_ahead(64);
  for (int64_t b0 = 0; b0 < positions; b0 += 64) {
    const int64_t n = std::min<int64_t>(64, positions - b0);
    WeightDigits weights;  // (zero past n: the last group's missing rows)
    if (!weights.load<Softmax>(w, top16, value_scales, b0, n, positions, exp_sum)) continue;
    DigitSums sums;
    for (int64_t g = 0; g < n; g += 4) {
      const int8_t* rows = values + (b0 + g) * 64;
      fetch_rows(values, b0 + g + ahead, 4, 64, positions);
      __m512i r[4];
      for (int i = 0; i < 4; ++i)  // (rows past the last are zeros: their weights are too)
        r[i] = g + i < n ? _mm512_loadu_si512(rows + 64 * i) : _mm512_setzero_si512();
      const __m512i u0 = _mm512_unpacklo_epi8(r[0], r[1]), u1 = _mm512_unpackhi_epi8(r[0], r[1]);
      const __m512i u2 = _mm512_unpacklo_epi8(r[2], r[3]), u3 = _mm512_unpackhi_epi8(r[2], r[3]);
      const __m512i w[4] = {_mm512_unpacklo_epi16(u0, u2), _mm512_unpackhi_epi16(u0, u2),
                            _mm512_unpacklo_epi16(u1, u3), _mm512_unpackhi_epi16(u1, u3)};
      sums.add(weights, g, w);
    }
    sums.into(weights, acc);
  }
  // acc[k]'s 128-bit block L holds numbers 16 L + 4 k .. + 3: out's 16 numbers from 16 L are
  // block L of acc[0], acc[1], acc[2], acc[3].
  const __m512 t01 = _mm512_shuffle_f32x4(acc[0], acc[1], _MM_SHUFFLE(1, 0, 1, 0));  // a0.0 a0.1 a1.0 a1.1
  const __m512 t23 = _mm512_shuffle_f32x4(acc[2], acc[3], _MM_SHUFFLE(1, 0, 1, 0));
  const __m512 t45 = _mm512_shuffle_f32x4(acc[0], acc[1], _MM_SHUFFLE(3, 2, 3, 2));
  const __m512 t67 = _mm512_shuffle_f32x4(acc[2], acc[3], _MM_SHUFFLE(3, 2, 3, 2));
  _mm512_storeu_ps(out, _mm512_shuffle_f32x4(t01, t23, _MM_SHUFFLE(2, 0, 2, 0)));
  _mm512_storeu_ps(out + 16, _mm512_shuffle_f32x4(t01, t23, _MM_SHUFFLE(3, 1, 3, 1)));
  _mm512_storeu_ps(out + 32, _mm512_shuffle_f32x4(t45, t67, _MM_SHUFFLE(2, 0, 2, 0)));
  _mm512_storeu_ps(out + 48, _mm512_shuffle_f32x4(t45, t67, _MM_SHUFFLE(3, 1, 3, 1)));
  return Softmax ? _mm512_reduce_add_ps(exp_sum) : 0.f;
}

}  // namespace

float softmax_weighted_q8_head(const float* scores, float top, const float* value_scales, const int8_t* values,
                               int64_t positions, int64_t dh, float* out) {
  return dh == 64 ? weighted_q8_64<true>(scores, top, value_scales, values, positions, out)
                  : softmax_weighted_head(scores, top, value_scales, values, positions, dh, load16_int8, out);
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
  if (dh == 64) {  // (every MusicGen) by VNNI, as the decode step's
    auto scaled = (weights * value_scales.narrow(1, 0, positions)).contiguous();
    const float* wp = scaled.data_ptr<float>();
    const int8_t* vp = values.data_ptr<int8_t>();
    float* op = out.data_ptr<float>();
    at::parallel_for(0, bh, 1, [&](int64_t begin, int64_t end) {
      for (int64_t h = begin; h < end; ++h)
        weighted_q8_64<false>(wp + h * positions, 0.f, nullptr, vp + h * capacity * 64, positions, op + h * 64);
    });
    return out;
  }
  const float* sp = value_scales.data_ptr<float>();
  weighted_loop(weights.data_ptr<float>(), values.data_ptr<int8_t>(), bh, positions, capacity, dh, load16_int8,
                [sp, capacity](int64_t h, int64_t t) { return sp[h * capacity + t]; }, out.data_ptr<float>());
  return out;
}
