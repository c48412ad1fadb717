// Vector math for the native kernels, 16 floats at a time (AVX-512): exp, erf and the exact GELU.
#pragma once
#include <immintrin.h>
#include <cstdint>

// The lanes of numbers t..t+15 that lie below n (all 16, some, or none).
static inline __mmask16 first_lanes(int64_t t, int64_t n) {
  return t + 16 <= n ? static_cast<__mmask16>(0xFFFF) : t >= n ? static_cast<__mmask16>(0)
                                                              : static_cast<__mmask16>((1u << (n - t)) - 1);
}

// exp(x) for x >= -88 (clamped below): x = n ln2 + r, |r| <= ln2 / 2 (Cody-Waite split of
// ln2), a degree-7 polynomial in r, scaled by 2^n. Within 1.2e-7 relative.
static inline __m512 exp16(__m512 x) {
  const __m512 one = _mm512_set1_ps(1.f);
  const __m512 xc = _mm512_max_ps(x, _mm512_set1_ps(-88.f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(xc, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), xc);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.f / 5040);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 720));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 120));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 24));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 6));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, one);
  p = _mm512_fmadd_ps(p, r, one);
  return _mm512_scalef_ps(p, n);
}

// erf(x) by Abramowitz & Stegun 7.1.26 (what torch's own vectorised CPU erf uses): within
// 1.5e-7 absolute.
static inline __m512 erf16(__m512 x) {
  const __m512 one = _mm512_set1_ps(1.f);
  const __m512 a = _mm512_abs_ps(x);
  const __m512 t = _mm512_div_ps(one, _mm512_fmadd_ps(_mm512_set1_ps(0.3275911f), a, one));
  __m512 p = _mm512_set1_ps(1.061405429f);
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-1.453152027f));
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(1.421413741f));
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-0.284496736f));
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(0.254829592f));
  p = _mm512_mul_ps(p, t);
  const __m512 e = exp16(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_mul_ps(a, a)));
  const __m512 y = _mm512_fnmadd_ps(p, e, one);  // erf(|x|)
  const __mmask16 negative = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_LT_OQ);
  return _mm512_mask_sub_ps(y, negative, _mm512_setzero_ps(), y);
}

// GELU (exact, erf form): x / 2 (1 + erf(x / sqrt 2)).
static inline __m512 gelu16(__m512 x) {
  const __m512 half_x = _mm512_mul_ps(x, _mm512_set1_ps(0.5f));
  const __m512 e = erf16(_mm512_mul_ps(x, _mm512_set1_ps(0.70710678118654752f)));
  return _mm512_fmadd_ps(half_x, e, half_x);
}
