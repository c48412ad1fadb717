// Sampling the next token of every codebook on CPU (sampling.py's top-k path, one call per
// step): classifier-free guidance, the top k of the guided logits, their softmax at the
// temperature and one draw by inverse CDF from a given uniform. torch's ops for the same took
// about 0.5 ms per step here between the native steps (a dozen small ops, each cold).
//
//   sample_top_k(logits [2, K, card] fp32 (cond, uncond), cfg, temperature, k,
//                uniforms [K] fp32 in [0, 1)) -> tokens [K] int64
#include "kernels.h"
#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

at::Tensor sample_top_k(at::Tensor logits, double cfg, double temperature, int64_t top_k, at::Tensor uniforms) {
  TORCH_CHECK(logits.scalar_type() == at::kFloat && logits.dim() == 3 && logits.size(0) == 2,
              "logits: [2, K, card] fp32");
  TORCH_CHECK(temperature > 0, "temperature > 0 (greedy is an argmax)");
  logits = logits.contiguous();
  const int64_t codebooks = logits.size(1), card = logits.size(2);
  TORCH_CHECK(top_k >= 1 && top_k <= card, "1 <= k <= card");
  TORCH_CHECK(uniforms.scalar_type() == at::kFloat && uniforms.numel() == codebooks, "uniforms: [K] fp32");
  uniforms = uniforms.contiguous();
  auto tokens = at::empty({codebooks}, logits.options().dtype(at::kLong));
  const float* cond = logits.data_ptr<float>();
  const float* uncond = cond + codebooks * card;
  const float coef = static_cast<float>(cfg);
  std::vector<float> guided(card);
  std::vector<int32_t> order(card);
  std::vector<double> weights(top_k);
  for (int64_t k = 0; k < codebooks; ++k) {
    const float* c = cond + k * card;
    const float* u = uncond + k * card;
    for (int64_t j = 0; j < card; ++j) guided[j] = u[j] + (c[j] - u[j]) * coef;
    std::iota(order.begin(), order.end(), 0);
    const auto higher = [&](int32_t a, int32_t b) { return guided[a] > guided[b] || (guided[a] == guided[b] && a < b); };
    std::nth_element(order.begin(), order.begin() + (top_k - 1), order.end(), higher);
    std::sort(order.begin(), order.begin() + top_k, higher);
    const double best = guided[order[0]];
    double total = 0;
    for (int64_t i = 0; i < top_k; ++i) total += weights[i] = std::exp((guided[order[i]] - best) / temperature);
    const double target = static_cast<double>(uniforms.data_ptr<float>()[k]) * total;
    int64_t pick = top_k - 1;
    double cumulative = 0;
    for (int64_t i = 0; i < top_k; ++i) {
      cumulative += weights[i];
      if (cumulative > target) { pick = i; break; }
    }
    tokens.data_ptr<int64_t>()[k] = order[pick];
  }
  return tokens;
}
