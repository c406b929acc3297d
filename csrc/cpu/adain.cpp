// Fused AdaIN (+ activation, + residual) on CPU: one task per (n, c) row of H*W elements.
//
// A row of the decoder's shapes (64x32 or 128x64 floats, 8-32 KiB) stays in L1/L2 between the
// statistics passes and the output pass, so memory sees x read once and y written once forward,
// and x, dy read once and dx written once backward. Reductions keep kLanes independent partial
// sums so the compiler vectorises them without reassociating (no -ffast-math), and the per-row
// sums make scale/bias gradients deterministic with no cross-thread reduction.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#if defined(__F16C__) && defined(__AVX__)
#include <immintrin.h>
#endif
#include <torch/library.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "dgnet/adain.h"

namespace dgnet {
namespace {

constexpr int64_t kLanes = 16;
// Rows per parallel task: about 16K elements of work per task amortises the scheduling cost.
constexpr int64_t kGrainElements = 16384;

// Row mean, shifted by the row's first element: a constant row gets exactly its value as mean (so
// x - mean is exactly 0 where 1/sqrt(eps) would amplify any rounding), and sums of x - x0 lose less
// precision than sums of x when |mean| >> std.
template <typename scalar_t, typename acc_t>
acc_t row_mean(const scalar_t* x, int64_t n) {
  const acc_t shift = static_cast<acc_t>(x[0]);
  acc_t lanes[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int64_t j = 0; j < kLanes; ++j) lanes[j] += static_cast<acc_t>(x[i + j]) - shift;
  for (; i < n; ++i) lanes[0] += static_cast<acc_t>(x[i]) - shift;
  acc_t s = 0;
  for (int64_t j = 0; j < kLanes; ++j) s += lanes[j];
  return shift + s / static_cast<acc_t>(n);
}

// Sum of squared deviations from `mean`: the second of two passes, exact for constant rows
// (and no cancellation when |mean| >> std, unlike sum(x^2) - n*mean^2).
template <typename scalar_t, typename acc_t>
acc_t row_m2(const scalar_t* x, int64_t n, acc_t mean) {
  acc_t lanes[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int64_t j = 0; j < kLanes; ++j) {
      const acc_t d = static_cast<acc_t>(x[i + j]) - mean;
      lanes[j] += d * d;
    }
  for (; i < n; ++i) {
    const acc_t d = static_cast<acc_t>(x[i]) - mean;
    lanes[0] += d * d;
  }
  acc_t s = 0;
  for (int64_t j = 0; j < kLanes; ++j) s += lanes[j];
  return s;
}

// float16 rows are staged through float buffers: c10::Half's scalar conversions do not vectorise
// (a float16 forward ran 15x slower than bfloat16), while F16C converts 8 values per instruction.
constexpr bool kStageHalf = true;

void load_row(const c10::Half* src, float* dst, int64_t n) {
  int64_t i = 0;
#if defined(__F16C__) && defined(__AVX__)
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i))));
#endif
  for (; i < n; ++i) dst[i] = static_cast<float>(src[i]);
}

void store_row(const float* src, c10::Half* dst, int64_t n) {
  int64_t i = 0;
#if defined(__F16C__) && defined(__AVX__)
  // Round to nearest even, as c10::Half(float) does.
  for (; i + 8 <= n; i += 8)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i),
                     _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
#endif
  for (; i < n; ++i) dst[i] = static_cast<c10::Half>(src[i]);
}

