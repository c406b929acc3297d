// Every dgnet operator schema, in one place. CPU kernels register in csrc/cpu/,
// CUDA kernels in csrc/cuda/, fake (meta) kernels and autograd in dgnet/ops/*.py.
#include <torch/library.h>

TORCH_LIBRARY(dgnet, m) {
  // ---- retrieval (dgnet/ops/retrieval.py) --------------------------------------------
  // Dense distance matrix [M, N] float32; metric: 0 euclidean, 1 sqeuclidean, 2 cosine;
  // chunk_rows <= 0 picks the chunk from a memory budget. Kernels: csrc/cpu/distance.cpp, csrc/cuda/retrieval.cu.
  m.def("pairwise_distance(Tensor x, Tensor y, int metric, int chunk_rows) -> Tensor");

  // ---- evaluation (dgnet/evaluation.py) ----------------------------------------------
  // Market-1501 protocol per query over distmat [Q, G] (floating) and int64 pids/camids [Q], [G]:
  // returns (ap float64 [Q], inp float64 [Q], first_rank int64 [Q]); a query without any true match
  // has first_rank 0 and NaN ap/inp. Kernels: csrc/cpu/evaluation.cpp, csrc/cuda/retrieval.cu.
  m.def("evaluate_queries(Tensor distmat, Tensor q_pids, Tensor g_pids, Tensor q_camids, Tensor g_camids) "
        "-> (Tensor, Tensor, Tensor)");

  // ---- fused AdaIN (dgnet/ops/adain.py) ----------------------------------------------
}
