// Single-query attention over an fp16 KV cache, for the CPU decode step (AVX-512 + F16C).
//
// One decode step reads the whole cache of every layer; torch's CPU attention kernels for one
// query over fp16 convert or copy it first. These two loops (attention.h) read it once,
// converting as they go, spread over torch's own thread pool. The softmax between them is torch's.
//
//   scores(q [BH, Dh] fp32, keys [BH, P, Dh] fp16, positions T) -> [BH, T] fp32 (q.k / sqrt(Dh))
//   weighted(weights [BH, T] fp32, values [BH, P, Dh] fp16)      -> [BH, Dh] fp32
// P is the cache capacity (positions allocated); only the first T are read. Dh % 16 == 0.
#include "attention.h"
#include "kernels.h"
#include <cmath>

static void check(const at::Tensor& cache, int64_t bh, int64_t dh) {
  TORCH_CHECK(cache.scalar_type() == at::kHalf && cache.is_contiguous(), "cache: contiguous fp16");
  TORCH_CHECK(cache.dim() == 3 && cache.size(0) == bh && cache.size(2) == dh, "cache: [BH, P, Dh]");
  TORCH_CHECK(dh % 16 == 0, "head dim must be a multiple of 16");
}

static const auto no_scale = [](int64_t, int64_t) { return 1.f; };

at::Tensor scores(at::Tensor q, at::Tensor keys, int64_t positions) {
  TORCH_CHECK(q.scalar_type() == at::kFloat && q.is_contiguous() && q.dim() == 2, "q: [BH, Dh] fp32");
  const int64_t bh = q.size(0), dh = q.size(1), capacity = keys.size(1);
  check(keys, bh, dh);
  TORCH_CHECK(positions > 0 && positions <= capacity, "positions out of range");
  auto out = at::empty({bh, positions}, q.options());
  scores_loop(q.data_ptr<float>(), reinterpret_cast<const uint16_t*>(keys.data_ptr<at::Half>()), bh, positions,
              capacity, dh, 1.0f / std::sqrt(static_cast<float>(dh)), load16_fp16, no_scale, out.data_ptr<float>());
  return out;
}

at::Tensor weighted(at::Tensor weights, at::Tensor values) {
  TORCH_CHECK(weights.scalar_type() == at::kFloat && weights.is_contiguous() && weights.dim() == 2,
              "weights: [BH, T] fp32");
  const int64_t bh = weights.size(0), positions = weights.size(1);
  const int64_t dh = values.size(2), capacity = values.size(1);
  check(values, bh, dh);
  TORCH_CHECK(positions <= capacity, "positions out of range");
  TORCH_CHECK(dh <= 256, "head dim above 256");
  auto out = at::empty({bh, dh}, weights.options());
  weighted_loop(weights.data_ptr<float>(), reinterpret_cast<const uint16_t*>(values.data_ptr<at::Half>()), bh,
                positions, capacity, dh, load16_fp16, no_scale, out.data_ptr<float>());
  return out;
}
