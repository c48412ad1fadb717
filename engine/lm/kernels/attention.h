// The two loops of single-query attention over a cache [BH, P, Dh], for any element type: the
// scores q.k and the softmax-weighted sum of the values, reading each cached row once and
// converting it 16 numbers at a time (`load16`), times an optional per-row scale (`row_scale`:
// the 8-bit cache's; 1 for fp16). Spread over torch's threads by head. Dh % 16 == 0, Dh <= 256.
#pragma once
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <cstdint>

template <typename T, typename Load, typename RowScale>
void scores_loop(const float* qp, const T* kp, int64_t bh, int64_t positions, int64_t capacity, int64_t dh,
                 float scale, Load load16, RowScale row_scale, float* op) {
  at::parallel_for(0, bh, 1, [&](int64_t begin, int64_t end) {
    for (int64_t h = begin; h < end; ++h) {
      const float* qh = qp + h * dh;
      const T* kh = kp + h * capacity * dh;
      float* oh = op + h * positions;
      for (int64_t t = 0; t < positions; ++t) {
        const T* row = kh + t * dh;
        __m512 acc = _mm512_setzero_ps();
        for (int64_t d = 0; d < dh; d += 16) acc = _mm512_fmadd_ps(load16(row + d), _mm512_loadu_ps(qh + d), acc);
        oh[t] = _mm512_reduce_add_ps(acc) * scale * row_scale(h, t);
      }
    }
  });
}

template <typename T, typename Load, typename RowScale>
void weighted_loop(const float* wp, const T* vp, int64_t bh, int64_t positions, int64_t capacity, int64_t dh,
                   Load load16, RowScale row_scale, float* op) {
  at::parallel_for(0, bh, 1, [&](int64_t begin, int64_t end) {
    __m512 acc[16];
    const int64_t blocks = dh / 16;
    for (int64_t h = begin; h < end; ++h) {
      for (int64_t j = 0; j < blocks; ++j) acc[j] = _mm512_setzero_ps();
      const float* wh = wp + h * positions;
      const T* vh = vp + h * capacity * dh;
      for (int64_t t = 0; t < positions; ++t) {
        const __m512 w = _mm512_set1_ps(wh[t] * row_scale(h, t));
        const T* row = vh + t * dh;
        for (int64_t j = 0; j < blocks; ++j) acc[j] = _mm512_fmadd_ps(w, load16(row + 16 * j), acc[j]);
      }
      for (int64_t j = 0; j < blocks; ++j) _mm512_storeu_ps(op + h * dh + 16 * j, acc[j]);
    }
  });
}