template <typename scalar_t, int64_t ACT, bool HAS_RES>
void forward_rows(const scalar_t* x, const at::opmath_type<scalar_t>* scale, const at::opmath_type<scalar_t>* bias,
                  const scalar_t* residual, scalar_t* y, at::opmath_type<scalar_t>* mean_out,
                  at::opmath_type<scalar_t>* rstd_out, int64_t rows, int64_t hw, double eps, double slope) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t eps_a = static_cast<acc_t>(eps), slope_a = static_cast<acc_t>(slope), count = static_cast<acc_t>(hw);
  constexpr bool stage = kStageHalf && std::is_same_v<scalar_t, c10::Half>;
  // One row; xr, rr, yr are the tensors' rows, or float staging buffers for float16.
  auto row = [&](int64_t r, const auto* xr, const auto* rr, auto* yr) {
    using in_t = std::decay_t<decltype(*xr)>;
    using out_t = std::decay_t<decltype(*yr)>;
    const acc_t mean = row_mean<in_t, acc_t>(xr, hw);
    const acc_t rstd = adain_rstd<acc_t>(row_m2<in_t, acc_t>(xr, hw, mean), count, eps_a);
    mean_out[r] = mean;
    rstd_out[r] = rstd;
    const acc_t a = scale[r] * rstd, b = bias[r];
    for (int64_t i = 0; i < hw; ++i) {
      acc_t v = adain_activate<ACT, acc_t>((static_cast<acc_t>(xr[i]) - mean) * a + b, slope_a);
      if constexpr (HAS_RES) v += static_cast<acc_t>(rr[i]);
      yr[i] = static_cast<out_t>(v);
    }
  };
  at::parallel_for(0, rows, std::max<int64_t>(1, kGrainElements / hw), [&](int64_t begin, int64_t end) {
    if constexpr (stage) {
      std::vector<float> xb(hw), rb(HAS_RES ? hw : 0), yb(hw);
      for (int64_t r = begin; r < end; ++r) {
        load_row(x + r * hw, xb.data(), hw);
        if constexpr (HAS_RES) load_row(residual + r * hw, rb.data(), hw);
        row(r, xb.data(), rb.data(), yb.data());
        store_row(yb.data(), y + r * hw, hw);
      }
    } else {
      for (int64_t r = begin; r < end; ++r)
        row(r, x + r * hw, HAS_RES ? residual + r * hw : nullptr, y + r * hw);
    }
  });
}

// sum(g) and sum(g * (x - mean)) of one row, in independent lanes like row_m2.
template <typename scalar_t, typename acc_t>
void row_grad_sums(const acc_t* g, const scalar_t* x, int64_t n, acc_t mean, acc_t& sum_g, acc_t& sum_gd) {
  acc_t lane_g[kLanes] = {}, lane_gd[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int64_t j = 0; j < kLanes; ++j) {
      lane_g[j] += g[i + j];
      lane_gd[j] += g[i + j] * (static_cast<acc_t>(x[i + j]) - mean);
    }
  for (; i < n; ++i) {
    lane_g[0] += g[i];
    lane_gd[0] += g[i] * (static_cast<acc_t>(x[i]) - mean);
  }
  sum_g = 0;
  sum_gd = 0;
  for (int64_t j = 0; j < kLanes; ++j) {
    sum_g += lane_g[j];
    sum_gd += lane_gd[j];
  }
}

// True when every element of the row equals `mean`, i.e. the row is exactly constant (row_mean returns a constant
// row's value exactly). An ordinary row leaves the loop at its first or second element.
template <typename scalar_t, typename acc_t>
bool constant_row(const scalar_t* x, int64_t n, acc_t mean) {
  for (int64_t i = 0; i < n; ++i)
    if (!(static_cast<acc_t>(x[i]) == mean)) return false;  // a NaN row is not constant
  return true;
}

