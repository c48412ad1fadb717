// Single-query attention over a 4-bit KV cache, for the CPU decode step (AVX-512 VNNI), heads of
// 64 (every MusicGen): a quarter of the fp16 cache's bytes, half of the 8-bit one's.
//
// Each cached key (value) row of 64 numbers x is stored as codes n = round(x / s) + 8 in 1..15,
// with one fp32 scale s = max |x| / 7 per head and position (symmetric, as the 8-bit cache), two
// codes to a byte: byte j holds number j in its low nibble and number j + 32 in its high one, so
// that two masks and a shift give a row's 64 codes in order. The code is unsigned, the unsigned
// side of vpdpbusd: q.k = s (q.n - 8 sum q) needs no sign trick, and a weighted sum of values is
// sum w s n - 8 sum w s.
//
//   quantize_row4(x [64] fp32, out [32] uint8) -> s
//   scores_q4_head(q [64] fp32, keys [T, 32] uint8, key scales [T], T, scale, out [T])
//   weighted_q4_head(w [T] fp32 (the softmax weights times the value scales), values [T, 32],
//     T, out [64])
//   scores_q4 / weighted_q4: the same over [BH, P, 32] caches, heads spread over torch's threads.
#include "attention.h"
#include "kernels.h"
#include <ATen/Parallel.h>
#include <cmath>

namespace {

// 64 bytes -> their low nibbles and their high nibbles, each as 64 bytes.
inline void split_nibbles(__m512i bytes, __m512i* low, __m512i* high) {
  const __m512i nibble = _mm512_set1_epi8(0x0F);
  *low = _mm512_and_si512(bytes, nibble);
  *high = _mm512_and_si512(_mm512_srli_epi16(bytes, 4), nibble);
}

// Lanes 0-7 summed and lanes 8-15 summed, of 8 vectors: 16 totals, lane 2i + j: v[i]'s half j.
inline __m512i half_sums8(const __m512i* v) {
  __m512i halves[16];
  for (int i = 0; i < 8; ++i) {
    halves[2 * i] = _mm512_maskz_mov_epi32(0x00FF, v[i]);
    halves[2 * i + 1] = _mm512_maskz_mov_epi32(0xFF00, v[i]);
  }
  return sum16(halves);
}

}  // namespace

float quantize_row4(const float* x, uint8_t* out) {
  __m512 peak16 = _mm512_setzero_ps();
  for (int i = 0; i < 64; i += 16) peak16 = _mm512_max_ps(peak16, _mm512_abs_ps(_mm512_loadu_ps(x + i)));
  const float peak = _mm512_reduce_max_ps(peak16);
  const float s = peak > 0.f ? peak / 7.f : 1.f;
  const __m512 inverse = _mm512_set1_ps(1.f / s);
  __m128i codes[4];
  for (int i = 0; i < 4; ++i) {  // round to nearest even, + 8, kept in 0..15
    const __m512i q = _mm512_add_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(x + 16 * i), inverse)),
                                       _mm512_set1_epi32(8));
    codes[i] = _mm512_cvtepi32_epi8(_mm512_min_epi32(_mm512_max_epi32(q, _mm512_setzero_si512()), _mm512_set1_epi32(15)));
  }
  // (a code is below 16: shifting 16-bit lanes by 4 moves nothing across bytes)
  _mm_storeu_si128(reinterpret_cast<__m128i*>(out), _mm_or_si128(codes[0], _mm_slli_epi16(codes[2], 4)));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(out + 16), _mm_or_si128(codes[1], _mm_slli_epi16(codes[3], 4)));
  return s;
}

void scores_q4_head(const float* q, const uint8_t* keys, const float* key_scales, int64_t positions, float scale,
                    float* out) {
  alignas(64) int8_t q8[64];
  const float q_scale = quantize_row<0>(q, 64, q8);
  int32_t q_sum = 0;
  for (int i = 0; i < 64; ++i) q_sum += q8[i];
  // Two positions per 64-byte load: [t's bytes 0-31 | t + 1's]; their low nibbles are numbers
  // 0-31 of each, their high ones 32-63. So q's first and second halves, each twice.
  const __m256i first = _mm256_load_si256(reinterpret_cast<const __m256i*>(q8));
  const __m256i second = _mm256_load_si256(reinterpret_cast<const __m256i*>(q8 + 32));
  const __m512i q_low = _mm512_inserti64x4(_mm512_castsi256_si512(first), first, 1);
  const __m512i q_high = _mm512_inserti64x4(_mm512_castsi256_si512(second), second, 1);
  const __m512 factor = _mm512_set1_ps(q_scale * scale);
  const __m512i offset = _mm512_set1_epi32(8 * q_sum);
  auto pair = [&](int64_t t) {  // lanes 0-7: partial sums of q8.n for t, 8-15: for t + 1
    __m512i low, high;
    split_nibbles(_mm512_loadu_si512(reinterpret_cast<const void*>(keys + t * 32)), &low, &high);
    return _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), low, q_low), high, q_high);
  };
  int64_t t = 0;
  for (; t + 16 <= positions; t += 16) {
    __m512i partial[8];
    for (int i = 0; i < 8; ++i) partial[i] = pair(t + 2 * i);
    const __m512 sums = _mm512_cvtepi32_ps(_mm512_sub_epi32(half_sums8(partial), offset));
    _mm512_storeu_ps(out + t, _mm512_mul_ps(_mm512_mul_ps(sums, factor), _mm512_loadu_ps(key_scales + t)));
  }
  for (; t < positions; ++t) {  // one at a time: the 32 bytes as the low half
    const __m512i bytes = _mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(keys + t * 32)));
    __m512i low, high;
    split_nibbles(bytes, &low, &high);
    const __m512i acc = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), low, q_low), high, q_high);
    const int32_t dot = _mm512_mask_reduce_add_epi32(0x00FF, acc) - 8 * q_sum;
    out[t] = static_cast<float>(dot) * q_scale * scale * key_scales[t];
  }
}

