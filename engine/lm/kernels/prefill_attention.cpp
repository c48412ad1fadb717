// Causal attention of a prefill chunk over the 8-bit or 4-bit KV cache (CPU, AVX-512 BF16), for
// heads of 64 (every MusicGen).
//
// torch's CPU attention for a chunk of 256 queries over up to 1000 positions runs at about
// 90 GFLOPS here: 1 s of a 20 s context's 3.5 s prefill on 2 cores. Here both products run on
// vdpbf16ps (32 multiply-adds per instruction): the cached int8 keys and values, or the 4-bit
// cache's codes minus 8, are exact in bf16 (their scales are applied outside the products); the
// queries and the softmax weights are rounded to bf16 (8 significant bits, to nearest even). Per
// head, the cached rows are laid out once per chunk in the pairs vdpbf16ps reads; queries go four
// at a time against 64 positions at a time (16 sums in registers), then four at a time through
// the values.
//
//   prefill_attention_q8(q [B, H, T, 64] fp32, keys, values [B, H, P, 64] int8 or [B, H, P, 32]
//     uint8 4-bit codes (rows contiguous), key_scales, value_scales [B, H, P] fp32, start)
//     -> [B, H, T, 64] fp32
// Query i sits at position start + i and attends to positions 0..start + i, already cached.
#include "attention.h"
#include "kernels.h"
#include "vmath.h"
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <cmath>
#include <vector>

namespace {

constexpr int64_t kDh = 64;          // head dim
constexpr int64_t kPairs = kDh / 2;  // bf16 pairs per row
constexpr int64_t kQueries = 4;      // queries per block
constexpr int64_t kPositions = 64;   // positions per block of scores

// 32 floats (a: the first 16, b: the next) as 16 words of two bf16, word j = (x[2j], x[2j + 1]).
inline __m512i consecutive_pairs(__m512 a, __m512 b) {
  return reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(b, a));
}

// Two rows of 16 integers held exactly as floats -> word d = (first[d], second[d]) as bf16 (an
// integer of 8 bits is exact in bf16: its float's top 16 bits).
inline __m512i interleaved_pairs(__m512 first, __m512 second) {
  const __m512i top = _mm512_set1_epi32(static_cast<int>(0xFFFF0000u));
  return _mm512_or_si512(_mm512_and_si512(_mm512_castps_si512(second), top),
                         _mm512_srli_epi32(_mm512_castps_si512(first), 16));
}

inline __m512 dot(__m512 acc, __m512i a, __m512i b) {
  return _mm512_dpbf16_ps(acc, reinterpret_cast<__m512bh>(a), reinterpret_cast<__m512bh>(b));
}

// Cached rows of one head, as integers held exactly in floats (times the row's scale, applied
// outside): int8 [P, 64], or 4-bit codes [P, 32] (kv4_attention.cpp: the code minus 8).
struct Int8Rows {
  const int8_t* rows;
  __m512 load16(int64_t t, int64_t d) const { return load16_int8(rows + t * kDh + d); }
};
struct Int4Rows {
  const uint8_t* rows;
  __m512 load16(int64_t t, int64_t d) const {  // numbers d..d + 15: low nibbles below 32, else high
    const auto* at = reinterpret_cast<const __m128i*>(rows + t * kPairs + d % kPairs);
    const __m512i bytes = _mm512_cvtepu8_epi32(_mm_loadu_si128(at));
    const __m512i codes = d < kPairs ? _mm512_and_si512(bytes, _mm512_set1_epi32(0x0F)) : _mm512_srli_epi32(bytes, 4);
    return _mm512_cvtepi32_ps(_mm512_sub_epi32(codes, _mm512_set1_epi32(8)));
  }
};

