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
//   scores_q4_head(q [64] fp32, keys [T, 32] uint8, key scales [T], T, scale, out [T]) -> max
//   softmax_weighted_q4_head(scores [T], their max, value scales [T], values [T, 32], T, out [64])
//     -> sum of the exps: out = sum_t exp(score_t - max) value_t, unnormalised (the softmax's
//     exps computed block by block as the values stream in, not in a pass of their own)
//   scores_q4 / weighted_q4: over [BH, P, 32] caches (weighted_q4 from softmax weights), heads
//   spread over torch's threads.
#include "attention.h"
#include "kernels.h"
#include "vmath.h"
#include <ATen/Parallel.h>
#include <cmath>

namespace {

// 64 bytes -> their low nibbles and their high nibbles, each as 64 bytes.
inline void split_nibbles(__m512i bytes, __m512i* low, __m512i* high) {
  const __m512i nibble = _mm512_set1_epi8(0x0F);
  *low = _mm512_and_si512(bytes, nibble);
  *high = _mm512_and_si512(_mm512_srli_epi16(bytes, 4), nibble);
}

// The first `bytes` (0-64) of 64.
inline __mmask64 byte_mask(int64_t bytes) {
  return bytes <= 0 ? 0 : bytes >= 64 ? ~__mmask64{0} : (__mmask64{1} << bytes) - 1;
}

// Eight vectors of partial sums, each for two positions (lanes 0-7: one, 8-15: the next) -> the
// 16 totals in position order: sum16's first two rounds of interleaved adds (within each 128-bit
// block: the block's sum for 4 vectors), then one round across blocks and one permute.
inline __m512i pair_sums8(const __m512i* v) {
  const __m512i quads[2] = {block_sums4(v), block_sums4(v + 4)};
  // blocks (0 + 1) and (2 + 3) of each: lane 4 k + i = vector 4 (k / 2) + i, its position k % 2
  const __m512i halves = _mm512_add_epi32(_mm512_shuffle_i32x4(quads[0], quads[1], _MM_SHUFFLE(2, 0, 2, 0)),
                                          _mm512_shuffle_i32x4(quads[0], quads[1], _MM_SHUFFLE(3, 1, 3, 1)));
  const __m512i order = _mm512_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7, 8, 12, 9, 13, 10, 14, 11, 15);
  return _mm512_permutexvar_epi32(order, halves);
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

float scores_q4_head(const float* q, const uint8_t* keys, const float* key_scales, int64_t positions, float scale,
                     float* out) {
  __m512 peak = _mm512_set1_ps(-INFINITY);
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
  const int64_t ahead = rows_ahead(32);
  for (; t + 16 <= positions; t += 16) {
    fetch_rows(keys, t + ahead, 16, 32, positions);
    fetch_rows(key_scales, t + ahead, 16, 4, positions);
    __m512i partial[8];
    for (int i = 0; i < 8; ++i) partial[i] = pair(t + 2 * i);
    const __m512 sums = _mm512_cvtepi32_ps(_mm512_sub_epi32(pair_sums8(partial), offset));
    const __m512 scores = _mm512_mul_ps(_mm512_mul_ps(sums, factor), _mm512_loadu_ps(key_scales + t));
    peak = _mm512_max_ps(peak, scores);
    _mm512_storeu_ps(out + t, scores);
  }
  float top = _mm512_reduce_max_ps(peak);
  for (; t < positions; ++t) {  // one at a time: the 32 bytes as the low half
    const __m512i bytes = _mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(keys + t * 32)));
    __m512i low, high;
    split_nibbles(bytes, &low, &high);
    const __m512i acc = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), low, q_low), high, q_high);
    const int32_t dot = _mm512_mask_reduce_add_epi32(0x00FF, acc) - 8 * q_sum;
    out[t] = static_cast<float>(dot) * q_scale * scale * key_scales[t];
    top = std::max(top, out[t]);
  }
  return top;
}

