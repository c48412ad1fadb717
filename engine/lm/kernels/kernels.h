// The native CPU kernels of the decoder and the codec (see each .cpp); bound to Python in
// bindings.cpp.
#pragma once
#include <ATen/ATen.h>
#include <immintrin.h>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

at::Tensor scores(at::Tensor q, at::Tensor keys, int64_t positions);
at::Tensor weighted(at::Tensor weights, at::Tensor values);
at::Tensor prepare(at::Tensor weight);
// One row of n floats as symmetric int8 (scale max |x| / 127, returned), each stored plus
// `Offset` as T: int8 for the 8-bit KV cache (kv8_attention.cpp), uint8 + 128 for the unsigned
// side of vpdpbusd (the linears' activations: quantize_rows_u8).
template <int Offset, typename T>
inline float quantize_row(const float* row, int64_t n, T* out) {
  static_assert(sizeof(T) == 1, "one byte per number");
  const int64_t body = n / 16 * 16;  // 16 at a time (AVX-512), the rest one by one
  __m512 peak16 = _mm512_setzero_ps();
  for (int64_t i = 0; i < body; i += 16) peak16 = _mm512_max_ps(peak16, _mm512_abs_ps(_mm512_loadu_ps(row + i)));
  float peak = _mm512_reduce_max_ps(peak16);
  for (int64_t i = body; i < n; ++i) peak = std::max(peak, std::fabs(row[i]));
  const float s = peak > 0.f ? peak / 127.f : 1.f;
  const float inv = 1.f / s;
  const __m512 inv16 = _mm512_set1_ps(inv);
  const __m512i offset = _mm512_set1_epi32(Offset);
  for (int64_t i = 0; i < body; i += 16) {  // round to nearest even, as std::nearbyint below
    const __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(row + i), inv16));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i), _mm512_cvtepi32_epi8(_mm512_add_epi32(q, offset)));
  }
  for (int64_t i = body; i < n; ++i) out[i] = static_cast<T>(static_cast<int32_t>(std::nearbyint(row[i] * inv)) + Offset);
  return s;
}
// Each of `rows` rows of `in` floats by quantize_row, stored +128 as uint8, scales into `scales`
// (int8_gemv.cpp).
void quantize_rows_u8(const float* x, int64_t rows, int64_t in, uint8_t* out, float* scales);
// The GEMVs (int4_gemv.cpp, int8_gemv.cpp) read their weights this far ahead by software
// prefetch, non-temporal (they are read once per step). The distance matters little (alternated
// on 2 cores over 144 MB: 24.6-25.4 GB/s from none to 16 KiB ahead, where torch's sum() read
// 24-28 in the same rounds); the hint does: 96 int4 GEMVs alternated with sum() in one process
// (7508 rounds, binned by sum()'s reading) read 41.7 / 44.0 / 56.0 GB/s with NTA where into L2
// (T1) they read 38.4 / 40.2 / 49.7 (sum() 41 / 49 / 78); whole int4 steps at 20 positions took
// 0.89x (sum() at 48 GB/s) and 0.94x (at 78) the time, at 1250 positions 0.99x and 0.97x. Whole
// int8 steps took 0.89-0.93x the time at 20 positions and 0.92-0.95x at 1250 with it than without
// (alternated in one process, sum() at 48-79 GB/s). `-D` overrides both for such sweeps.
#ifndef GEMV_PREFETCH_BYTES
#define GEMV_PREFETCH_BYTES 4096
#endif
#ifndef GEMV_PREFETCH_HINT
#define GEMV_PREFETCH_HINT _MM_HINT_NTA
#endif
constexpr int64_t kGemvAheadBytes = GEMV_PREFETCH_BYTES;
// y [rows, out] = x [rows, in] W^T (+ bias) for rows <= 4, W int8 (int8_gemv.cpp) or packed int4
// (int4_gemv.cpp); bias may be null. The tensor-level gemv / gemv4 check their inputs and call these.
void gemv_rows(const float* x, int64_t rows, int64_t in, const int8_t* weight, const int32_t* row_sums,
               const float* scales, const float* bias, float* y, int64_t out_features);
void gemv4_rows(const float* x, int64_t rows, int64_t in, const uint8_t* packed, const float* block_scales,
                const float* bias, float* y, int64_t out_features);
