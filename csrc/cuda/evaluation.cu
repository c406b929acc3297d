// CUDA kernels of ranking evaluation (dgnet/ops/evaluation.py): one block per query counts its true matches,
// then runs the four steps of csrc/include/dgnet/evaluation.h, the per-query logic the CPU kernel shares.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <tuple>

#include "dgnet/evaluation_host.h"

namespace dgnet {

namespace {

constexpr int kThreads = 256;
constexpr int kWarp = 32;

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

TORCH_LIBRARY_IMPL(dgnet, CUDA, m) { m.impl("evaluate_queries", &evaluate_queries_cuda); }

}  // namespace dgnet
