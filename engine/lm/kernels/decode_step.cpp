// The decode step through every layer in one native call, for the CPU decoder (AVX-512).
//
// Run as torch ops from Python, the step between the kernels of the linears and the attention
// (layer norms, GELU, softmax, residual adds, views and copies: about 20 small ops per layer)
// cost 3-5 ms of a 17-20 ms step on 2 cores, more than the bytes they move. Here each layer is
// one pass of plain loops over buffers allocated once per call, all in one parallel region of
// torch's threads: each thread takes its share of the rows (norms, residuals, activations, the
// quantisation of each linear's input), of each linear's channels (int8_gemv.cpp,
// int4_gemv.cpp) and of the attention's (head, row) tasks. Rows are independent: a row's
// numbers do not depend on the other rows (each is quantised and computed on its own), so one
// station gives the same tokens alone as in a batch; and every number is computed whole by one
// thread, so any number of threads gives the same numbers.
//
// Shapes: R rows (2 per generation: cond, uncond), D model dim, H heads, Dh = D / H, F the
// feed-forward width, L layers, P cache positions, Tc text positions.
#include "decode_step.h"
#include "attention.h"
#include "kernels.h"
#include "vmath.h"
#include <ATen/Parallel.h>
#include <omp.h>
#include <cmath>

namespace {

const auto unit_scale = [](int64_t) { return 1.f; };

// Each (row, head) task of the attention reads its keys, then its values: two streams of up to
// a few tens of KB that end short of the cache's capacity, each of which the hardware prefetcher
// picks up again from a standing start. Their first kAheadBytes are fetched ahead instead, as a
// task starts: its values' and the next task's keys' (and their scales'): over the 4-bit
// cache the scores read 39 GB/s alone, 45 with 2 KiB and 47 with 8 KiB fetched ahead (a whole
// capacity, no gaps: 54); whole steps at 1250 positions took 0.97x the time with 4 KiB (medians of
// 240 alternations in one process, 8-bit and 4-bit caches alike), and 0.995x (8-bit) and 0.983x
// (4-bit) as long again with the first kScalesAheadBytes (2 KiB) of the scales too (293
// alternations).
constexpr int64_t kAheadBytes = 4096;

// Each linear's weights are fetched ahead from the start of the thread's share, while the phase
// before it (norms, quantisation, the barrier) runs: its stream does not start from a standstill
// (whole int4 steps at 20 positions: 0.98x the time with torch's sum() at 78 GB/s, 0.95x at 48).
constexpr int64_t kShareAheadBytes = 4096;

void prefetch_start(const char* p, int64_t bytes, int64_t ahead = kAheadBytes) {
  fetch_rows(p, 0, ahead, 1, bytes);  // (rows of one byte: its first `ahead` bytes, at most `bytes`)
}

// out [dh] *= factor.
void scale_row(float* out, int64_t dh, float factor) {
  for (int64_t d = 0; d < dh; d += 16) _mm512_storeu_ps(out + d, _mm512_mul_ps(_mm512_loadu_ps(out + d), _mm512_set1_ps(factor)));
}

// Strides (in elements) of a [L, B, H, P or Tc, row] cache, or of [L, B, H, P] scales.
struct Strides {
  int64_t layer, row, head;
  explicit Strides(const at::Tensor& t) : layer(t.stride(0)), row(t.stride(1)), head(t.stride(2)) {}
  int64_t at(int64_t l, int64_t r, int64_t h) const { return l * layer + r * row + h * head; }
};

// A cache of rows of `width` elements (Dh numbers, or Dh / 2 bytes of 4-bit codes).
void check_cache(const at::Tensor& t, int64_t width, const char* name) {
  TORCH_CHECK(t.dim() == 5 && t.size(4) == width && t.stride(4) == 1 && t.stride(3) == width,
              name, ": [L, B, H, positions, Dh] with contiguous rows (Dh / 2 bytes for 4-bit codes)");
}

}  // namespace

