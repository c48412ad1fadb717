// The native CPU kernels of the decoder (see each .cpp); bound to Python in bindings.cpp.
#pragma once
#include <ATen/ATen.h>
#include <vector>

at::Tensor scores(at::Tensor q, at::Tensor keys, int64_t positions);
at::Tensor weighted(at::Tensor weights, at::Tensor values);
at::Tensor prepare(at::Tensor weight);
at::Tensor gemv(at::Tensor x, at::Tensor weight, at::Tensor row_sums, at::Tensor scale,
                   at::Tensor bias);
std::vector<at::Tensor> pack4(at::Tensor weight, at::Tensor scales);
at::Tensor gemv4(at::Tensor x, at::Tensor packed, at::Tensor scales, at::Tensor offsets, at::Tensor bias);
void quantize_into(at::Tensor cache, at::Tensor scales, at::Tensor x, int64_t start);
at::Tensor scores_q8(at::Tensor q, at::Tensor keys, at::Tensor key_scales, int64_t positions);
at::Tensor weighted_q8(at::Tensor weights, at::Tensor values, at::Tensor value_scales);
int64_t vnni_peak(int64_t iterations);
at::Tensor elu(at::Tensor x);
