// Host-side argument checks and feature preparation of the re-ranking ops, shared by the CPU
// (csrc/cpu/rerank.cpp) and CUDA (csrc/cuda/rerank.cu) kernels so both guard their inputs alike.
// The Python front (dgnet/ops/rerank.py) validates user arguments; these guard internal use.
#pragma once
#include <ATen/ATen.h>

#include "dgnet/rerank.h"

namespace dgnet {

// float32, contiguous, and L2-normalised rows for the cosine metric.
inline at::Tensor prepare_features(const at::Tensor& x, int64_t metric) {
  auto xf = x.to(at::kFloat).contiguous();
  if (metric == kCosine) xf = (xf / xf.norm(2, 1, true).clamp_min(1e-12)).contiguous();
  return xf;
}

// Sample indices read by a kernel as row offsets must lie in [0, n): a kernel trusts them for memory safety.
// One small reduction and one read back (a synchronisation on CUDA, next to the sizes the ops already read).
inline void check_index_range(const at::Tensor& t, int64_t n, const char* op, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kLong, op, ": expected ", name, " int64, got ", t.scalar_type());
  if (t.numel() == 0) return;
  const auto [lo, hi] = at::aminmax(t);
  const auto range = at::stack({lo, hi}).cpu();
  const int64_t l = range[0].item<int64_t>(), h = range[1].item<int64_t>();
  TORCH_CHECK(l >= 0 && h < n, op, ": ", name, " holds indices in [", l, ", ", h, "], expected [0, ", n, ")");
}

// A CSR over n rows: indptr [n + 1] from 0 to nnz, non-decreasing, and indices [nnz] in [0, n).
inline void check_csr(const at::Tensor& indptr, const at::Tensor& indices, int64_t n, const char* op) {
  TORCH_CHECK(indptr.dim() == 1 && indptr.size(0) == n + 1 && indptr.scalar_type() == at::kLong, op,
              ": expected indptr int64 [", n + 1, "], got ", indptr.scalar_type(), " ", indptr.sizes());
  TORCH_CHECK(indices.dim() == 1, op, ": expected indices [nnz], got ", indices.sizes());
  const auto steepest_fall = n > 0 ? indptr.diff().min().clamp_max(0) : at::zeros({}, indptr.options());
  const auto ends = at::stack({indptr[0], indptr[n], steepest_fall}).cpu();
  TORCH_CHECK(ends[0].item<int64_t>() == 0 && ends[1].item<int64_t>() == indices.size(0) &&
                  ends[2].item<int64_t>() == 0,
              op, ": indptr must rise from 0 to nnz = ", indices.size(0), " without decreasing");
  check_index_range(indices, n, op, "indices");
}

inline void check_knn(const at::Tensor& x, int64_t metric, int64_t k, int64_t num_query) {
  TORCH_CHECK(x.dim() == 2, "rerank_knn: expected x [N, D], got ", x.sizes());
  TORCH_CHECK(metric >= 0 && metric <= 2, "rerank_knn: metric must be 0 (euclidean), 1 (sqeuclidean) or 2 (cosine), ",
              "got ", metric, "; re-ranking squares non-negative distances, so neg_dot (3) has no meaning here");
  const int64_t n = x.size(0);
  TORCH_CHECK(k >= 1 && k <= n, "rerank_knn: k=", k, " must be in [1, N=", n, "]");
  TORCH_CHECK(num_query >= 0 && num_query <= n, "rerank_knn: num_query=", num_query, " must be in [0, N=", n, "]");
}

inline void check_dense_knn(const at::Tensor& q_g, const at::Tensor& q_q, const at::Tensor& g_g, int64_t k) {
  TORCH_CHECK(q_g.dim() == 2 && q_q.dim() == 2 && g_g.dim() == 2, "rerank_dense_knn: expected 2-D blocks");
  const int64_t q = q_g.size(0), g = q_g.size(1), n = q + g;
  TORCH_CHECK(q_q.size(0) == q && q_q.size(1) == q && g_g.size(0) == g && g_g.size(1) == g,
              "rerank_dense_knn: block shapes disagree");
  TORCH_CHECK(q_g.scalar_type() == q_q.scalar_type() && q_g.scalar_type() == g_g.scalar_type() &&
                  (q_g.scalar_type() == at::kFloat || q_g.scalar_type() == at::kDouble),
              "rerank_dense_knn: expected three float32 or three float64 blocks");
  TORCH_CHECK(k >= 1 && k <= n, "rerank_dense_knn: k=", k, " must be in [1, N=", n, "]");
}