DecodeStep::DecodeStep(std::vector<std::vector<at::Tensor>> layers, std::vector<double> eps, int64_t heads, bool gelu,
                       std::vector<at::Tensor> head, double head_eps)
    : heads_(heads), gelu_(gelu) {
  TORCH_CHECK(!layers.empty() && eps.size() == 3 * layers.size(), "one list of tensors and three eps per layer");
  auto norm = [](const at::Tensor& w, const at::Tensor& b, double e) {
    TORCH_CHECK(w.scalar_type() == at::kFloat && w.is_contiguous(), "norm weights: fp32");
    TORCH_CHECK(b.numel() == 0 || (b.scalar_type() == at::kFloat && b.numel() == w.numel()), "norm bias: fp32");
    return Norm{w, b.contiguous(), static_cast<float>(e)};
  };
  auto linear = [](const at::Tensor* t) {
    const bool int4 = t[0].scalar_type() == at::kByte;
    TORCH_CHECK(int4 || t[0].scalar_type() == at::kChar, "linear weights: int8, or packed int4 (uint8)");
    for (int i = 0; i < 4; ++i) TORCH_CHECK(t[i].is_contiguous(), "linear tensors must be contiguous");
    const int64_t out = t[0].size(0), in = int4 ? 2 * t[0].size(1) : t[0].size(1);
    TORCH_CHECK(in % (int4 ? 256 : 64) == 0, "linear input width: a multiple of 64 (int8) or 256 (int4)");
    TORCH_CHECK(t[3].numel() == 0 || t[3].numel() == out, "linear bias: [out] or empty");
    return Linear{int4, t[0], t[1], t[2], t[3], in, out};
  };
  for (size_t i = 0; i < layers.size(); ++i) {
    const auto& t = layers[i];
    TORCH_CHECK(static_cast<int64_t>(t.size()) == kLayerTensors, "each layer: ", kLayerTensors, " tensors");
    const at::Tensor* lin = t.data() + 6;
    layers_.push_back(Layer{norm(t[0], t[1], eps[3 * i]), norm(t[2], t[3], eps[3 * i + 1]),
                            norm(t[4], t[5], eps[3 * i + 2]), linear(lin), linear(lin + 4), linear(lin + 8),
                            linear(lin + 12), linear(lin + 16), linear(lin + 20)});
  }
  const Layer& first = layers_[0];
  dim_ = first.out_self.out;
  hidden_ = first.ff1.out;
  TORCH_CHECK(hidden_ % 16 == 0, "feed-forward width: a multiple of 16");
  TORCH_CHECK(dim_ % heads_ == 0 && (dim_ / heads_) % 16 == 0 && dim_ / heads_ <= 256, "head dim: a multiple of 16, <= 256");
  for (const Layer& l : layers_)
    TORCH_CHECK(l.qkv.in == dim_ && l.qkv.out == 3 * dim_ && l.out_self.in == dim_ && l.q_cross.out == dim_ &&
                l.out_cross.in == dim_ && l.ff1.in == dim_ && l.ff2.in == hidden_ && l.ff2.out == dim_,
                "layer shapes differ");
  if (!head.empty()) {
    TORCH_CHECK(head.size() == 6, "head: the output norm's weight and bias, then its linear's four tensors");
    out_norm_ = norm(head[0], head[1], head_eps);
    head_ = linear(head.data() + 2);
    TORCH_CHECK(out_norm_.weight.numel() == dim_ && head_.in == dim_, "head: a norm of D, then a linear [out, D]");
    has_head_ = true;
  }
}

