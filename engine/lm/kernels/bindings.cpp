#include <torch/extension.h>
#include "decode_step.h"
#include "kernels.h"

// Every kernel runs without the GIL: the decode step holds the CPU for 10-20 ms per call, the
// codec's ELU and the prefill's attention for tens of ms, and meanwhile the audio callback, the
// listeners' event loop and the control API must keep running (none of these touch Python objects).
using NoGil = pybind11::call_guard<pybind11::gil_scoped_release>;

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("scores", &scores, NoGil(), "q.k / sqrt(Dh) over the first positions of an fp16 cache");
  m.def("weighted", &weighted, NoGil(), "softmax weights times the values of an fp16 cache");
  m.def("prepare", &prepare, NoGil(), "row sums of an int8 weight");
  m.def("gemv", &gemv, NoGil(), "int8 linear for 1 to 4 rows (VNNI)");
  m.def("pack_vnni", &pack_vnni, NoGil(), "int8 weights in VNNI order for gemm");
  m.def("gemm", &gemm, NoGil(), "int8 linear for many rows (VNNI, per-row int8 activations)");
  m.def("vnni_peak", &vnni_peak, NoGil(), "multiply-adds of a register-only VNNI loop on every thread");
  m.def("pack4", &pack4, NoGil(), "pack int4 weights (-8..7 in int8) two to a byte in VNNI order, with their scales in block order");
  m.def("quantize_into", &quantize_into, NoGil(), "write rows into an int8 or 4-bit cache with per-row scales");
  m.def("scores_q8", &scores_q8, NoGil(), "q.k / sqrt(Dh) over the first positions of an int8 cache");
  m.def("weighted_q8", &weighted_q8, NoGil(), "softmax weights times the values of an int8 cache");
  m.def("scores_q4", &scores_q4, NoGil(), "q.k / 8 over the first positions of a 4-bit cache (heads of 64)");
  m.def("weighted_q4", &weighted_q4, NoGil(), "softmax weights times the values of a 4-bit cache (heads of 64)");
  m.def("embed", &embed, NoGil(), "the decode step's input rows: their tokens' embeddings summed, plus the positional");
  m.def("sample_top_k", &sample_top_k, NoGil(), "guided top-k sampling of every codebook, one uniform each");
  m.def("elu", &elu, NoGil(), "ELU (alpha 1) of fp32, 16 at a time");
  m.def("gelu", &gelu, NoGil(), "GELU (exact, erf form) of fp32, 16 at a time");
  m.def("gemv4", &gemv4, NoGil(), "int4 linear with group scales for 1 to 4 rows (VNNI)");
  m.def("prefill_attention_q8", &prefill_attention_q8, NoGil(),
        "causal attention of a prefill chunk over an int8 cache (BF16)");
  pybind11::class_<DecodeStep>(m, "DecodeStep", "the decode step through every layer (decode_step.h)")
      .def(pybind11::init<std::vector<std::vector<at::Tensor>>, std::vector<double>, int64_t, bool, std::vector<at::Tensor>,
                          double>())
      .def("forward", &DecodeStep::forward, NoGil())
      .def_readonly_static("layer_tensors", &DecodeStep::kLayerTensors);
}