template <typename scalar_t, int64_t ACT>
void backward_rows(const scalar_t* dy, const scalar_t* x, const at::opmath_type<scalar_t>* scale,
                   const at::opmath_type<scalar_t>* bias, const at::opmath_type<scalar_t>* mean_in,
                   const at::opmath_type<scalar_t>* rstd_in, scalar_t* dx, at::opmath_type<scalar_t>* dscale,
                   at::opmath_type<scalar_t>* dbias, int64_t rows, int64_t hw, double slope) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t slope_a = static_cast<acc_t>(slope), count = static_cast<acc_t>(hw);
  constexpr bool stage = kStageHalf && std::is_same_v<scalar_t, c10::Half>;
  // One row; xr, dyr, dxr are the tensors' rows, or float staging buffers for float16. g is
  // dy * act'(z) of the row, kept in L1/L2: three plain loops (elementwise, reduction, elementwise)
  // each vectorise, where one fused loop with the activation mask did not, reliably. __restrict__:
  // for float I/O, g, x, dy and dx share a type and GCC would otherwise assume they overlap.
  auto row = [&](int64_t r, const auto* __restrict__ xr, const auto* __restrict__ dyr, auto* __restrict__ dxr,
                 acc_t* __restrict__ gr) {
    using in_t = std::decay_t<decltype(*xr)>;
    using out_t = std::decay_t<decltype(*dxr)>;
    const acc_t mean = mean_in[r], rstd = rstd_in[r], s = scale[r];
    // z is recomputed exactly as the forward computed it, so act'(z) sees the same sign.
    const acc_t a = s * rstd, b = bias[r];
    for (int64_t k = 0; k < hw; ++k) {
      const acc_t d = static_cast<acc_t>(xr[k]) - mean;
      gr[k] = adain_activation_backward<ACT, acc_t>(static_cast<acc_t>(dyr[k]), d * a + b, slope_a);
    }
    acc_t sum_g, sum_gd;
    row_grad_sums<in_t, acc_t>(gr, xr, hw, mean, sum_g, sum_gd);
    const acc_t sum_gx = sum_gd * rstd;  // sum(g * xhat)
    dscale[r] = sum_gx;
    dbias[r] = sum_g;
    // An exactly constant row carries no signal and passes x no gradient (dgnet/ops/adain.py, "Constant
    // channels"): its formula gradient, scale / sqrt(eps) * (g - mean(g)), has true projection 0 on every constant
    // change, which rounding would turn into noise amplified by 1 / sqrt(eps).
    if (constant_row<in_t, acc_t>(xr, hw, mean)) {
      std::fill(dxr, dxr + hw, out_t(0));
      return;
    }
    const acc_t mean_g = sum_g / count, mean_gx = sum_gx / count;
    for (int64_t k = 0; k < hw; ++k) {
      const acc_t xhat = (static_cast<acc_t>(xr[k]) - mean) * rstd;
      dxr[k] = static_cast<out_t>(adain_input_grad<acc_t>(gr[k], xhat, s, rstd, mean_g, mean_gx));
    }
  };
  at::parallel_for(0, rows, std::max<int64_t>(1, kGrainElements / hw), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> g(hw);
    if constexpr (stage) {
      std::vector<float> xb(hw), dyb(hw), dxb(hw);
      for (int64_t r = begin; r < end; ++r) {
        load_row(x + r * hw, xb.data(), hw);
        load_row(dy + r * hw, dyb.data(), hw);
        row(r, xb.data(), dyb.data(), dxb.data(), g.data());
        store_row(dxb.data(), dx + r * hw, hw);
      }
    } else {
      for (int64_t r = begin; r < end; ++r) row(r, x + r * hw, dy + r * hw, dx + r * hw, g.data());
    }
  });
}

void check_inputs(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& bias, int64_t activation) {
  TORCH_CHECK(x.dim() == 4, "adain: x must be (N, C, H, W), got shape ", x.sizes());
  TORCH_CHECK(x.size(2) * x.size(3) > 0, "adain: H*W must be positive, got shape ", x.sizes());
  TORCH_CHECK(scale.dim() == 2 && scale.size(0) == x.size(0) && scale.size(1) == x.size(1),
              "adain: scale must be (N, C) = (", x.size(0), ", ", x.size(1), "), got ", scale.sizes());
  TORCH_CHECK(bias.sizes() == scale.sizes(), "adain: bias must be (N, C) like scale, got ", bias.sizes());
  TORCH_CHECK(activation >= kAdainNone && activation <= kAdainLeakyRelu,
              "adain: activation code must be 0 (none), 1 (relu) or 2 (lrelu), got ", activation);
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), "adain: x must be floating point, got ", x.scalar_type());
}

template <typename F>
void dispatch_activation(int64_t activation, F&& f) {
  switch (activation) {
    case kAdainRelu: f(std::integral_constant<int64_t, kAdainRelu>{}); break;
    case kAdainLeakyRelu: f(std::integral_constant<int64_t, kAdainLeakyRelu>{}); break;
    default: f(std::integral_constant<int64_t, kAdainNone>{}); break;
  }
}