// One head: q [T, 64], keys / values [>= start + T] rows with their scales, out [T, 64].
template <typename Rows>
void head(const float* q, Rows keys, Rows values, const float* key_scales,
          const float* value_scales, int64_t queries, int64_t start, float* out) {
  const int64_t end = start + queries;
  const int64_t padded = (end + kPositions - 1) / kPositions * kPositions;
  std::vector<uint32_t> k2(kPairs * padded, 0);   // K2[d2][t] = (k[t][2 d2], k[t][2 d2 + 1])
  std::vector<uint32_t> v2(padded / 2 * kDh, 0);  // V2[t2][d] = (v[2 t2][d], v[2 t2 + 1][d])
  std::vector<float> k_scale(padded, 0.f), v_scale(padded, 0.f);
  alignas(64) uint32_t words[kPairs];
  for (int64_t t = 0; t < end; ++t) {
    _mm512_store_si512(words, consecutive_pairs(keys.load16(t, 0), keys.load16(t, 16)));
    _mm512_store_si512(words + 16, consecutive_pairs(keys.load16(t, 32), keys.load16(t, 48)));
    for (int64_t d2 = 0; d2 < kPairs; ++d2) k2[d2 * padded + t] = words[d2];
    k_scale[t] = key_scales[t];
    v_scale[t] = value_scales[t];
  }
  for (int64_t t = 0; t < end; t += 2)
    for (int64_t d = 0; d < kDh; d += 16) {
      const __m512 second = t + 1 < end ? values.load16(t + 1, d) : _mm512_setzero_ps();
      _mm512_storeu_si512(v2.data() + t / 2 * kDh + d, interleaved_pairs(values.load16(t, d), second));
    }
  const __m512 scale = _mm512_set1_ps(1.f / std::sqrt(static_cast<float>(kDh)));
  std::vector<float> scores(kQueries * padded);
  std::vector<uint32_t> weights(kQueries * padded / 2);
  for (int64_t i0 = 0; i0 < queries; i0 += kQueries) {
    alignas(64) uint32_t q2[kQueries][kPairs];
    int64_t limit[kQueries];  // how many positions each query attends to
    for (int64_t j = 0; j < kQueries; ++j) {
      const int64_t i = std::min(i0 + j, queries - 1);  // (past the last query: a copy, not stored)
      limit[j] = start + i + 1;
      const float* row = q + i * kDh;
      _mm512_store_si512(q2[j], consecutive_pairs(_mm512_loadu_ps(row), _mm512_loadu_ps(row + 16)));
      _mm512_store_si512(q2[j] + 16, consecutive_pairs(_mm512_loadu_ps(row + 32), _mm512_loadu_ps(row + 48)));
    }
    const int64_t span = (limit[kQueries - 1] + kPositions - 1) / kPositions * kPositions;
    // Scores: 4 queries x 64 positions at a time.
    for (int64_t t0 = 0; t0 < span; t0 += kPositions) {
      __m512 acc[kQueries][4];
      for (auto& row : acc)
        for (auto& a : row) a = _mm512_setzero_ps();
      for (int64_t d2 = 0; d2 < kPairs; ++d2) {
        const uint32_t* k = k2.data() + d2 * padded + t0;
        const __m512i kv[4] = {_mm512_loadu_si512(k), _mm512_loadu_si512(k + 16), _mm512_loadu_si512(k + 32),
                               _mm512_loadu_si512(k + 48)};
        for (int64_t j = 0; j < kQueries; ++j) {
          const __m512i qb = _mm512_set1_epi32(static_cast<int>(q2[j][d2]));
          for (int v = 0; v < 4; ++v) acc[j][v] = dot(acc[j][v], qb, kv[v]);
        }
      }
      for (int64_t j = 0; j < kQueries; ++j)
        for (int v = 0; v < 4; ++v) {
          const int64_t t = t0 + 16 * v;
          _mm512_storeu_ps(scores.data() + j * padded + t,
                           _mm512_mul_ps(_mm512_mul_ps(acc[j][v], scale), _mm512_loadu_ps(k_scale.data() + t)));
        }
    }
    // Softmax of each query's positions, times the value scales, as bf16 pairs of positions.
    for (int64_t j = 0; j < kQueries; ++j) {
      float* s = scores.data() + j * padded;
      const int64_t n = limit[j];
      __m512 peak = _mm512_set1_ps(-INFINITY);
      for (int64_t t = 0; t < n; t += 16) peak = _mm512_mask_max_ps(peak, first_lanes(t, n), peak, _mm512_loadu_ps(s + t));
      const __m512 top = _mm512_set1_ps(_mm512_reduce_max_ps(peak));
      __m512 sum = _mm512_setzero_ps();
      for (int64_t t = 0; t < span; t += 16) {
        const __m512 e = _mm512_maskz_mov_ps(first_lanes(t, n), exp16(_mm512_sub_ps(_mm512_loadu_ps(s + t), top)));
        sum = _mm512_add_ps(sum, e);
        _mm512_storeu_ps(s + t, e);
      }
      const __m512 inverse = _mm512_set1_ps(1.f / _mm512_reduce_add_ps(sum));
      uint32_t* w = weights.data() + j * padded / 2;
      for (int64_t t = 0; t < span; t += 32) {
        const __m512 a = _mm512_mul_ps(_mm512_mul_ps(_mm512_loadu_ps(s + t), inverse), _mm512_loadu_ps(v_scale.data() + t));
        const __m512 b = _mm512_mul_ps(_mm512_mul_ps(_mm512_loadu_ps(s + t + 16), inverse),
                                       _mm512_loadu_ps(v_scale.data() + t + 16));
        _mm512_storeu_si512(w + t / 2, consecutive_pairs(a, b));
      }
    }
    // Weighted values: 4 queries x 64 dims, two positions per instruction.
    __m512 acc[kQueries][4];
    for (auto& row : acc)
      for (auto& a : row) a = _mm512_setzero_ps();
    for (int64_t t2 = 0; t2 < span / 2; ++t2) {
      const uint32_t* v = v2.data() + t2 * kDh;
      const __m512i vv[4] = {_mm512_loadu_si512(v), _mm512_loadu_si512(v + 16), _mm512_loadu_si512(v + 32),
                             _mm512_loadu_si512(v + 48)};
      for (int64_t j = 0; j < kQueries; ++j) {
        const __m512i wb = _mm512_set1_epi32(static_cast<int>(weights[j * padded / 2 + t2]));
        for (int d = 0; d < 4; ++d) acc[j][d] = dot(acc[j][d], wb, vv[d]);
      }
    }
    for (int64_t j = 0; j < kQueries && i0 + j < queries; ++j)
      for (int d = 0; d < 4; ++d) _mm512_storeu_ps(out + (i0 + j) * kDh + 16 * d, acc[j][d]);
  }
}

}  // namespace

