// The native CPU kernels of the decoder and the codec (see each .cpp); bound to Python in
// bindings.cpp.
#pragma once
#include <ATen/ATen.h>
#include <vector>

at::Tensor scores(at::Tensor q, at::Tensor keys, int64_t positions);
at::Tensor weighted(at::Tensor weights, at::Tensor values);
at::Tensor prepare(at::Tensor weight);
// Each of `rows` rows of `in` floats as symmetric int8 (scale max |x| / 127, into `scales`),
// stored +128 as uint8: the unsigned side of vpdpbusd (int8_gemv.cpp, int4_gemv.cpp).
void quantize_rows_u8(const float* x, int64_t rows, int64_t in, uint8_t* out, float* scales);
at::Tensor gemv(at::Tensor x, at::Tensor weight, at::Tensor row_sums, at::Tensor scale,
                   at::Tensor bias);
std::vector<at::Tensor> pack4(at::Tensor weight, at::Tensor scales);
at::Tensor gemv4(at::Tensor x, at::Tensor packed, at::Tensor scales, at::Tensor offsets, at::Tensor bias);
void quantize_into(at::Tensor cache, at::Tensor scales, at::Tensor x, int64_t start);
at::Tensor scores_q8(at::Tensor q, at::Tensor keys, at::Tensor key_scales, int64_t positions);
at::Tensor weighted_q8(at::Tensor weights, at::Tensor values, at::Tensor value_scales);
int64_t vnni_peak(int64_t iterations);
at::Tensor elu(at::Tensor x);
