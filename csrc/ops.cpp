// Every dgnet operator schema, in one place. CPU kernels register in csrc/cpu/,
// CUDA kernels in csrc/cuda/, fake (meta) kernels and autograd in dgnet/ops/*.py.
#include <torch/library.h>

TORCH_LIBRARY(dgnet, m) {
  // ---- retrieval (dgnet/ops/retrieval.py) --------------------------------------------
  // Dense distance matrix [M, N] float32; metric: 0 euclidean, 1 sqeuclidean, 2 cosine.
  m.def("pairwise_distance(Tensor x, Tensor y, int metric, int chunk_rows) -> Tensor");

  // ---- fused AdaIN (dgnet/ops/adain.py) ----------------------------------------------
}
