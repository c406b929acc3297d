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

inline void check_knn(const at::Tensor& x, int64_t metric, int64_t k, int64_t num_query) {
  TORCH_CHECK(x.dim() == 2, "rerank_knn: expected x [N, D]");
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

inline void check_dense_gather(const at::Tensor& q_g, const at::Tensor& colmax, const at::Tensor& indptr) {
  const int64_t n = q_g.size(0) + q_g.size(1);
  TORCH_CHECK(indptr.size(0) == n + 1 && colmax.size(0) == n, "rerank_dense_gather: indptr/colmax must cover Q + G");
}

inline void check_expand(const at::Tensor& nbr, int64_t k1) {
  TORCH_CHECK(nbr.dim() == 2 && nbr.scalar_type() == at::kLong, "rerank_expand: expected nbr [N, K] int64");
  TORCH_CHECK(k1 >= 1 && k1 + 1 <= nbr.size(1), "rerank_expand: k1=", k1, " needs K >= k1 + 1, K=", nbr.size(1));
}

inline void check_pair_dist(const at::Tensor& x, const at::Tensor& indptr) {
  TORCH_CHECK(x.dim() == 2 && indptr.size(0) == x.size(0) + 1, "rerank_pair_dist: expected x [N, D], indptr [N+1]");
}

inline void check_jaccard_mix(const at::Tensor& out, const at::Tensor& indptr, const at::Tensor& nbr, int64_t k2) {
  TORCH_CHECK(out.dim() == 2 && out.scalar_type() == at::kFloat && out.is_contiguous(),
              "rerank_jaccard_mix_: expected out [Q, G] contiguous float32");
  const int64_t n = out.size(0) + out.size(1);
  TORCH_CHECK(indptr.size(0) == n + 1 && nbr.size(0) == n, "rerank_jaccard_mix_: indptr/nbr must cover Q + G rows");
  TORCH_CHECK(k2 >= 1 && k2 <= nbr.size(1) && k2 <= kMaxQueryExpansion, "rerank_jaccard_mix_: bad k2=", k2);
}

}  // namespace dgnet