at::Tensor prefill_attention_q8(at::Tensor q, at::Tensor keys, at::Tensor values, at::Tensor key_scales,
                                at::Tensor value_scales, int64_t start) {
  TORCH_CHECK(q.scalar_type() == at::kFloat && q.dim() == 4 && q.size(3) == kDh, "q: [B, H, T, 64] fp32");
  q = q.contiguous();
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2);
  const bool four = keys.scalar_type() == at::kByte;  // 4-bit codes (kv4_attention.cpp)
  const int64_t width = four ? kPairs : kDh;
  for (const auto* c : {&keys, &values}) {
    TORCH_CHECK(c->scalar_type() == keys.scalar_type() && (four || c->scalar_type() == at::kChar) && c->dim() == 4 &&
                c->size(0) == B && c->size(1) == H && c->size(3) == width && c->stride(3) == 1 && c->stride(2) == width,
                "cache: [B, H, P, 64] int8 or [B, H, P, 32] uint8 (4-bit codes), rows contiguous");
    TORCH_CHECK(start + T <= c->size(2), "positions out of range");
  }
  TORCH_CHECK(keys.strides() == values.strides(), "keys and values alike");
  for (const auto* s : {&key_scales, &value_scales})
    TORCH_CHECK(s->scalar_type() == at::kFloat && s->dim() == 3 && s->size(2) == keys.size(2) && s->stride(2) == 1,
                "scales: [B, H, P] fp32");
  TORCH_CHECK(key_scales.strides() == value_scales.strides(), "scales alike");
  auto out = at::empty_like(q);
  const float* qp = q.data_ptr<float>();
  const auto* kp = static_cast<const uint8_t*>(keys.data_ptr());
  const auto* vp = static_cast<const uint8_t*>(values.data_ptr());
  const float* ksp = key_scales.data_ptr<float>();
  const float* vsp = value_scales.data_ptr<float>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / H, h = task % H;
      const int64_t cache_at = b * keys.stride(0) + h * keys.stride(1);
      const int64_t scale_at = b * key_scales.stride(0) + h * key_scales.stride(1);
      if (four)
        head(qp + task * T * kDh, Int4Rows{kp + cache_at}, Int4Rows{vp + cache_at}, ksp + scale_at, vsp + scale_at, T,
             start, op + task * T * kDh);
      else
        head(qp + task * T * kDh, Int8Rows{reinterpret_cast<const int8_t*>(kp + cache_at)},
             Int8Rows{reinterpret_cast<const int8_t*>(vp + cache_at)}, ksp + scale_at, vsp + scale_at, T, start,
             op + task * T * kDh);
    }
  });
  return out;
}