inline void check_dense_gather(const at::Tensor& q_g, const at::Tensor& q_q, const at::Tensor& g_g,
                               const at::Tensor& colmax, const at::Tensor& indptr, const at::Tensor& indices) {
  TORCH_CHECK(q_g.dim() == 2 && q_q.dim() == 2 && g_g.dim() == 2, "rerank_dense_gather: expected 2-D blocks");
  const int64_t q = q_g.size(0), g = q_g.size(1), n = q + g;
  TORCH_CHECK(q_q.size(0) == q && q_q.size(1) == q && g_g.size(0) == g && g_g.size(1) == g &&
                  q_q.scalar_type() == q_g.scalar_type() && g_g.scalar_type() == q_g.scalar_type(),
              "rerank_dense_gather: expected blocks [Q, G], [Q, Q], [G, G] of one dtype");
  TORCH_CHECK(colmax.dim() == 1 && colmax.size(0) == n, "rerank_dense_gather: colmax must be [Q + G = ", n, "]");
  check_csr(indptr, indices, n, "rerank_dense_gather");
}

inline void check_expand(const at::Tensor& nbr, int64_t k1) {
  TORCH_CHECK(nbr.dim() == 2 && nbr.scalar_type() == at::kLong, "rerank_expand: expected nbr [N, K] int64");
  const int64_t n = nbr.size(0), k = nbr.size(1);
  // K = N is the whole order: sizes beyond it are capped as the classic code's slices are (expansion_sizes).
  TORCH_CHECK(k1 >= 1 && (k1 + 1 <= k || (k == n && n >= 1)), "rerank_expand: k1=", k1,
              " needs K >= k1 + 1 columns or all K = N of them, got K=", k, ", N=", n);
  check_index_range(nbr, n, "rerank_expand", "nbr");
}

inline void check_pair_dist(const at::Tensor& x, const at::Tensor& indptr, const at::Tensor& indices,
                            const at::Tensor& rowmax) {
  TORCH_CHECK(x.dim() == 2, "rerank_pair_dist: expected x [N, D], got ", x.sizes());
  TORCH_CHECK(rowmax.dim() == 1 && rowmax.size(0) == x.size(0), "rerank_pair_dist: rowmax must be [N]");
  check_csr(indptr, indices, x.size(0), "rerank_pair_dist");
}

inline void check_jaccard_mix(const at::Tensor& out, const at::Tensor& indptr, const at::Tensor& indices,
                              const at::Tensor& dist, const at::Tensor& nbr, int64_t k2) {
  TORCH_CHECK(out.dim() == 2 && out.scalar_type() == at::kFloat && out.is_contiguous(),
              "rerank_jaccard_mix_: expected out [Q, G] contiguous float32, got ", out.scalar_type(), " ",
              out.sizes(), out.is_contiguous() ? "" : " (not contiguous)");
  const int64_t n = out.size(0) + out.size(1);
  TORCH_CHECK(nbr.dim() == 2 && nbr.size(0) == n, "rerank_jaccard_mix_: nbr must be [Q + G = ", n, ", K]");
  TORCH_CHECK(k2 >= 1 && k2 <= nbr.size(1) && k2 <= kMaxQueryExpansion, "rerank_jaccard_mix_: k2=", k2,
              " must be in [1, min(K=", nbr.size(1), ", ", kMaxQueryExpansion, ")]");
  TORCH_CHECK(dist.dim() == 1 && dist.size(0) == indices.size(0), "rerank_jaccard_mix_: dist must be [nnz]");
  check_csr(indptr, indices, n, "rerank_jaccard_mix_");
  check_index_range(nbr.narrow(1, 0, k2), n, "rerank_jaccard_mix_", "nbr");
}

}  // namespace dgnet
