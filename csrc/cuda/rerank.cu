// CUDA kernels of k-reciprocal re-ranking: one translation unit on purpose (nvcc's cost is mostly fixed
// per unit; docs/records.md). Per-row and per-element logic comes from dgnet/rerank.h, the same
// code the CPU kernels (csrc/cpu/rerank.cpp) run. Everything stays on the device; the host reads back only
// sizes (the number of sparse entries) to allocate, and the range checks of direct calls' index arguments
// (dgnet/rerank_checks.h).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>

#include "dgnet/rerank.h"
#include "dgnet/rerank_checks.h"

namespace dgnet {
namespace {

constexpr int kThreads = 256;

inline unsigned blocks_for(int64_t n, int threads = kThreads) {
  return static_cast<unsigned>(std::max<int64_t>(1, (n + threads - 1) / threads));
}

inline cudaStream_t stream() { return c10::cuda::getCurrentCUDAStream(); }

// ---- neighbour tables -----------------------------------------------------------------------

// Dot products [rows, n] -> squared distances, in place.
__global__ void base_sq_kernel(float* __restrict__ d, const float* __restrict__ xx, int64_t r0, int64_t rows,
                               int64_t n, long metric) {
  const int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (e >= rows * n) return;
  const int64_t i = e / n, j = e - i * n;
  d[e] = rerank_base_sq(xx[r0 + i], xx[j], d[e], metric);
}

// Rows r0.. of the squared block matrix's transpose (output row i holds column i), [rows, n].
template <typename T>
__global__ void block_column_kernel(float* __restrict__ out, const T* __restrict__ qg, const T* __restrict__ qq,
                                    const T* __restrict__ gg, int64_t q, int64_t g, int64_t r0, int64_t rows) {
  const int64_t n = q + g;
  const int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (e >= rows * n) return;
  const int64_t i = e / n, j = e - i * n;
  out[e] = block_matrix_sq(qg, qq, gg, q, g, j, r0 + i);
}

// Top-k of each row of a chunk of values into the table rows r0.., and the rows' maxima.
void fold_chunk(const at::Tensor& values, int64_t r0, int64_t k, at::Tensor& idx, at::Tensor& rowmax) {
  const int64_t rows = values.size(0);
  rowmax.narrow(0, r0, rows).copy_(values.amax(1));
  idx.narrow(0, r0, rows).copy_(std::get<1>(values.topk(k, 1, /*largest=*/false, /*sorted=*/true)));
}

// ---- sparse core ----------------------------------------------------------------------------

__global__ void expansion_kernel(const int64_t* __restrict__ nbr, int64_t n, int64_t stride, ExpansionSizes sizes,
                                 int64_t cap,
                                 int64_t* __restrict__ padded, int64_t* __restrict__ counts) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  counts[i] = expansion_set(nbr, stride, i, sizes, padded + i * cap);
}

__global__ void compact_kernel(const int64_t* __restrict__ padded, int64_t n, int64_t cap,
                               const int64_t* __restrict__ indptr, int64_t* __restrict__ out) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  for (int64_t t = indptr[i]; t < indptr[i + 1]; ++t) out[t] = padded[i * cap + (t - indptr[i])];
}

// One block per row, one warp per entry, lanes over the feature dimension.
__global__ void pair_dist_kernel(const float* __restrict__ x, const float* __restrict__ xx, int64_t d,
                                 const int64_t* __restrict__ indptr, const int64_t* __restrict__ indices,
                                 const float* __restrict__ rowmax, long metric, float* __restrict__ out) {
  const int64_t i = blockIdx.x;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  const float* xi = x + i * d;
  for (int64_t t = indptr[i] + warp; t < indptr[i + 1]; t += warps) {
    const int64_t j = indices[t];
    const float* xj = x + j * d;
    float s = 0.0f;
    for (int64_t c = lane; c < d; c += 32) s += xi[c] * xj[c];
    for (int off = 16; off > 0; off /= 2) s += __shfl_down_sync(0xffffffffu, s, off);
    if (lane == 0) out[t] = normalise(rerank_base_sq(xx[i], xx[j], s, metric), rowmax[i]);
  }
}

template <typename T>
__global__ void dense_gather_kernel(const T* __restrict__ qg, const T* __restrict__ qq, const T* __restrict__ gg,
                                    int64_t q, int64_t g, const float* __restrict__ colmax,
                                    const int64_t* __restrict__ indptr, const int64_t* __restrict__ indices,
                                    float* __restrict__ out) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= q + g) return;
  for (int64_t t = indptr[i]; t < indptr[i + 1]; ++t)
    out[t] = normalise(block_matrix_sq(qg, qq, gg, q, g, indices[t], i), colmax[i]);
}

