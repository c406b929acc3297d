// CUDA kernels of the retrieval ops: pairwise distance (dgnet/ops/distance.py) and ranking evaluation
// (dgnet/ops/evaluation.py). One translation unit on purpose: nvcc's cost is mostly fixed per unit (torch's
// headers, compiled for the host and for every GPU architecture). Split into distance.cu and evaluation.cu,
// the two took 106 s of compiler CPU time against 61 s for this one (2 cores, torch 2.14.1, CUDA 13.0,
// sm_80 + sm_90): about 15% more for the whole extension. Per-element and per-query logic comes from
// csrc/include/dgnet/, shared with the CPU kernels.
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
#include "dgnet/evaluation_host.h"

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

// ---- ranking evaluation -------------------------------------------------------------------------

__device__ int64_t block_sum(int64_t v, int64_t* scratch) {
  for (int off = kWarp / 2; off > 0; off /= 2) v += __shfl_down_sync(0xffffffffu, v, off);
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  int64_t total = 0;
  if (threadIdx.x == 0)
    for (int w = 0; w < kThreads / kWarp; ++w) total += scratch[w];
  return total;  // valid in thread 0 only
}

// One block per query: the number of true matches R of the query.
__global__ void count_matches_kernel(const int64_t* __restrict__ qp, const int64_t* __restrict__ gp,
                                     const int64_t* __restrict__ qc, const int64_t* __restrict__ gc, int64_t ng,
                                     int64_t* __restrict__ counts) {
  __shared__ int64_t scratch[kThreads / kWarp];
  const int64_t q = blockIdx.x;
  const int64_t qpid = qp[q], qcam = qc[q];
  int64_t c = 0;
  for (int64_t j = threadIdx.x; j < ng; j += blockDim.x) c += is_match(gp[j], gc[j], qpid, qcam) ? 1 : 0;
  const int64_t total = block_sum(c, scratch);
  if (threadIdx.x == 0) counts[q] = total;
}

// One block per query, the four steps of dgnet/evaluation.h. The query's R matches live in
// global scratch at [offsets[q], offsets[q] + R): unsorted indices, sorted indices and distances, histogram.
template <typename T>
__global__ void evaluate_queries_kernel(const T* __restrict__ dist, const int64_t* __restrict__ qp,
                                        const int64_t* __restrict__ gp, const int64_t* __restrict__ qc,
                                        const int64_t* __restrict__ gc, int64_t ng,
                                        const int64_t* __restrict__ counts, const int64_t* __restrict__ offsets,
                                        int32_t* __restrict__ unsorted, int32_t* __restrict__ sorted,
                                        T* __restrict__ sorted_vals, int32_t* __restrict__ hist,
                                        QueryOutputs out) {
  __shared__ int fill;
  const int64_t q = blockIdx.x;
  const T* row = dist + q * ng;
  const int64_t qpid = qp[q], qcam = qc[q];
  const int64_t r = counts[q], off = offsets[q];
  int32_t* mine = unsorted + off;
  int32_t* order = sorted + off;
  T* vals = sorted_vals + off;
  int32_t* h = hist + off;
  if (threadIdx.x == 0) fill = 0;
  __syncthreads();
  // 1. Collect the matches (in any order).
  for (int64_t j = threadIdx.x; j < ng; j += blockDim.x)
    if (is_match(gp[j], gc[j], qpid, qcam)) mine[atomicAdd(&fill, 1)] = static_cast<int32_t>(j);
  __syncthreads();
  // 2. Sort them by (distance, index): each match's position is the count of matches ranked before it.
  //    O(R^2 / threads), never more than the O(R * G) of counting each match's rank directly.
  for (int64_t a = threadIdx.x; a < r; a += blockDim.x) {
    const int64_t ja = mine[a];
    const T da = row[ja];
    int64_t pos = 0;
    for (int64_t k = 0; k < r; ++k) {
      const int64_t jk = mine[k];
      pos += ranks_before(row[jk], jk, da, ja) ? 1 : 0;
    }
    order[pos] = static_cast<int32_t>(ja);
    vals[pos] = da;
  }
  __syncthreads();
  // 3. Histogram of insertion positions of the non-matches ranked before the last match.
  if (r > 0) {
    const int64_t jl = order[r - 1];
    const T dl = vals[r - 1];
    for (int64_t j = threadIdx.x; j < ng; j += blockDim.x) {
      const T d = row[j];
      if (ranks_before(d, j, dl, jl) && is_kept_nonmatch(gp[j], qpid))
        atomicAdd(&h[insertion_position(vals, order, r, d, j)], 1);
    }
  }
  __syncthreads();
  // 4. Ranks to AP, first rank, INP.
  if (threadIdx.x == 0) {
    out.store(q, finish_query(h, r, __longlong_as_double(0x7ff8000000000000LL)));
  }
}

EvaluateOutputs evaluate_queries_cuda(const at::Tensor& distmat, const at::Tensor& q_pids, const at::Tensor& g_pids,
                                      const at::Tensor& q_camids, const at::Tensor& g_camids) {
  check_evaluate_inputs(distmat, q_pids, g_pids, q_camids, g_camids);
  c10::cuda::CUDAGuard guard(distmat.device());
  auto d = (distmat.scalar_type() == at::kDouble ? distmat : distmat.to(at::kFloat)).contiguous();
  auto qp = q_pids.contiguous(), gp = g_pids.contiguous(), qc = q_camids.contiguous(), gc = g_camids.contiguous();
  const int64_t nq = d.size(0), ng = d.size(1);
  auto out = empty_evaluate_outputs(d);
  if (nq == 0) return out;
  auto stream = c10::cuda::getCurrentCUDAStream().stream();
  auto counts = at::empty({nq}, std::get<2>(out).options());
  count_matches_kernel<<<static_cast<unsigned>(nq), kThreads, 0, stream>>>(
      qp.const_data_ptr<int64_t>(), gp.const_data_ptr<int64_t>(), qc.const_data_ptr<int64_t>(),
      gc.const_data_ptr<int64_t>(), ng, counts.mutable_data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  auto ends = at::cumsum(counts, 0);
  const auto offsets = ends - counts;
  // The one host synchronisation: the size of the scratch for all queries' matches.
  const int64_t total = ends[nq - 1].item<int64_t>();
  auto idx_opts = d.options().dtype(at::kInt);
  auto unsorted = at::empty({total}, idx_opts);
  auto sorted = at::empty({total}, idx_opts);
  auto sorted_vals = at::empty({total}, d.options());
  auto hist = at::zeros({total}, idx_opts);
  AT_DISPATCH_FLOATING_TYPES(d.scalar_type(), "evaluate_queries_cuda", [&] {
    evaluate_queries_kernel<scalar_t><<<static_cast<unsigned>(nq), kThreads, 0, stream>>>(
        d.const_data_ptr<scalar_t>(), qp.const_data_ptr<int64_t>(), gp.const_data_ptr<int64_t>(),
        qc.const_data_ptr<int64_t>(), gc.const_data_ptr<int64_t>(), ng, counts.const_data_ptr<int64_t>(),
        offsets.const_data_ptr<int64_t>(), unsorted.mutable_data_ptr<int32_t>(), sorted.mutable_data_ptr<int32_t>(),
        sorted_vals.mutable_data_ptr<scalar_t>(), hist.mutable_data_ptr<int32_t>(), output_pointers(out));
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(dgnet, CUDA, m) {
  m.impl("pairwise_distance", &pairwise_distance_cuda);
  m.impl("evaluate_queries", &evaluate_queries_cuda);
}

}  // namespace dgnet
