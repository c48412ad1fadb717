// The decoder's whole decode step through every layer in one native call (decode_step.cpp).
#pragma once
#include <ATen/ATen.h>
#include <cstdint>
#include <utility>
#include <vector>

class DecodeStep {
 public:
  // `layers`: per layer LAYER_TENSORS tensors, in this order: the three layer norms' weight and
  // bias (self, cross, feed-forward; an empty bias for none), then the six linears (qkv,
  // out_self, q_cross, out_cross, ff1, ff2) as four each: int8 (weight [out, in] int8, row sums
  // [out] int32, scales [out] fp32, bias) or int4 (packed [out, in / 2] uint8, block scales
  // [out, in / 256] fp32 (both from pack4), an empty tensor, bias), the bias fp32 or empty. `eps`: per layer
  // the three norms' epsilon. `gelu`: the feed-forward activation is GELU (else ReLU). `head`:
  // empty, or the output norm's weight and bias (`head_eps`) and the output heads' linear [out, D]
  // as four tensors (as a layer's), run at the end of the same call (forward returns the logits).
  DecodeStep(std::vector<std::vector<at::Tensor>> layers, std::vector<double> eps, int64_t heads, bool gelu,
             std::vector<at::Tensor> head, double head_eps);

  // x [R, D] fp32: the embedded inputs of R rows. Row r is cache row rows[r] at position
  // positions[r] and attends to the cached positions 0..positions[r] (its own written first) and
  // to the first cross_lengths[r] text positions of cross row rows[r]. k, v: the KV cache
  // [L, B, H, P, Dh] (int8 with k_scale, v_scale [L, B, H, P] fp32, or [L, B, H, P, Dh / 2]
  // uint8 holding 4-bit codes with those scales (kv4_attention.cpp), or fp16 with them empty);
  // cross_k, cross_v [L, B, H, Tc, Dh] fp32. -> x after every layer [R, D] fp32, or with a `head`
  // the logits [R, out] fp32 of x after the output norm.
  at::Tensor forward(at::Tensor x, std::vector<int64_t> rows, std::vector<int64_t> positions, at::Tensor k,
                     at::Tensor v, at::Tensor k_scale, at::Tensor v_scale, at::Tensor cross_k, at::Tensor cross_v,
                     std::vector<int64_t> cross_lengths) const;

  static constexpr int64_t kLayerTensors = 6 + 6 * 4;

 private:
  struct Norm {
    at::Tensor weight, bias;
    float eps;
    void apply(const float* x, int64_t rows, int64_t dim, float* y) const;
  };
  // A linear's input rows, quantised as its kernel takes them: codes [R, in] (x + 128 as uint8
  // for int8 weights; x as int8 for int4, with sums [R, in / 256] of each group of 256), scales [R].
  struct Inputs {
    std::vector<uint8_t> codes;
    std::vector<int32_t> sums;
    std::vector<float> scales;
  };
  struct Linear {
    bool int4;
    at::Tensor a, b, c, bias;
    int64_t in, out;
    // Row r of the input (x [in]) into `inputs`.
    void quantize(const float* x, int64_t r, Inputs& inputs) const;
    // Thread `tid` of `team`'s share of the output: [first, last) tiles of 64 channels (int4) or channels.
    std::pair<int64_t, int64_t> share(int64_t tid, int64_t team) const;
    // Fetch the start of thread `tid` of `team`'s share of the weights.
    void prefetch(int64_t tid, int64_t team) const;
    // y [rows, out] = inputs W^T (+ bias): thread `tid` of `team`'s share of the output channels.
    void run(const Inputs& inputs, int64_t rows, float* y, int64_t tid, int64_t team) const;
  };
  struct Layer {
    Norm norm_self, norm_cross, norm_ff;
    Linear qkv, out_self, q_cross, out_cross, ff1, ff2;
  };
  std::vector<Layer> layers_;
  int64_t heads_, dim_, hidden_;
  bool gelu_;
  bool has_head_ = false;
  Norm out_norm_;
  Linear head_;
};
