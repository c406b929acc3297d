// Every dgnet operator schema, in one place. CPU kernels register in csrc/cpu/,
// CUDA kernels in csrc/cuda/, fake (meta) kernels and autograd in dgnet/ops/*.py.
#include <torch/library.h>

TORCH_LIBRARY(dgnet, m) {
  // ---- distance (dgnet/ops/distance.py) ----------------------------------------------
  // Dense distance matrix [M, N] float32; metric: 0 euclidean, 1 sqeuclidean, 2 cosine, 3 neg_dot (-<x, y>);
  // chunk_rows <= 0 picks the chunk from a memory budget. Kernels: csrc/cpu/distance.cpp, csrc/cuda/distance.cu.
  m.def("pairwise_distance(Tensor x, Tensor y, int metric, int chunk_rows) -> Tensor");

  // ---- evaluation (dgnet/ops/evaluation.py, used by dgnet/evaluation/rank.py) ---------------
  // Market-1501 protocol per query over distmat [Q, G] (floating) and int64 pids/camids [Q], [G]:
  // returns (ap float64 [Q], inp float64 [Q], first_rank int64 [Q], ap_trapz float64 [Q]); a query without
  // any true match has first_rank 0 and NaN ap/inp/ap_trapz (AP definitions: dgnet/evaluation.h).
  // Kernels: csrc/cpu/evaluation.cpp, csrc/cuda/evaluation.cu.
  m.def("evaluate_queries(Tensor distmat, Tensor q_pids, Tensor g_pids, Tensor q_camids, Tensor g_camids) "
        "-> (Tensor, Tensor, Tensor, Tensor)");

  // ---- re-ranking (dgnet/ops/rerank.py) ----------------------------------------------
  // k-reciprocal re-ranking over N = Q + G samples, rows 0..Q-1 the queries. Kernels: csrc/cpu/rerank.cpp,
  // csrc/cuda/rerank.cu; per-row logic in csrc/include/dgnet/rerank.h.
  // From features x [N, D]: the k nearest rows of every row by squared metric distance (itself
  // included, ascending) as int64 [N, k], each row's largest squared distance, float32 [N], and the
  // squared distances of the first num_query rows to the others, float32 [num_query, N - num_query].
  m.def("rerank_knn(Tensor x, int metric, int k, int block_rows, int num_query) -> (Tensor, Tensor, Tensor)");
  // The same from the classic interface's blocks q_g [Q, G], q_q [Q, Q], g_g [G, G] (float32 or float64):
  // rows of the block matrix squared and normalised as the classic code does (column i over its
  // maximum, transposed); returns the table int64 [N, k] and the normalisers float32 [N].
  m.def("rerank_dense_knn(Tensor q_g, Tensor q_q, Tensor g_g, int k) -> (Tensor, Tensor)");
  // That normalised matrix's values at the CSR entries (i, j): float32 [nnz].
  m.def("rerank_dense_gather(Tensor q_g, Tensor q_q, Tensor g_g, Tensor colmax, Tensor indptr, Tensor indices) "
        "-> Tensor");
  // From the neighbour table nbr int64 [N, K >= k1 + 1]: the k-reciprocal expansion sets as CSR
  // (indptr int64 [N + 1], indices int64 [nnz], sorted within each row).
  m.def("rerank_expand(Tensor nbr, int k1) -> (Tensor, Tensor)");
  // Normalised squared distance d(i, j)^2 / rowmax[i] of every CSR entry (i, j), from features.
  m.def("rerank_pair_dist(Tensor x, Tensor indptr, Tensor indices, Tensor rowmax, int metric) -> Tensor");
  // Gaussian weights, local query expansion over k2 rows, Jaccard and the final mix. out float32
  // [Q, G] holds the normalised original distances on entry, the re-ranked ones on return.
  m.def("rerank_jaccard_mix_(Tensor(a!) out, Tensor indptr, Tensor indices, Tensor dist, Tensor nbr, int k2, "
        "float lambda_value) -> ()");

  // ---- fused AdaIN (dgnet/ops/adain.py) ----------------------------------------------
  // y = act(scale * (x - mean_hw) * rstd + bias) [+ residual] over x (N, C, H, W), scale/bias (N, C);
  // activation: 0 none, 1 relu, 2 leaky relu (negative_slope). Returns y in x's dtype and the
  // (N, C) mean and rstd (float32, float64 for float64 x) that are all the backward keeps.
  // The backward returns grad_x, grad_scale, grad_bias; grad_residual is grad_y itself.
  // Kernels: CPU in csrc/cpu/adain.cpp. The Triton twins (dgnet::adain_triton_forward/backward,
  // same arguments) are torch.library.triton_op ops declared in dgnet/ops/adain.py, because
  // triton_op derives its schema from the Python function it wraps.
  m.def("adain_forward(Tensor x, Tensor scale, Tensor bias, Tensor? residual, int activation, float eps, "
        "float negative_slope) -> (Tensor, Tensor, Tensor)");
  m.def("adain_backward(Tensor grad_y, Tensor x, Tensor scale, Tensor bias, Tensor mean, Tensor rstd, "
        "int activation, float negative_slope) -> (Tensor, Tensor, Tensor)");
}