void weighted_q4_head(const float* w, const uint8_t* values, int64_t positions, float* out) {
  // Each 16 bytes zero-extended to 16 int32 straight from memory (one shuffle), then the low
  // nibble by a mask and the high one by a shift: half the shuffles of splitting the bytes first.
  // Two sets of sums (even and odd positions) so that consecutive multiply-adds do not wait on
  // each other.
  __m512 acc[2][4], total[2];
  for (int p = 0; p < 2; ++p) {
    total[p] = _mm512_setzero_ps();
    for (auto& a : acc[p]) a = _mm512_setzero_ps();
  }
  const __m512i nibble = _mm512_set1_epi32(0x0F);
  auto add = [&](int p, int64_t t) {
    const __m512 wt = _mm512_set1_ps(w[t]);
    for (int half = 0; half < 2; ++half) {  // bytes 0-15: numbers 0-15 and 32-47; 16-31: 16-31 and 48-63
      const auto* at = reinterpret_cast<const __m128i*>(values + t * 32 + 16 * half);
      const __m512i bytes = _mm512_cvtepu8_epi32(_mm_loadu_si128(at));
      acc[p][half] = _mm512_fmadd_ps(wt, _mm512_cvtepi32_ps(_mm512_and_si512(bytes, nibble)), acc[p][half]);
      acc[p][2 + half] = _mm512_fmadd_ps(wt, _mm512_cvtepi32_ps(_mm512_srli_epi32(bytes, 4)), acc[p][2 + half]);
    }
    total[p] = _mm512_add_ps(total[p], wt);
  };
  int64_t t = 0;
  for (; t + 2 <= positions; t += 2) {
    add(0, t);
    add(1, t + 1);
  }
  if (t < positions) add(0, t);
  const __m512 offset = _mm512_mul_ps(_mm512_add_ps(total[0], total[1]), _mm512_set1_ps(8.f));  // the codes' 8
  for (int j = 0; j < 4; ++j) _mm512_storeu_ps(out + 16 * j, _mm512_sub_ps(_mm512_add_ps(acc[0][j], acc[1][j]), offset));
}

static void check_q4(const at::Tensor& cache, const at::Tensor& scales, int64_t bh) {
  TORCH_CHECK(cache.scalar_type() == at::kByte && cache.is_contiguous(), "cache: contiguous uint8 (4-bit codes)");
  TORCH_CHECK(cache.dim() == 3 && cache.size(0) == bh && cache.size(2) == 32, "cache: [BH, P, 32] (heads of 64)");
  TORCH_CHECK(scales.scalar_type() == at::kFloat && scales.is_contiguous() && scales.dim() == 2 &&
              scales.size(0) == bh && scales.size(1) == cache.size(1), "scales: [BH, P] fp32");
}

at::Tensor scores_q4(at::Tensor q, at::Tensor keys, at::Tensor key_scales, int64_t positions) {
  TORCH_CHECK(q.scalar_type() == at::kFloat && q.is_contiguous() && q.dim() == 2 && q.size(1) == 64,
              "q: [BH, 64] fp32");
  const int64_t bh = q.size(0), capacity = keys.size(1);
  check_q4(keys, key_scales, bh);
  TORCH_CHECK(positions > 0 && positions <= capacity, "positions out of range");
  auto out = at::empty({bh, positions}, q.options());
  const float* qp = q.data_ptr<float>();
  const uint8_t* kp = keys.data_ptr<uint8_t>();
  const float* sp = key_scales.data_ptr<float>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, bh, 1, [&](int64_t begin, int64_t end) {
    for (int64_t h = begin; h < end; ++h)
      scores_q4_head(qp + h * 64, kp + h * capacity * 32, sp + h * capacity, positions, 1.f / 8.f, op + h * positions);
  });
  return out;
}

at::Tensor weighted_q4(at::Tensor weights, at::Tensor values, at::Tensor value_scales) {
  TORCH_CHECK(weights.scalar_type() == at::kFloat && weights.is_contiguous() && weights.dim() == 2,
              "weights: [BH, T] fp32");
  const int64_t bh = weights.size(0), positions = weights.size(1), capacity = values.size(1);
  check_q4(values, value_scales, bh);
  TORCH_CHECK(positions <= capacity, "positions out of range");
  auto scaled = (weights * value_scales.narrow(1, 0, positions)).contiguous();
  auto out = at::empty({bh, 64}, weights.options());
  const float* wp = scaled.data_ptr<float>();
  const uint8_t* vp = values.data_ptr<uint8_t>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, bh, 1, [&](int64_t begin, int64_t end) {
    for (int64_t h = begin; h < end; ++h)
      weighted_q4_head(wp + h * positions, vp + h * capacity * 32, positions, op + h * 64);
  });
  return out;
}
