// Host side of the ranking evaluation shared by the CPU (csrc/cpu/evaluation.cpp, where these are defined)
// and CUDA (csrc/cuda/evaluation.cu) entry points of dgnet::evaluate_queries.
#pragma once
#include <ATen/ATen.h>

#include <tuple>

#include "dgnet/evaluation.h"

namespace dgnet {

// (ap float64, inp float64, first_rank int64, ap_trapz float64), each [Q]: the op's outputs (csrc/ops.cpp).
using EvaluateOutputs = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// Shapes, dtypes and devices of the five inputs.
void check_evaluate_inputs(const at::Tensor& distmat, const at::Tensor& q_pids, const at::Tensor& g_pids,
                           const at::Tensor& q_camids, const at::Tensor& g_camids);

// The outputs for distance matrix d, uninitialised, on d's device.
EvaluateOutputs empty_evaluate_outputs(const at::Tensor& d);

// Where a kernel writes them.
QueryOutputs output_pointers(const EvaluateOutputs& out);

}  // namespace dgnet