void DecodeStep::Norm::apply(const float* x, int64_t rows, int64_t dim, float* y) const {
  const float* w = weight.data_ptr<float>();
  const float* b = bias.numel() > 0 ? bias.data_ptr<float>() : nullptr;
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * dim;
    float* yr = y + r * dim;
    __m512 sum = _mm512_setzero_ps();
    for (int64_t i = 0; i < dim; i += 16) sum = _mm512_add_ps(sum, _mm512_loadu_ps(xr + i));
    const __m512 mean = _mm512_set1_ps(_mm512_reduce_add_ps(sum) / static_cast<float>(dim));
    __m512 squares = _mm512_setzero_ps();
    for (int64_t i = 0; i < dim; i += 16) {
      const __m512 d = _mm512_sub_ps(_mm512_loadu_ps(xr + i), mean);
      squares = _mm512_fmadd_ps(d, d, squares);
    }
    const float variance = _mm512_reduce_add_ps(squares) / static_cast<float>(dim);
    const __m512 rstd = _mm512_set1_ps(1.f / std::sqrt(variance + eps));
    for (int64_t i = 0; i < dim; i += 16) {
      __m512 v = _mm512_mul_ps(_mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(xr + i), mean), rstd), _mm512_loadu_ps(w + i));
      if (b != nullptr) v = _mm512_add_ps(v, _mm512_loadu_ps(b + i));
      _mm512_storeu_ps(yr + i, v);
    }
  }
}

void DecodeStep::Linear::quantize(const float* x, int64_t r, Inputs& inputs) const {
  uint8_t* codes = inputs.codes.data() + r * in;
  if (int4)
    inputs.scales[r] = quantize_input4(x, in, reinterpret_cast<int8_t*>(codes), inputs.sums.data() + r * (in / 256));
  else
    quantize_rows_u8(x, 1, in, codes, inputs.scales.data() + r);
}

std::pair<int64_t, int64_t> DecodeStep::Linear::share(int64_t tid, int64_t team) const {
  const int64_t parts = int4 ? gemv4_tiles(out) : out;  // tiles of 64 channels, or channels
  return {parts * tid / team, parts * (tid + 1) / team};
}

void DecodeStep::Linear::prefetch(int64_t tid, int64_t team) const {
  const int64_t part_bytes = int4 ? 64 * (in / 2) : in;  // a tile's packed nibbles, a channel's int8 row
  fetch_rows(a.data_ptr(), share(tid, team).first * part_bytes, kShareAheadBytes, 1, a.numel());
}

void DecodeStep::Linear::run(const Inputs& inputs, int64_t rows, float* y, int64_t tid, int64_t team) const {
  const float* bp = bias.numel() > 0 ? bias.data_ptr<float>() : nullptr;
  const auto [begin, end] = share(tid, team);
  for (int64_t r = 0; r < rows; r += 4) {  // the kernels take up to 4 rows
    const int64_t n = std::min<int64_t>(4, rows - r);
    const uint8_t* codes = inputs.codes.data() + r * in;
    if (int4)
      gemv4_range(reinterpret_cast<const int8_t*>(codes), inputs.sums.data() + r * (in / 256), inputs.scales.data() + r,
                  n, in, a.data_ptr<uint8_t>(), b.data_ptr<float>(), bp, y + r * out, out, begin, end);
    else
      gemv_range(codes, inputs.scales.data() + r, n, in, a.data_ptr<int8_t>(), b.data_ptr<int32_t>(),
                 c.data_ptr<float>(), bp, y + r * out, out, begin, end);
  }
}

