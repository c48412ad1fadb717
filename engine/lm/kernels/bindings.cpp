#include <torch/extension.h>
#include "decode_step.h"
#include "kernels.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("scores", &scores, "q.k / sqrt(Dh) over the first positions of an fp16 cache");
  m.def("weighted", &weighted, "softmax weights times the values of an fp16 cache");
  m.def("prepare", &prepare, "row sums of an int8 weight");
  m.def("gemv", &gemv, "int8 linear for 1 to 4 rows (VNNI)");
  m.def("vnni_peak", &vnni_peak, "multiply-adds of a register-only VNNI loop on every thread");
  m.def("pack4", &pack4, "pack int4 weights (-8..7 in int8) two to a byte, with their offsets");
  m.def("quantize_into", &quantize_into, "write rows into an int8 cache with per-row scales");
  m.def("scores_q8", &scores_q8, "q.k / sqrt(Dh) over the first positions of an int8 cache");
  m.def("weighted_q8", &weighted_q8, "softmax weights times the values of an int8 cache");
  m.def("elu", &elu, "ELU (alpha 1) of fp32, 16 at a time");
  m.def("gemv4", &gemv4, "int4 linear with group scales for 1 to 4 rows (VNNI)");
  m.def("prefill_attention_q8", &prefill_attention_q8, "causal attention of a prefill chunk over an int8 cache (BF16)");
  pybind11::class_<DecodeStep>(m, "DecodeStep", "the decode step through every layer (decode_step.h)")
      .def(pybind11::init<std::vector<std::vector<at::Tensor>>, std::vector<double>, int64_t, bool>())
      .def("forward", &DecodeStep::forward)
      .def_readonly_static("layer_tensors", &DecodeStep::kLayerTensors);
}
