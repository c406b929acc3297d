// Pairwise distance on CPU: chunked GEMM plus a per-element epilogue shared with CUDA.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "dgnet/distance.h"

namespace dgnet {

at::Tensor pairwise_distance_cpu(const at::Tensor& x, const at::Tensor& y, int64_t metric, int64_t chunk_rows) {
  TORCH_CHECK(x.dim() == 2 && y.dim() == 2 && x.size(1) == y.size(1), "pairwise_distance: expected [M, D] and [N, D]");
  TORCH_CHECK(metric >= 0 && metric <= 2, "pairwise_distance: metric must be 0, 1 or 2, got ", metric);
  auto xf = x.to(at::kFloat).contiguous();
  auto yf = y.to(at::kFloat).contiguous();
  if (metric == kCosine) {
    xf = xf / xf.norm(2, 1, true).clamp_min(1e-12);
    yf = yf / yf.norm(2, 1, true).clamp_min(1e-12);
  }
  const int64_t m = xf.size(0), n = yf.size(0);
  auto out = at::empty({m, n}, xf.options());
  auto xx = xf.pow(2).sum(1);
  auto yy = yf.pow(2).sum(1).contiguous();
  const int64_t step = chunk_rows > 0 ? chunk_rows : m;
  for (int64_t r0 = 0; r0 < m; r0 += step) {
    const int64_t r1 = std::min(m, r0 + step);
    auto block = out.narrow(0, r0, r1 - r0);
    at::mm_out(block, xf.narrow(0, r0, r1 - r0), yf.t());
    const float* xxp = xx.data_ptr<float>() + r0;
    const float* yyp = yy.data_ptr<float>();
    float* bp = block.data_ptr<float>();
    at::parallel_for(0, r1 - r0, 1, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i)
        for (int64_t j = 0; j < n; ++j) bp[i * n + j] = distance_epilogue(xxp[i], yyp[j], bp[i * n + j], metric);
    });
  }
  return out;
}

TORCH_LIBRARY_IMPL(dgnet, CPU, m) { m.impl("pairwise_distance", &pairwise_distance_cpu); }

}  // namespace dgnet