at::Tensor DecodeStep::forward(at::Tensor x, std::vector<int64_t> rows, std::vector<int64_t> positions, at::Tensor k,
                               at::Tensor v, at::Tensor k_scale, at::Tensor v_scale, at::Tensor cross_k,
                               at::Tensor cross_v, std::vector<int64_t> cross_lengths) const {
  const int64_t R = x.size(0), D = dim_, H = heads_, Dh = D / H, L = layers_.size(), F = hidden_;
  TORCH_CHECK(x.scalar_type() == at::kFloat && x.dim() == 2 && D == x.size(1), "x: [R, D] fp32");
  TORCH_CHECK(static_cast<int64_t>(rows.size()) == R && static_cast<int64_t>(positions.size()) == R &&
              static_cast<int64_t>(cross_lengths.size()) == R, "rows, positions, cross lengths: one per row");
  const bool q4 = k.scalar_type() == at::kByte, q8 = k.scalar_type() == at::kChar;
  TORCH_CHECK(q4 || q8 || k.scalar_type() == at::kHalf, "cache: int8 or 4-bit codes in uint8 (with scales), or fp16");
  TORCH_CHECK(!q4 || Dh == 64, "a 4-bit cache: heads of 64");
  TORCH_CHECK(v.scalar_type() == k.scalar_type() && k.sizes() == v.sizes() && k.strides() == v.strides(), "k, v alike");
  const int64_t width = q4 ? Dh / 2 : Dh;  // elements per cached row
  check_cache(k, width, "k");
  TORCH_CHECK(k.size(0) == L && k.size(2) == H, "cache: one per layer and head");
  if (q4 || q8)
    TORCH_CHECK(k_scale.scalar_type() == at::kFloat && k_scale.dim() == 4 && k_scale.sizes() == v_scale.sizes() &&
                k_scale.strides() == v_scale.strides() && k_scale.stride(3) == 1 && k_scale.size(3) == k.size(3),
                "scales: [L, B, H, P] fp32");
  check_cache(cross_k, Dh, "cross_k");
  TORCH_CHECK(cross_k.scalar_type() == at::kFloat && cross_v.scalar_type() == at::kFloat &&
              cross_k.sizes() == cross_v.sizes() && cross_k.strides() == cross_v.strides() &&
              cross_k.size(0) == L && cross_k.size(2) == H, "cross keys, values: [L, B, H, Tc, Dh] fp32");
  int64_t longest = 1;
  for (int64_t r = 0; r < R; ++r) {
    TORCH_CHECK(rows[r] >= 0 && rows[r] < k.size(1) && rows[r] < cross_k.size(1), "row out of range");
    TORCH_CHECK(positions[r] >= 0 && positions[r] < k.size(3), "position out of range");
    TORCH_CHECK(cross_lengths[r] >= 1 && cross_lengths[r] <= cross_k.size(3), "cross length out of range");
    longest = std::max({longest, positions[r] + 1, cross_lengths[r]});
  }
  x = x.contiguous().clone();
  auto buffer = at::empty({R * (4 * D + 2 * D + F) + R * H * longest}, x.options());
  float* xp = x.data_ptr<float>();
  float* h = buffer.data_ptr<float>();  // [R, D] normed
  float* qkv = h + R * D;               // [R, 3D]
  float* a = qkv + 3 * R * D;           // [R, D] attention out
  float* y = a + R * D;                 // [R, D] a linear's out
  float* f = y + R * D;                 // [R, F]
  float* s = f + R * F;                 // [R H, longest] scores
  const int64_t widest = std::max(D, F);  // a linear's input: D, or F for the second feed-forward
  Inputs inputs{std::vector<uint8_t>(R * widest), std::vector<int32_t>(R * widest / 256 + 1), std::vector<float>(R)};
  const Strides cache(k), scales(q4 || q8 ? k_scale : k), text(cross_k);
  const int64_t row_bytes = width * k.element_size();  // one cached key (value) row
  const float scale = 1.f / std::sqrt(static_cast<float>(Dh));
  char* const k_base = static_cast<char*>(k.data_ptr());
  char* const v_base = static_cast<char*>(v.data_ptr());
  float* const k_scales = q4 || q8 ? k_scale.data_ptr<float>() : nullptr;
  float* const v_scales = q4 || q8 ? v_scale.data_ptr<float>() : nullptr;
  const float* const text_k = cross_k.data_ptr<float>();
  const float* const text_v = cross_v.data_ptr<float>();
  at::Tensor logits = has_head_ ? at::empty({R, head_.out}, x.options()) : at::Tensor();
  float* const lp = has_head_ ? logits.data_ptr<float>() : nullptr;

  // One parallel region for the whole step, its phases apart by barriers: a parallel region per
  // linear and attention (8 per layer, 192 per step) cost about 8 us each to wake the other
  // threads, where the linears read at most a few MB (96 GEMVs of 1.5 MB in one region read
  // 70 GB/s where called one by one they read 55, torch's sum() 70, alternated in one process).
  // Each thread takes its share of a linear's channels, of the attention's (head, row) tasks, and
  // of the rows for the norms, residuals, activations and the quantisation of each linear's input.
  const int team_size = std::max(1, at::get_num_threads());
#pragma omp parallel num_threads(team_size)
  {
    const int64_t tid = omp_get_thread_num(), team = omp_get_num_threads();
    const int64_t row_begin = R * tid / team, row_end = R * (tid + 1) / team;
    const int64_t task_begin = R * H * tid / team, task_end = R * H * (tid + 1) / team;
    auto add_row = [&](int64_t r, const float* from) {  // x[r] += from[r]
      for (int64_t i = r * D; i < (r + 1) * D; i += 16)
        _mm512_storeu_ps(xp + i, _mm512_add_ps(_mm512_loadu_ps(xp + i), _mm512_loadu_ps(from + i)));
    };
    // This thread's rows: x += y (the last linear's out, where `add`), normed into h and
    // quantised for `next`, whose share of the weights is fetched meanwhile.
    auto residual_norm = [&](bool add, const Norm& norm, const Linear& next) {
      next.prefetch(tid, team);
      for (int64_t r = row_begin; r < row_end; ++r) {
        if (add) add_row(r, y);
        norm.apply(xp + r * D, 1, D, h + r * D);
        next.quantize(h + r * D, r, inputs);
      }
    };
    // This thread's rows of the attention's out `a`, quantised for `next`.
    auto inputs_from_attention = [&](const Linear& next) {
#pragma omp barrier
      next.prefetch(tid, team);
      for (int64_t r = row_begin; r < row_end; ++r) next.quantize(a + r * D, r, inputs);
    };
    // Once every row's input is quantised: this thread's share of `linear` into `out`.
    auto run = [&](const Linear& linear, float* out) {
#pragma omp barrier
      linear.run(inputs, R, out, tid, team);
#pragma omp barrier
    };
    for (int64_t l = 0; l < L; ++l) {
      const Layer& layer = layers_[l];
      residual_norm(l > 0, layer.norm_self, layer.qkv);  // (y: the previous layer's feed-forward)
      run(layer.qkv, qkv);
      // Self-attention, task (head, row) head-major: each thread's share holds all rows' heads
      // alike, so rows at different positions (stations of a batch, or any rows whose caches
      // differ in length) split evenly; row-major, one thread took all of the long rows (4 rows
      // at 1250, 1250, 250, 250 positions against 4 at 750, the same bytes: 1.03-1.13x as long
      // row-major, 1.00x head-major). A task writes its row's keys and values at its position,
      // then attends over positions 0..position of that head.
      for (int64_t task = task_begin; task < task_end; ++task) {
        const int64_t r = task % R, hd = task / R, T = positions[r] + 1;
        const float* kr = qkv + r * 3 * D + D + hd * Dh;
        const float* vr = kr + D;
        const float* q = qkv + r * 3 * D + hd * Dh;
        float* st = s + task * longest;
        const int64_t at = cache.at(l, rows[r], hd), si = scales.at(l, rows[r], hd);  // (si: quantised caches)
        const int64_t here = at + positions[r] * width;
        if (q4) {
          k_scales[si + positions[r]] = quantize_row4(kr, reinterpret_cast<uint8_t*>(k_base) + here);
          v_scales[si + positions[r]] = quantize_row4(vr, reinterpret_cast<uint8_t*>(v_base) + here);
        } else if (q8) {
          k_scales[si + positions[r]] = quantize_row<0>(kr, Dh, reinterpret_cast<int8_t*>(k_base) + here);
          v_scales[si + positions[r]] = quantize_row<0>(vr, Dh, reinterpret_cast<int8_t*>(v_base) + here);
        } else {
          auto* kc = reinterpret_cast<uint16_t*>(k_base) + here;
          auto* vc = reinterpret_cast<uint16_t*>(v_base) + here;
          for (int64_t d = 0; d < Dh; d += 16) {
            constexpr int kRound = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(kc + d), _mm512_cvtps_ph(_mm512_loadu_ps(kr + d), kRound));
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(vc + d), _mm512_cvtps_ph(_mm512_loadu_ps(vr + d), kRound));
          }
        }
        // The start of this task's values and of the next task's keys (and of their scales).
        prefetch_start(v_base + at * k.element_size(), T * row_bytes);
        if (q4 || q8) prefetch_start(reinterpret_cast<const char*>(v_scales + si), T * 4, kScalesAheadBytes);
        if (task + 1 < task_end) {
          const int64_t next_r = (task + 1) % R, next_h = (task + 1) / R, next_t = positions[next_r] + 1;
          prefetch_start(k_base + cache.at(l, rows[next_r], next_h) * k.element_size(), next_t * row_bytes);
          if (q4 || q8)
            prefetch_start(reinterpret_cast<const char*>(k_scales + scales.at(l, rows[next_r], next_h)), next_t * 4,
                           kScalesAheadBytes);
        }
        // Scores (-> their largest), then the values weighted by their exps (-> the exps' sum).
        float* out = a + r * D + hd * Dh;
        float total;
        if (q4) {
          const float top = scores_q4_head(q, reinterpret_cast<const uint8_t*>(k_base) + at, k_scales + si, T, scale, st);
          total = softmax_weighted_q4_head(st, top, v_scales + si, reinterpret_cast<const uint8_t*>(v_base) + at, T, out);
        } else if (q8) {
          const float top = scores_q8_head(q, reinterpret_cast<const int8_t*>(k_base) + at, k_scales + si, T, Dh, scale, st);
          total = softmax_weighted_q8_head(st, top, v_scales + si, reinterpret_cast<const int8_t*>(v_base) + at, T, Dh, out);
        } else {
          const float top = scores_head(q, reinterpret_cast<const uint16_t*>(k_base) + at, T, Dh, scale, load16_fp16,
                                        unit_scale, st);
          total = softmax_weighted_head(st, top, nullptr, reinterpret_cast<const uint16_t*>(v_base) + at, T, Dh,
                                        load16_fp16, out);
        }
        scale_row(out, Dh, 1.f / total);
      }
      inputs_from_attention(layer.out_self);
      run(layer.out_self, y);
      // Cross-attention to the text condition (head-major too: text lengths differ by row).
      residual_norm(true, layer.norm_cross, layer.q_cross);
      run(layer.q_cross, qkv);
      for (int64_t task = task_begin; task < task_end; ++task) {
        const int64_t r = task % R, hd = task / R, T = cross_lengths[r];
        float* st = s + task * longest;
        const int64_t at = text.at(l, rows[r], hd);
        float* out = a + r * D + hd * Dh;
        const float top = scores_head(qkv + r * D + hd * Dh, text_k + at, T, Dh, scale, load16_fp32, unit_scale, st);
        scale_row(out, Dh, 1.f / softmax_weighted_head(st, top, nullptr, text_v + at, T, Dh, load16_fp32, out));
      }
      inputs_from_attention(layer.out_cross);
      run(layer.out_cross, y);
      // Feed-forward.
      residual_norm(true, layer.norm_ff, layer.ff1);
      run(layer.ff1, f);
      layer.ff2.prefetch(tid, team);
      for (int64_t r = row_begin; r < row_end; ++r) {
        float* fr = f + r * F;
        for (int64_t i = 0; i < F; i += 16) {
          const __m512 u = _mm512_loadu_ps(fr + i);
          _mm512_storeu_ps(fr + i, gelu_ ? gelu16(u) : _mm512_max_ps(u, _mm512_setzero_ps()));
        }
        layer.ff2.quantize(fr, r, inputs);
      }
      run(layer.ff2, y);
    }
    if (has_head_) {  // the output norm and heads, as one more linear
      residual_norm(true, out_norm_, head_);
      run(head_, lp);
    } else {
      for (int64_t r = row_begin; r < row_end; ++r) add_row(r, y);
    }
  }
  return has_head_ ? logits : x;
}