// The same for output channels [begin, end) (int8) or tiles of 64 channels [begin, end) (int4)
// alone, with x already quantised: `rows` (1 to 4) rows of `in` numbers each, x + 128 as uint8
// with their scales (quantize_rows_u8) for int8; for int4 x as int8 with the sums of each group
// of 256 and the scales (quantize_input4 per row). One thread's share of a linear in a parallel
// region that outlives it (decode_step.cpp); the functions above split all channels over torch's threads.
void gemv_range(const uint8_t* xq, const float* x_scales, int64_t rows, int64_t in, const int8_t* weight,
                const int32_t* row_sums, const float* scales, const float* bias, float* y, int64_t out_features,
                int64_t begin, int64_t end);
int64_t gemv4_tiles(int64_t out_features);
float quantize_input4(const float* x, int64_t in, int8_t* xq, int32_t* group_sums);
void gemv4_range(const int8_t* xq, const int32_t* x_sums, const float* x_scales, int64_t rows, int64_t in,
                 const uint8_t* packed, const float* block_scales, const float* bias, float* y, int64_t out_features,
                 int64_t begin, int64_t end);
at::Tensor gemv(at::Tensor x, at::Tensor weight, at::Tensor row_sums, at::Tensor scale,
                   at::Tensor bias);
at::Tensor pack_vnni(at::Tensor weight);
at::Tensor gemm(at::Tensor x, at::Tensor packed, at::Tensor row_sums, at::Tensor scale, at::Tensor bias);
std::vector<at::Tensor> pack4(at::Tensor weight, at::Tensor scales);
at::Tensor gemv4(at::Tensor x, at::Tensor packed, at::Tensor block_scales, at::Tensor bias);
void quantize_into(at::Tensor cache, at::Tensor scales, at::Tensor x, int64_t start);
// One head's scores over an 8-bit cache (kv8_attention.cpp): q [Dh] fp32, keys [T, Dh] int8 with
// key_scales [T] -> out [T] = scale * q.k; returns the largest.
float scores_q8_head(const float* q, const int8_t* keys, const float* key_scales, int64_t positions, int64_t dh,
                     float scale, float* out);
// Its values weighted by the softmax of those scores, unnormalised: out [Dh] = sum_t
// exp(scores[t] - top) value_scales[t] v_t (v [T, Dh] int8) -> the sum of the exps.
float softmax_weighted_q8_head(const float* scores, float top, const float* value_scales, const int8_t* values,
                               int64_t positions, int64_t dh, float* out);
at::Tensor scores_q8(at::Tensor q, at::Tensor keys, at::Tensor key_scales, int64_t positions);
at::Tensor weighted_q8(at::Tensor weights, at::Tensor values, at::Tensor value_scales);
// The 4-bit cache's (kv4_attention.cpp; heads of 64): a row's 64 numbers as 32 bytes of codes
// with one scale (returned); one head's scores (as scores_q8_head, scale included; returns the
// largest), and its values weighted by the softmax of those scores, unnormalised: out [64] =
// sum_t exp(scores[t] - top) v_t (returns the sum of the exps).
float quantize_row4(const float* x, uint8_t* out);
float scores_q4_head(const float* q, const uint8_t* keys, const float* key_scales, int64_t positions, float scale,
                     float* out);
float softmax_weighted_q4_head(const float* scores, float top, const float* value_scales, const uint8_t* values,
                               int64_t positions, float* out);
at::Tensor scores_q4(at::Tensor q, at::Tensor keys, at::Tensor key_scales, int64_t positions);
at::Tensor weighted_q4(at::Tensor weights, at::Tensor values, at::Tensor value_scales);
int64_t vnni_peak(int64_t iterations);
at::Tensor prefill_attention_q8(at::Tensor q, at::Tensor keys, at::Tensor values, at::Tensor key_scales,
                                at::Tensor value_scales, int64_t start);
at::Tensor embed(at::Tensor tokens, at::Tensor tables, at::Tensor positional, at::Tensor positions, double scale);
at::Tensor sample_top_k(at::Tensor logits, double cfg, double temperature, int64_t top_k, at::Tensor uniforms);
at::Tensor elu(at::Tensor x);
at::Tensor gelu(at::Tensor x);
