// Single-query attention over a cache of any element type, one head at a time: the scores q.k
// and the softmax-weighted sum of the values, reading each cached row once and converting it 16
// numbers at a time (`load16`), times an optional per-row scale (`row_scale(t)`: the 8-bit
// cache's; 1 for fp16). The *_loop functions spread heads over torch's threads (the separate
// kernels of decode_attention.cpp and kv8_attention.cpp); the fused step (decode_step.cpp) calls
// the per-head functions itself. Dh % 16 == 0, Dh <= 256.
#pragma once
#include <ATen/Parallel.h>
#include "vmath.h"
#include <immintrin.h>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

// 16 cached numbers as floats: fp16 (F16C), int8, fp32. (Lambdas, so that the loops inline them.)
static const auto load16_fp16 = [](const uint16_t* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
};
static const auto load16_int8 = [](const int8_t* p) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
};
static const auto load16_fp32 = [](const float* p) { return _mm512_loadu_ps(p); };

// The attention reads each head's keys and values as streams of tens of KB, with arithmetic
// between the loads that keeps few of them in flight: the loops fetch kStreamAheadBytes ahead of
// where they read, up to the stream's end (the rows past it are not read). The self-attention of
// an int4 step at 1250 positions over the 4-bit cache took 0.65x the time with 4 KiB (torch's
// sum() at 78 GB/s; 0.74x at 45-52 GB/s), 0.73x with 2 KiB, and more again with 8 or 16 KiB;
// T0 and NTA alike (alternated in one process, bench/results/README.md, session 14).
constexpr int64_t kStreamAheadBytes = 4096;
// A head's per-position scales (4 bytes a position) are fetched this far ahead: the decode step
// fetches their first 2 KiB as a task starts (decode_step.cpp), the loops that stream them the rest.
constexpr int64_t kScalesAheadBytes = 2048;

// Rows of `row_bytes` this far ahead of the row a loop reads.
inline int64_t rows_ahead(int64_t row_bytes) { return std::max<int64_t>(1, kStreamAheadBytes / row_bytes); }

// Fetch rows first .. first + count - 1 of `row_bytes` from `base`, those before row `end`.
inline void fetch_rows(const void* base, int64_t first, int64_t count, int64_t row_bytes, int64_t end) {
  const char* p = static_cast<const char*>(base);
  for (int64_t o = first * row_bytes; o < std::min(first + count, end) * row_bytes; o += 64)
    _mm_prefetch(p + o, _MM_HINT_T0);
}

// out [T] = scale * q.k_t * row_scale(t) -> the largest.
template <typename T, typename Load, typename RowScale>
inline float scores_head(const float* q, const T* k, int64_t positions, int64_t dh, float scale, Load load16,
                         RowScale row_scale, float* out) {
  const int64_t ahead = rows_ahead(dh * sizeof(T));
  float top = -INFINITY;
  for (int64_t t = 0; t < positions; ++t) {
    const T* row = k + t * dh;
    fetch_rows(k, t + ahead, 1, dh * sizeof(T), positions);
    __m512 acc = _mm512_setzero_ps();
    for (int64_t d = 0; d < dh; d += 16) acc = _mm512_fmadd_ps(load16(row + d), _mm512_loadu_ps(q + d), acc);
    out[t] = _mm512_reduce_add_ps(acc) * scale * row_scale(t);
    top = std::max(top, out[t]);
  }
  return top;
}

// The softmax weights of scores s[first ..] (the lanes of `lanes`): exp(s - top), added to
// `exp_sum`, times their value scales (null: 1).
inline __m512 softmax_weights16(const float* s, __m512 top16, const float* value_scales, int64_t first,
                                __mmask16 lanes, __m512& exp_sum) {
  __m512 e = _mm512_maskz_mov_ps(lanes, exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(lanes, s + first), top16)));
  exp_sum = _mm512_add_ps(exp_sum, e);
  return value_scales != nullptr ? _mm512_mul_ps(e, _mm512_maskz_loadu_ps(lanes, value_scales + first)) : e;
}