namespace {

// out [64] = sum_t w_t v_t, where (Softmax) w_t = exp(w[t] - top) value_scales[t] (w: scores)
// -> the sum of the exps; else w_t = w[t] (softmax weights times value scales) -> 0. Each block of
// 64 positions takes its weights first, so the exps are computed between the values' loads: in a
// pass of their own, over the scores, whole int4 steps at 1250 positions took 1.026x the time.
template <bool Softmax>
float weighted_q4(const float* w, float top, const float* value_scales, const uint8_t* values, int64_t positions,
                  float* out) {
  // vpdpbusd sums 4 products per 32-bit lane: lane d must hold number d of 4 consecutive
  // positions, and the 4 weights are broadcast beside it. So the weights are held as two uint8
  // digits per block of 64 positions (attention.h's WeightDigits), and each 4 positions' 128
  // bytes are transposed by two dword permutes (the 16-byte quarters of the 4 rows: bytes 0-15
  // of each, then 16-31) and a byte shuffle within each 128-bit lane (4 x 4 bytes), both
  // AVX-512F/BW. Lane d of the first then holds byte d of each row: numbers d (low nibbles) and
  // d + 32 (high); of the second, 16 + d and 48 + d.
  alignas(64) static const int32_t kFirst[16] = {0, 8, 16, 24, 1, 9, 17, 25, 2, 10, 18, 26, 3, 11, 19, 27};
  alignas(64) static const int32_t kSecond[16] = {4, 12, 20, 28, 5, 13, 21, 29, 6, 14, 22, 30, 7, 15, 23, 31};
  alignas(64) static const int8_t kTranspose[64] = {0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15,
                                                    0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15,
                                                    0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15,
                                                    0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15};
  const __m512i first = _mm512_load_si512(kFirst), second = _mm512_load_si512(kSecond);
  const __m512i transpose = _mm512_load_si512(kTranspose), nibble = _mm512_set1_epi8(0x0F);
  __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
  float weight_sum = 0.f;  // of the rounded weights, for the codes' offset of 8
  __m512 exp_sum = _mm512_setzero_ps();
  const __m512 top16 = _mm512_set1_ps(top);
  for (int64_t b0 = 0; b0 < positions; b0 += 64) {
    const int64_t n = std::min<int64_t>(64, positions - b0);
    WeightDigits weights;
    if (!weights.load<Softmax>(w, top16, value_scales, b0, n, positions, exp_sum)) continue;
    DigitSums sums;
    for (int64_t g = 0; g < n; g += 4) {
      const uint8_t* rows = values + (b0 + g) * 32;
      fetch_rows(values, b0 + g + rows_ahead(32), 4, 32, positions);
      const int64_t bytes = std::min<int64_t>(4, n - g) * 32;  // (the last group may hold fewer rows)
      const __m512i r0 = bytes == 128 ? _mm512_loadu_si512(rows) : _mm512_maskz_loadu_epi8(byte_mask(bytes), rows);
      const __m512i r1 = bytes == 128 ? _mm512_loadu_si512(rows + 64)
                                      : _mm512_maskz_loadu_epi8(byte_mask(bytes - 64), rows + 64);
      const __m512i a = _mm512_shuffle_epi8(_mm512_permutex2var_epi32(r0, first, r1), transpose);
      const __m512i b = _mm512_shuffle_epi8(_mm512_permutex2var_epi32(r0, second, r1), transpose);
      const __m512i codes[4] = {_mm512_and_si512(a, nibble), _mm512_and_si512(b, nibble),
                                _mm512_and_si512(_mm512_srli_epi16(a, 4), nibble),
                                _mm512_and_si512(_mm512_srli_epi16(b, 4), nibble)};
      sums.add(weights, g, codes);
    }
    sums.into(weights, acc);
    weight_sum += weights.total();
  }
  const __m512 offset = _mm512_set1_ps(8.f * weight_sum);
  for (int j = 0; j < 4; ++j) _mm512_storeu_ps(out + 16 * j, _mm512_sub_ps(acc[j], offset));
  return Softmax ? _mm512_reduce_add_ps(exp_sum) : 0.f;
}

}  // namespace

float softmax_weighted_q4_head(const float* scores, float top, const float* value_scales, const uint8_t* values,
                               int64_t positions, float* out) {
  return weighted_q4<true>(scores, top, value_scales, values, positions, out);
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
      weighted_q4<false>(wp + h * positions, 0.f, nullptr, vp + h * capacity * 32, positions, op + h * 64);
  });
  return out;
}