// V: Gaussian weights normalised per row; also each entry's row (for the inverted index).
__global__ void weights_kernel(const int64_t* __restrict__ indptr, const float* __restrict__ dist, int64_t n,
                               float* __restrict__ v) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  float sum = 0.0f;
  for (int64_t t = indptr[i]; t < indptr[i + 1]; ++t) sum += (v[t] = gaussian_weight(dist[t]));
  for (int64_t t = indptr[i]; t < indptr[i + 1]; ++t) v[t] /= sum;
}

__global__ void qe_kernel(const int64_t* __restrict__ indptr, const int64_t* __restrict__ cols,
                          const float* __restrict__ vals, const int64_t* __restrict__ nbr, int64_t stride, int64_t n,
                          int k2, const int64_t* __restrict__ out_ptr, int64_t* __restrict__ counts,
                          int64_t* __restrict__ out_cols, float* __restrict__ out_vals) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  if (out_ptr == nullptr) {
    counts[i] = qe_merge_row(indptr, cols, vals, nbr + i * stride, k2, nullptr, nullptr);
  } else {
    qe_merge_row(indptr, cols, vals, nbr + i * stride, k2, out_cols + out_ptr[i], out_vals + out_ptr[i]);
  }
}

__global__ void row_ids_kernel(const int64_t* __restrict__ indptr, int64_t r0, int64_t rows,
                               int64_t* __restrict__ out) {
  const int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (r >= rows) return;
  const int64_t base = indptr[r0];
  for (int64_t t = indptr[r0 + r]; t < indptr[r0 + r + 1]; ++t) out[t - base] = r;
}

// One block per query of the chunk, one warp per entry (column c) of the query's row, lanes over the
// gallery rows holding column c: acc[query, r] += min(V[query, c], V[r, c]).
__global__ void overlap_kernel(const int64_t* __restrict__ vptr, const int64_t* __restrict__ vcol,
                               const float* __restrict__ vval, const int64_t* __restrict__ cptr,
                               const int64_t* __restrict__ crow, const float* __restrict__ cval, int64_t q0,
                               int64_t g, float* __restrict__ acc) {
  const int64_t i = q0 + blockIdx.x;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  float* row = acc + static_cast<int64_t>(blockIdx.x) * g;
  for (int64_t t = vptr[i] + warp; t < vptr[i + 1]; t += warps) {
    const int64_t c = vcol[t];
    const float a = vval[t];
    for (int64_t p = cptr[c] + lane; p < cptr[c + 1]; p += 32) atomicAdd(row + crow[p], overlap_term(a, cval[p]));
  }
}

__global__ void mix_kernel(float* __restrict__ out, const float* __restrict__ acc, int64_t count, float lambda_value) {
  const int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (e >= count) return;
  out[e] = rerank_mix(acc[e], out[e], lambda_value);
}