// out [Dh] = sum_t exp(s[t] - top) value_scales[t] v[t] (value_scales null: 1), unnormalised ->
// sum_t exp(s[t] - top). The softmax's exps are taken 16 positions at a time between the values'
// loads, not in a pass of their own over the scores (whole steps at 1250 positions: 0.97x the
// time over the 4-bit cache, kv4_attention.cpp).
template <typename T, typename Load>
inline float softmax_weighted_head(const float* s, float top, const float* value_scales, const T* v, int64_t positions,
                                   int64_t dh, Load load16, float* out) {
  __m512 acc[16];
  const int64_t blocks = dh / 16;
  for (int64_t j = 0; j < blocks; ++j) acc[j] = _mm512_setzero_ps();
  const int64_t ahead = rows_ahead(dh * sizeof(T));
  const __m512 top16 = _mm512_set1_ps(top);
  __m512 exp_sum = _mm512_setzero_ps();
  alignas(64) float weights[16];
  for (int64_t first = 0; first < positions; first += 16) {
    if (value_scales != nullptr) fetch_rows(value_scales, first + kScalesAheadBytes / 4, 16, 4, positions);
    _mm512_store_ps(weights, softmax_weights16(s, top16, value_scales, first, first_lanes(first, positions), exp_sum));
    for (int64_t t = first; t < std::min<int64_t>(first + 16, positions); ++t) {
      const __m512 wt = _mm512_set1_ps(weights[t - first]);
      const T* row = v + t * dh;
      fetch_rows(v, t + ahead, 1, dh * sizeof(T), positions);
      for (int64_t j = 0; j < blocks; ++j) acc[j] = _mm512_fmadd_ps(wt, load16(row + 16 * j), acc[j]);
    }
  }
  for (int64_t j = 0; j < blocks; ++j) _mm512_storeu_ps(out + 16 * j, acc[j]);
  return _mm512_reduce_add_ps(exp_sum);
}

// out [Dh] = sum_t w[t] row_scale(t) v[t].
template <typename T, typename Load, typename RowScale>
inline void weighted_head(const float* w, const T* v, int64_t positions, int64_t dh, Load load16,
                          RowScale row_scale, float* out) {
  __m512 acc[16];
  const int64_t blocks = dh / 16;
  for (int64_t j = 0; j < blocks; ++j) acc[j] = _mm512_setzero_ps();
  const int64_t ahead = rows_ahead(dh * sizeof(T));
  for (int64_t t = 0; t < positions; ++t) {
    const __m512 wt = _mm512_set1_ps(w[t] * row_scale(t));
    const T* row = v + t * dh;
    fetch_rows(v, t + ahead, 1, dh * sizeof(T), positions);
    for (int64_t j = 0; j < blocks; ++j) acc[j] = _mm512_fmadd_ps(wt, load16(row + 16 * j), acc[j]);
  }
  for (int64_t j = 0; j < blocks; ++j) _mm512_storeu_ps(out + 16 * j, acc[j]);
}

// A block of up to 64 positions' attention weights as two uint8 digits each, and their products
// with the block's values by vpdpbusd (the weighted sums over the 4-bit and 8-bit caches,
// kv4_attention.cpp and kv8_attention.cpp): w / scale = high + low / 255 with scale = the block's
// largest / 255, so that a softmax's small weights beside a large one are not rounded away (each
// within 1 / 130000 of the block's largest). `load<true>`: w are scores and each weight is
// exp(w - top) times its value scale (the scales fetched kScalesAheadBytes ahead), the exps added
// to `exp_sum`; `load<false>`: w are the weights (times the value scales). Positions past the
// block's n get 0. Then DigitSums' `add` for each 4 positions' values and `into` the float sums
// (`total`: the weights as rounded, summed, for the 4-bit codes' offset).
struct WeightDigits {
  alignas(64) uint8_t digits[2][64];  // high, low
  __m512i count[2];                   // each digit's sum over the block, by lane
  float largest;                      // the block's largest weight

  // Positions first .. first + n - 1 (n <= 64) of `positions`: false where no weight is above 0.
  template <bool Softmax>
  bool load(const float* w, __m512 top16, const float* value_scales, int64_t first, int64_t n, int64_t positions,
            __m512& exp_sum) {
    __m512 block[4];
    __m512 peak = _mm512_setzero_ps();
    if (Softmax) fetch_rows(value_scales, first + kScalesAheadBytes / 4, 64, 4, positions);
    for (int i = 0; i < 4; ++i) {
      const __mmask16 lanes = first_lanes(16 * i, n);
      block[i] = Softmax ? softmax_weights16(w, top16, value_scales, first + 16 * i, lanes, exp_sum)
                         : _mm512_maskz_loadu_ps(lanes, w + first + 16 * i);
      peak = _mm512_max_ps(peak, block[i]);
    }
    largest = _mm512_reduce_max_ps(peak);
    if (!(largest > 0.f)) return false;  // (weights are >= 0) nothing to add
    const __m512 inverse = _mm512_set1_ps(255.f / largest);
    count[0] = count[1] = _mm512_setzero_si512();
    for (int i = 0; i < 4; ++i) {
      const __m512 x = _mm512_min_ps(_mm512_mul_ps(block[i], inverse), _mm512_set1_ps(255.f));
      const __m512 high = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
      const __m512i q[2] = {_mm512_cvtps_epi32(high),
                            _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_sub_ps(x, high), _mm512_set1_ps(255.f)))};
      for (int k = 0; k < 2; ++k) {
        count[k] = _mm512_add_epi32(count[k], q[k]);
        _mm_store_si128(reinterpret_cast<__m128i*>(digits[k] + 16 * i), _mm512_cvtusepi32_epi8(q[k]));
      }
    }
    return true;
  }
  // The block's weights as rounded to their digits, summed.
  float total() const {
    return largest / 255.f * (static_cast<float>(_mm512_reduce_add_epi32(count[0])) +
                              static_cast<float>(_mm512_reduce_add_epi32(count[1])) / 255.f);
  }
};

