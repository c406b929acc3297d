// CUDA kernels of pairwise distance (dgnet/ops/distance.py): row terms, then one GEMM and an in-place epilogue
// per chunk of rows. The per-element formulas come from csrc/include/dgnet/distance.h, shared with the CPU kernel.
// nvcc's cost is mostly fixed per translation unit, so one file per op costs some compile time (docs/records.md).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <tuple>

#include "dgnet/distance.h"

namespace dgnet {

namespace {

constexpr int kThreads = 256;
constexpr int kWarp = 32;

// ---- pairwise distance --------------------------------------------------------------------------

// One warp per row: the row's term a_i (squared norm, or inverse norm for cosine).
__global__ void row_terms_kernel(const float* __restrict__ x, float* __restrict__ out, int64_t m, int64_t d,
                                 long metric) {
  const int64_t row = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (row >= m) return;
  const float* r = x + row * d;
  float s = 0.0f;
  for (int64_t k = lane; k < d; k += kWarp) s = fmaf(r[k], r[k], s);
  for (int off = kWarp / 2; off > 0; off /= 2) s += __shfl_down_sync(0xffffffffu, s, off);
  if (lane == 0) out[row] = distance_row_term(s, metric);
}

// In place over a chunk [rows, n] of GEMM output; blockIdx.y strides over rows (grid y is capped at 65535).
template <long Metric>
__global__ void distance_epilogue_kernel(float* __restrict__ out, const float* __restrict__ a,
                                         const float* __restrict__ b, int64_t rows, int64_t n) {
  const int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (j >= n) return;
  const float bj = b[j];
  for (int64_t i = blockIdx.y; i < rows; i += gridDim.y) {
    float* o = out + i * n + j;
    *o = distance_from_dot<Metric>(a[i], bj, *o);
  }
}

at::Tensor row_terms(const at::Tensor& xf, long metric, cudaStream_t stream) {
  const int64_t m = xf.size(0), d = xf.size(1);
  if (!uses_row_terms(metric)) return at::zeros({m}, xf.options());  // read by the epilogue, not used
  auto out = at::empty({m}, xf.options());
  if (m == 0) return out;
  const auto blocks = static_cast<unsigned>((m * kWarp + kThreads - 1) / kThreads);
  row_terms_kernel<<<blocks, kThreads, 0, stream>>>(xf.const_data_ptr<float>(), out.mutable_data_ptr<float>(), m,
                                                     d, metric);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

at::Tensor pairwise_distance_cuda(const at::Tensor& x, const at::Tensor& y, int64_t metric, int64_t chunk_rows) {
  TORCH_CHECK(x.dim() == 2 && y.dim() == 2 && x.size(1) == y.size(1),
              "pairwise_distance: expected x [M, D] and y [N, D], got ", x.sizes(), " and ", y.sizes());
  TORCH_CHECK(metric >= 0 && metric < kNumMetrics,
              "pairwise_distance: metric must be 0 (euclidean), 1 (sqeuclidean), 2 (cosine) or 3 (neg_dot), got ",
              metric);
  TORCH_CHECK(x.device() == y.device(), "pairwise_distance: x on ", x.device(), ", y on ", y.device());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()) && at::isFloatingType(y.scalar_type()),
              "pairwise_distance: expected floating inputs, got ", x.scalar_type(), " and ", y.scalar_type());
  c10::cuda::CUDAGuard guard(x.device());
  const auto xf = x.to(at::kFloat).contiguous();
  const auto yf = y.to(at::kFloat).contiguous();
  const int64_t m = xf.size(0), n = yf.size(0);
  auto out = at::empty({m, n}, xf.options());
  if (m == 0 || n == 0) return out;
  auto stream = c10::cuda::getCurrentCUDAStream().stream();
  const auto a = row_terms(xf, metric, stream);
  const auto b = row_terms(yf, metric, stream);
  const auto yt = yf.t();
  const int64_t step = chunk_rows > 0 ? chunk_rows : default_chunk_rows(m, n, kCudaChunkBytes, metric);
  for (int64_t r0 = 0; r0 < m; r0 += step) {
    const int64_t rows = std::min(m, r0 + step) - r0;
    auto block = out.narrow(0, r0, rows);
    at::mm_out(block, xf.narrow(0, r0, rows), yt);
    const dim3 grid(static_cast<unsigned>((n + kThreads - 1) / kThreads),
                    static_cast<unsigned>(std::min<int64_t>(rows, 65535)));
    float* op = block.mutable_data_ptr<float>();
    const float* ap = a.const_data_ptr<float>() + r0;
    const float* bp = b.const_data_ptr<float>();
    switch (metric) {
      case kEuclidean: distance_epilogue_kernel<kEuclidean><<<grid, kThreads, 0, stream>>>(op, ap, bp, rows, n); break;
      case kSqEuclidean:
        distance_epilogue_kernel<kSqEuclidean><<<grid, kThreads, 0, stream>>>(op, ap, bp, rows, n);
        break;
      case kCosine: distance_epilogue_kernel<kCosine><<<grid, kThreads, 0, stream>>>(op, ap, bp, rows, n); break;
      default: distance_epilogue_kernel<kNegDot><<<grid, kThreads, 0, stream>>>(op, ap, bp, rows, n); break;
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(dgnet, CUDA, m) { m.impl("pairwise_distance", &pairwise_distance_cuda); }

}  // namespace dgnet
