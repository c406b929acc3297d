// Per-element logic of fused AdaIN (+ activation, + residual), shared by every kernel that
// computes it in C++ or CUDA, so that CPU tests exercise the same formulas a device kernel uses.
//
//   xhat = (x - mean) * rstd,  z = scale * xhat + bias,  y = act(z) [+ residual]
//
// Kernels compute z = (x - mean) * a + bias with a = scale * rstd: one multiply-add per element after
// the subtraction, and exactly bias for a constant row (folding the mean into the bias would not be,
// since a = scale / sqrt(eps) is large there).
#pragma once
#include <cmath>
#include <cstdint>

#include "dgnet/macros.h"

namespace dgnet {

// Activation codes of the adain_forward / adain_backward schemas (csrc/ops.cpp).
enum AdainActivation : int64_t { kAdainNone = 0, kAdainRelu = 1, kAdainLeakyRelu = 2 };

// act(z). ACT is a template argument so the per-element loops stay branch-free and vectorise.
template <int64_t ACT, typename T>
DGNET_HD T adain_activate(T z, T negative_slope) {
  // Written `z <= 0 ? 0 : z`, not `z > 0 ? z : 0`, so that a NaN stays NaN as in F.relu.
  if constexpr (ACT == kAdainRelu) return z <= T(0) ? T(0) : z;
  // Both products are computed unconditionally: `z > 0 ? z : z * slope` would ask the compiler to
  // speculate a multiply, which -ftrapping-math (GCC's default) forbids, leaving a scalar loop
  // with a data-dependent branch (15x slower on random signs).
  if constexpr (ACT == kAdainLeakyRelu) return (z > T(0) ? z : T(0)) + negative_slope * (z > T(0) ? T(0) : z);
  return z;
}

// g = dy * act'(z), with PyTorch's convention at z == 0 (relu and leaky_relu backward test z > 0).
// Written as selects of dy and 0, like the forward: GCC vectorises these, while a select of
// constants multiplied by dy stayed a scalar loop with control flow (20x slower).
template <int64_t ACT, typename T>
DGNET_HD T adain_activation_backward(T dy, T z, T negative_slope) {
  if constexpr (ACT == kAdainRelu) return z <= T(0) ? T(0) : dy;  // a NaN z passes dy, as PyTorch's does
  if constexpr (ACT == kAdainLeakyRelu) return (z > T(0) ? dy : T(0)) + negative_slope * (z > T(0) ? T(0) : dy);
  return dy;
}

// 1 / sqrt(biased variance + eps); variance is clamped at 0 because a merged (Chan) variance of a
// constant row can come out as a tiny negative number.
template <typename T>
DGNET_HD T adain_rstd(T m2, T count, T eps) {
  T var = m2 / count;
  var = var > T(0) ? var : T(0);
  return T(1) / std::sqrt(var + eps);
}

// dx of one element from the row sums sum_g = sum(g) and sum_gx = sum(g * xhat), where g = dy * act'(z):
//   dxhat = scale * g,  dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)).
template <typename T>
DGNET_HD T adain_input_grad(T g, T xhat, T scale, T rstd, T mean_g, T mean_gx) {
  return rstd * scale * (g - mean_g - xhat * mean_gx);
}

}  // namespace dgnet