// Statistics dtype: float64 for float64 inputs (gradcheck), else float32.
at::ScalarType stats_dtype(const at::Tensor& x) {
  return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> adain_forward_cpu(const at::Tensor& x, const at::Tensor& scale,
                                                                 const at::Tensor& bias,
                                                                 const std::optional<at::Tensor>& residual,
                                                                 int64_t activation, double eps, double negative_slope) {
  check_inputs(x, scale, bias, activation);
  const bool has_res = residual.has_value() && residual->defined();
  if (has_res)
    TORCH_CHECK(residual->sizes() == x.sizes(), "adain: residual must have x's shape ", x.sizes(), ", got ",
                residual->sizes());
  const auto xc = x.contiguous();
  const auto sd = stats_dtype(x);
  const auto sc = scale.to(sd).contiguous();
  const auto bc = bias.to(sd).contiguous();
  const auto rc = has_res ? residual->to(x.scalar_type()).contiguous() : at::Tensor();
  auto y = at::empty_like(xc);
  auto mean = at::empty({x.size(0), x.size(1)}, x.options().dtype(sd));
  auto rstd = at::empty_like(mean);
  const int64_t rows = x.size(0) * x.size(1), hw = x.size(2) * x.size(3);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "adain_forward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    dispatch_activation(activation, [&](auto act) {
      constexpr int64_t ACT = decltype(act)::value;
      auto run = [&](auto has) {
        forward_rows<scalar_t, ACT, decltype(has)::value>(
            xc.data_ptr<scalar_t>(), sc.data_ptr<acc_t>(), bc.data_ptr<acc_t>(),
            has_res ? rc.data_ptr<scalar_t>() : nullptr, y.data_ptr<scalar_t>(), mean.data_ptr<acc_t>(),
            rstd.data_ptr<acc_t>(), rows, hw, eps, negative_slope);
      };
      if (has_res) run(std::true_type{});
      else run(std::false_type{});
    });
  });
  return {y, mean, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> adain_backward_cpu(const at::Tensor& grad_y, const at::Tensor& x,
                                                                  const at::Tensor& scale, const at::Tensor& bias,
                                                                  const at::Tensor& mean, const at::Tensor& rstd,
                                                                  int64_t activation, double negative_slope) {
  check_inputs(x, scale, bias, activation);
  TORCH_CHECK(grad_y.sizes() == x.sizes(), "adain_backward: grad_y must have x's shape ", x.sizes(), ", got ",
              grad_y.sizes());
  TORCH_CHECK(mean.sizes() == scale.sizes() && rstd.sizes() == scale.sizes(),
              "adain_backward: mean and rstd must be (N, C), got ", mean.sizes(), " and ", rstd.sizes());
  const auto sd = stats_dtype(x);
  const auto xc = x.contiguous();
  const auto dyc = grad_y.to(x.scalar_type()).contiguous();
  const auto sc = scale.to(sd).contiguous();
  const auto bc = bias.to(sd).contiguous();
  const auto mc = mean.to(sd).contiguous();
  const auto rc = rstd.to(sd).contiguous();
  auto dx = at::empty_like(xc);
  auto dscale = at::empty({x.size(0), x.size(1)}, x.options().dtype(sd));
  auto dbias = at::empty_like(dscale);
  const int64_t rows = x.size(0) * x.size(1), hw = x.size(2) * x.size(3);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "adain_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    dispatch_activation(activation, [&](auto act) {
      backward_rows<scalar_t, decltype(act)::value>(
          dyc.data_ptr<scalar_t>(), xc.data_ptr<scalar_t>(), sc.data_ptr<acc_t>(), bc.data_ptr<acc_t>(),
          mc.data_ptr<acc_t>(), rc.data_ptr<acc_t>(), dx.data_ptr<scalar_t>(), dscale.data_ptr<acc_t>(),
          dbias.data_ptr<acc_t>(), rows, hw, negative_slope);
    });
  });
  return {dx, dscale.to(scale.scalar_type()), dbias.to(bias.scalar_type())};
}

TORCH_LIBRARY_IMPL(dgnet, CPU, m) {
  m.impl("adain_forward", &adain_forward_cpu);
  m.impl("adain_backward", &adain_backward_cpu);
}

}  // namespace dgnet
