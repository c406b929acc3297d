// CUDA kernels of the retrieval ops. One translation unit on purpose: each costs about a
// minute of nvcc time on a 2-core machine. Per-element logic comes from csrc/include/dgnet/.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "dgnet/distance.h"

namespace dgnet {
namespace {

__global__ void distance_epilogue_kernel(float* __restrict__ out, const float* __restrict__ xx,
                                         const float* __restrict__ yy, int64_t rows, int64_t n, long metric) {
  const int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (idx >= rows * n) return;
  const int64_t i = idx / n, j = idx - i * n;
  out[idx] = distance_epilogue(xx[i], yy[j], out[idx], metric);
}

}  // namespace

at::Tensor pairwise_distance_cuda(const at::Tensor& x, const at::Tensor& y, int64_t metric, int64_t chunk_rows) {
  TORCH_CHECK(x.dim() == 2 && y.dim() == 2 && x.size(1) == y.size(1), "pairwise_distance: expected [M, D] and [N, D]");
  TORCH_CHECK(metric >= 0 && metric <= 2, "pairwise_distance: metric must be 0, 1 or 2, got ", metric);
  c10::cuda::CUDAGuard guard(x.device());
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
  auto stream = c10::cuda::getCurrentCUDAStream();
  for (int64_t r0 = 0; r0 < m; r0 += step) {
    const int64_t rows = std::min(m, r0 + step) - r0;
    auto block = out.narrow(0, r0, rows);
    at::mm_out(block, xf.narrow(0, r0, rows), yf.t());
    const int64_t total = rows * n;
    if (total == 0) continue;
    const int threads = 256;
    const auto blocks = static_cast<unsigned>((total + threads - 1) / threads);
    distance_epilogue_kernel<<<blocks, threads, 0, stream>>>(block.data_ptr<float>(), xx.data_ptr<float>() + r0,
                                                             yy.data_ptr<float>(), rows, n, metric);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return out;
}

TORCH_LIBRARY_IMPL(dgnet, CUDA, m) { m.impl("pairwise_distance", &pairwise_distance_cuda); }

}  // namespace dgnet