// A block's products of its weights' digits and its values, by lane. The caller's own, apart from
// WeightDigits (whose digits the loop loads from memory): held there, the compiler stored all 8
// to memory after every 4 positions, and the 4-bit cache's weighted sum took 1.24x the time
// (measured in L2, one core).
struct DigitSums {
  __m512i sums[2][4];  // the high and the low digits' products so far, by lane

  DigitSums() {
    for (auto& set : sums)
      for (auto& a : set) a = _mm512_setzero_si512();
  }
  // Positions g .. g + 3 of the block: values[j]'s 32-bit lane i holds a number of each of the
  // four (signed bytes, or 4-bit codes as unsigned ones), summed times their weights into sums[.][j].
  void add(const WeightDigits& weights, int64_t g, const __m512i values[4]) {
    for (int k = 0; k < 2; ++k) {
      int32_t four;  // digit k of the four positions, in every lane
      std::memcpy(&four, weights.digits[k] + g, 4);
      const __m512i w = _mm512_set1_epi32(four);
      for (int j = 0; j < 4; ++j) sums[k][j] = _mm512_dpbusd_epi32(sums[k][j], w, values[j]);
    }
  }
  // acc[j] += the block's weighted sums in lane order of values[j].
  void into(const WeightDigits& weights, __m512 acc[4]) const {
    const float largest = weights.largest;
    const __m512 high = _mm512_set1_ps(largest / 255.f), low = _mm512_set1_ps(largest / 255.f / 255.f);
    for (int j = 0; j < 4; ++j)
      acc[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums[1][j]), low,
                               _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums[0][j]), high, acc[j]));
  }
};

// Heads h of [BH, capacity, Dh] caches; `row_scale(h, t)`.
template <typename T, typename Load, typename RowScale>
void scores_loop(const float* qp, const T* kp, int64_t bh, int64_t positions, int64_t capacity, int64_t dh,
                 float scale, Load load16, RowScale row_scale, float* op) {
  at::parallel_for(0, bh, 1, [&](int64_t begin, int64_t end) {
    for (int64_t h = begin; h < end; ++h)
      scores_head(qp + h * dh, kp + h * capacity * dh, positions, dh, scale, load16,
                  [&](int64_t t) { return row_scale(h, t); }, op + h * positions);
  });
}

template <typename T, typename Load, typename RowScale>
void weighted_loop(const float* wp, const T* vp, int64_t bh, int64_t positions, int64_t capacity, int64_t dh,
                   Load load16, RowScale row_scale, float* op) {
  at::parallel_for(0, bh, 1, [&](int64_t begin, int64_t end) {
    for (int64_t h = begin; h < end; ++h)
      weighted_head(wp + h * positions, vp + h * capacity * dh, positions, dh, load16,
                    [&](int64_t t) { return row_scale(h, t); }, op + h * dh);
  });
}

// Four vectors of 16 int32 -> each 128-bit block: the sums over that block of w[0], w[1], w[2],
// w[3] (two rounds of interleaved adds).
inline __m512i block_sums4(const __m512i* w) {
  const __m512i ab = _mm512_add_epi32(_mm512_unpacklo_epi32(w[0], w[1]), _mm512_unpackhi_epi32(w[0], w[1]));
  const __m512i cd = _mm512_add_epi32(_mm512_unpacklo_epi32(w[2], w[3]), _mm512_unpackhi_epi32(w[2], w[3]));
  return _mm512_add_epi32(_mm512_unpacklo_epi64(ab, cd), _mm512_unpackhi_epi64(ab, cd));
}

// Sixteen vectors of 16 int32 partial sums -> one vector of their 16 totals (lane i: v[i]'s),
// by interleaving adds: 45 instructions where 16 separate horizontal sums take about 150.
inline __m512i sum16(const __m512i* v) {
  const __m512i quads[4] = {block_sums4(v), block_sums4(v + 4), block_sums4(v + 8), block_sums4(v + 12)};
  const __m512i q01 = _mm512_add_epi32(_mm512_shuffle_i32x4(quads[0], quads[1], _MM_SHUFFLE(2, 0, 2, 0)),
                                       _mm512_shuffle_i32x4(quads[0], quads[1], _MM_SHUFFLE(3, 1, 3, 1)));
  const __m512i q23 = _mm512_add_epi32(_mm512_shuffle_i32x4(quads[2], quads[3], _MM_SHUFFLE(2, 0, 2, 0)),
                                       _mm512_shuffle_i32x4(quads[2], quads[3], _MM_SHUFFLE(3, 1, 3, 1)));
  return _mm512_add_epi32(_mm512_shuffle_i32x4(q01, q23, _MM_SHUFFLE(2, 0, 2, 0)),
                          _mm512_shuffle_i32x4(q01, q23, _MM_SHUFFLE(3, 1, 3, 1)));
}