at::Tensor exclusive_indptr(const at::Tensor& counts) {
  auto indptr = at::zeros({counts.size(0) + 1}, counts.options());
  indptr.narrow(0, 1, counts.size(0)).copy_(counts.cumsum(0));
  return indptr;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> rerank_knn_cuda(const at::Tensor& x, int64_t metric, int64_t k,
                                                               int64_t block_rows, int64_t num_query) {
  check_knn(x, metric, k, num_query);
  const int64_t n = x.size(0);
  c10::cuda::CUDAGuard guard(x.device());
  const auto xf = prepare_features(x, metric);
  const auto xx = xf.pow(2).sum(1).contiguous();
  auto idx = at::empty({n, k}, xf.options().dtype(at::kLong));
  auto rowmax = at::empty({n}, xf.options());
  const int64_t nq = num_query, ng = n - num_query;
  auto qg = at::empty({nq, nq > 0 ? ng : 0}, xf.options());
  const int64_t b = block_rows > 0 ? block_rows : 1024;
  for (int64_t r0 = 0; r0 < n; r0 += b) {
    const int64_t rows = std::min(n, r0 + b) - r0;
    auto d = at::mm(xf.narrow(0, r0, rows), xf.t());
    base_sq_kernel<<<blocks_for(rows * n), kThreads, 0, stream()>>>(d.data_ptr<float>(), xx.data_ptr<float>(), r0,
                                                                    rows, n, metric);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    fold_chunk(d, r0, k, idx, rowmax);
    if (r0 < nq) {  // query rows keep their gallery columns for the [Q, G] block of the result
      const int64_t rq = std::min(nq, r0 + rows) - r0;
      qg.narrow(0, r0, rq).copy_(d.narrow(0, 0, rq).narrow(1, nq, ng));
    }
  }
  return {idx, rowmax, qg};
}

std::tuple<at::Tensor, at::Tensor> rerank_dense_knn_cuda(const at::Tensor& q_g, const at::Tensor& q_q,
                                                         const at::Tensor& g_g, int64_t k) {
  check_dense_knn(q_g, q_q, g_g, k);
  const int64_t q = q_g.size(0), g = q_g.size(1), n = q + g;
  c10::cuda::CUDAGuard guard(q_g.device());
  const auto a = q_g.contiguous(), bq = q_q.contiguous(), c = g_g.contiguous();
  const auto fopt = a.options().dtype(at::kFloat);
  auto idx = at::empty({n, k}, fopt.dtype(at::kLong));
  auto colmax = at::empty({n}, fopt);
  const int64_t chunk = std::max<int64_t>(1, std::min<int64_t>(n, (int64_t{1} << 28) / n));
  for (int64_t r0 = 0; r0 < n; r0 += chunk) {
    const int64_t rows = std::min(n, r0 + chunk) - r0;
    auto values = at::empty({rows, n}, fopt);
    AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "rerank_dense_knn_cuda", [&] {
      block_column_kernel<scalar_t><<<blocks_for(rows * n), kThreads, 0, stream()>>>(
          values.data_ptr<float>(), a.data_ptr<scalar_t>(), bq.data_ptr<scalar_t>(), c.data_ptr<scalar_t>(), q, g, r0,
          rows);
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    fold_chunk(values, r0, k, idx, colmax);
  }
  return {idx, colmax};
}

at::Tensor rerank_dense_gather_cuda(const at::Tensor& q_g, const at::Tensor& q_q, const at::Tensor& g_g,
                                    const at::Tensor& colmax, const at::Tensor& indptr, const at::Tensor& indices) {
  check_dense_gather(q_g, q_q, g_g, colmax, indptr, indices);
  const int64_t q = q_g.size(0), g = q_g.size(1), n = q + g;
  c10::cuda::CUDAGuard guard(q_g.device());
  const auto a = q_g.contiguous(), bq = q_q.contiguous(), c = g_g.contiguous();
  const auto ip = indptr.contiguous(), ix = indices.contiguous();
  const auto cm = colmax.to(at::kFloat).contiguous();
  auto out = at::empty({ix.size(0)}, a.options().dtype(at::kFloat));
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "rerank_dense_gather_cuda", [&] {
    dense_gather_kernel<scalar_t><<<blocks_for(n), kThreads, 0, stream()>>>(
        a.data_ptr<scalar_t>(), bq.data_ptr<scalar_t>(), c.data_ptr<scalar_t>(), q, g, cm.data_ptr<float>(),
        ip.data_ptr<int64_t>(), ix.data_ptr<int64_t>(), out.data_ptr<float>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

std::tuple<at::Tensor, at::Tensor> rerank_expand_cuda(const at::Tensor& nbr, int64_t k1) {
  check_expand(nbr, k1);
  c10::cuda::CUDAGuard guard(nbr.device());
  const auto nb = nbr.contiguous();
  const int64_t n = nb.size(0), stride = nb.size(1);
  const ExpansionSizes sizes = expansion_sizes(k1, stride);
  const int64_t cap = expansion_capacity(sizes);
  auto padded = at::empty({n, cap}, nb.options());
  auto counts = at::empty({n}, nb.options());
  expansion_kernel<<<blocks_for(n, 128), 128, 0, stream()>>>(nb.data_ptr<int64_t>(), n, stride, sizes,
                                                              cap, padded.data_ptr<int64_t>(),
                                                              counts.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  auto indptr = exclusive_indptr(counts);
  const int64_t nnz = indptr[n].item<int64_t>();  // a size: the one host read
  auto indices = at::empty({nnz}, nb.options());
  compact_kernel<<<blocks_for(n), kThreads, 0, stream()>>>(padded.data_ptr<int64_t>(), n, cap,
                                                           indptr.data_ptr<int64_t>(), indices.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {indptr, indices};
}

at::Tensor rerank_pair_dist_cuda(const at::Tensor& x, const at::Tensor& indptr, const at::Tensor& indices,
                                 const at::Tensor& rowmax, int64_t metric) {
  check_pair_dist(x, indptr, indices, rowmax);
  c10::cuda::CUDAGuard guard(x.device());
  const auto xf = prepare_features(x, metric);
  const auto xx = xf.pow(2).sum(1).contiguous();
  const auto ip = indptr.contiguous(), ix = indices.contiguous();
  const auto rm = rowmax.to(at::kFloat).contiguous();
  auto out = at::empty({ix.size(0)}, xf.options());
  const int64_t n = xf.size(0);
  if (n > 0) {
    pair_dist_kernel<<<static_cast<unsigned>(n), 128, 0, stream()>>>(
        xf.data_ptr<float>(), xx.data_ptr<float>(), xf.size(1), ip.data_ptr<int64_t>(), ix.data_ptr<int64_t>(),
        rm.data_ptr<float>(), metric, out.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return out;
}

void rerank_jaccard_mix_cuda(const at::Tensor& out, const at::Tensor& indptr, const at::Tensor& indices,
                             const at::Tensor& dist, const at::Tensor& nbr, int64_t k2, double lambda_value) {
  check_jaccard_mix(out, indptr, indices, dist, nbr, k2);
  const int64_t q = out.size(0), g = out.size(1), n = q + g;
  c10::cuda::CUDAGuard guard(out.device());
  const auto ip = indptr.contiguous(), ix = indices.contiguous(), nb = nbr.contiguous();
  const auto dv = dist.to(at::kFloat).contiguous();
  const auto fopt = out.options();
  const auto lopt = ip.options();

  auto v = at::empty({ix.size(0)}, fopt);
  weights_kernel<<<blocks_for(n), kThreads, 0, stream()>>>(ip.data_ptr<int64_t>(), dv.data_ptr<float>(), n,
                                                           v.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  at::Tensor vptr = ip, vcol = ix, vval = v;
  if (k2 != 1) {
    auto counts = at::empty({n}, lopt);
    qe_kernel<<<blocks_for(n, 128), 128, 0, stream()>>>(ip.data_ptr<int64_t>(), ix.data_ptr<int64_t>(),
                                                         v.data_ptr<float>(), nb.data_ptr<int64_t>(), nb.size(1), n,
                                                         static_cast<int>(k2), nullptr, counts.data_ptr<int64_t>(),
                                                         nullptr, nullptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    vptr = exclusive_indptr(counts);
    const int64_t nnz = vptr[n].item<int64_t>();
    vcol = at::empty({nnz}, lopt);
    vval = at::empty({nnz}, fopt);
    qe_kernel<<<blocks_for(n, 128), 128, 0, stream()>>>(ip.data_ptr<int64_t>(), ix.data_ptr<int64_t>(),
                                                         v.data_ptr<float>(), nb.data_ptr<int64_t>(), nb.size(1), n,
                                                         static_cast<int>(k2), vptr.data_ptr<int64_t>(), nullptr,
                                                         vcol.data_ptr<int64_t>(), vval.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  // Inverted index over the gallery rows: entries sorted by column (stable, so rows stay ascending).
  const int64_t g0 = vptr[q].item<int64_t>(), g1 = vptr[n].item<int64_t>();
  auto grow = at::empty({g1 - g0}, lopt);
  row_ids_kernel<<<blocks_for(g), kThreads, 0, stream()>>>(vptr.data_ptr<int64_t>(), q, g, grow.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const auto gcol = vcol.narrow(0, g0, g1 - g0);
  const auto perm = std::get<1>(gcol.sort(/*stable=*/true, /*dim=*/0, /*descending=*/false));
  const auto crow = grow.index_select(0, perm).contiguous();
  const auto cval = vval.narrow(0, g0, g1 - g0).index_select(0, perm).contiguous();
  const auto cptr = exclusive_indptr(at::bincount(gcol, {}, n));

  // Queries in chunks, so the accumulator stays bounded (about 256 MB).
  const int64_t chunk = std::max<int64_t>(1, std::min<int64_t>(q, (int64_t{1} << 26) / std::max<int64_t>(g, 1)));
  auto acc = at::empty({chunk, g}, fopt);
  float* outp = out.data_ptr<float>();
  for (int64_t q0 = 0; q0 < q; q0 += chunk) {
    const int64_t rows = std::min(q, q0 + chunk) - q0;
    auto a = acc.narrow(0, 0, rows);
    a.zero_();
    overlap_kernel<<<static_cast<unsigned>(rows), kThreads, 0, stream()>>>(
        vptr.data_ptr<int64_t>(), vcol.data_ptr<int64_t>(), vval.data_ptr<float>(), cptr.data_ptr<int64_t>(),
        crow.data_ptr<int64_t>(), cval.data_ptr<float>(), q0, g, a.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    mix_kernel<<<blocks_for(rows * g), kThreads, 0, stream()>>>(outp + q0 * g, a.data_ptr<float>(), rows * g,
                                                                static_cast<float>(lambda_value));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

TORCH_LIBRARY_IMPL(dgnet, CUDA, m) {
  m.impl("rerank_knn", &rerank_knn_cuda);
  m.impl("rerank_dense_knn", &rerank_dense_knn_cuda);
  m.impl("rerank_dense_gather", &rerank_dense_gather_cuda);
  m.impl("rerank_expand", &rerank_expand_cuda);
  m.impl("rerank_pair_dist", &rerank_pair_dist_cuda);
  m.impl("rerank_jaccard_mix_", &rerank_jaccard_mix_cuda);
}

}  // namespace dgnet
