// Per-element logic of the pairwise distance, shared by the CPU and CUDA kernels.
//
// Every metric is one GEMM (x @ y^T) followed by an epilogue that needs at most two per-row terms:
//   euclidean, sqeuclidean: a_i = ||x_i||^2,  b_j = ||y_j||^2,  d = a_i + b_j - 2 <x_i, y_j>
//   cosine:                 a_i = 1/||x_i||,  b_j = 1/||y_j||,  d = 1 - a_i b_j <x_i, y_j>
//   neg_dot:                none (a_i = b_j = 0),            d = -<x_i, y_j>
// so no normalised copy of x or y is ever materialised. neg_dot is the re-id test protocol's distance: a pair
// scores the dot product of its features and ranks by the negative score; negation is exact, so the result
// is bit for bit the GEMM's.
#pragma once
#include <cmath>
#include <cstdint>

#include "dgnet/macros.h"

namespace dgnet {

enum DistanceMetric : long { kEuclidean = 0, kSqEuclidean = 1, kCosine = 2, kNegDot = 3 };

constexpr long kNumMetrics = 4;

// Whether a metric's epilogue reads the per-row terms (the kernels skip computing them otherwise).
DGNET_HD bool uses_row_terms(long metric) { return metric != kNegDot; }

// Norms below this count as zero: a zero vector has cosine distance 1 to everything.
constexpr float kCosineEps = 1e-12f;

// Per-row term a_i / b_j of `metric` from a row's squared norm.
DGNET_HD float distance_row_term(float sq_norm, long metric) {
  if (metric != kCosine) return sq_norm;
  const float norm = sqrtf(sq_norm);
  return 1.0f / (norm > kCosineEps ? norm : kCosineEps);
}

// The metric's value from the two row terms and the dot product <x_i, y_j>.
template <long Metric>
DGNET_HD float distance_from_dot(float a, float b, float xy) {
  if (Metric == kNegDot) return -xy;
  if (Metric == kCosine) return 1.0f - a * b * xy;
  float d2 = a + b - 2.0f * xy;
  d2 = d2 < 0.0f ? 0.0f : d2;  // cancellation can make it slightly negative; a NaN stays NaN
  return Metric == kEuclidean ? sqrtf(d2) : d2;
}

// Run-time metric form, for callers that do not specialise per metric.
DGNET_HD float distance_from_dot(float a, float b, float xy, long metric) {
  if (metric == kNegDot) return distance_from_dot<kNegDot>(a, b, xy);
  if (metric == kCosine) return distance_from_dot<kCosine>(a, b, xy);
  if (metric == kEuclidean) return distance_from_dot<kEuclidean>(a, b, xy);
  return distance_from_dot<kSqEuclidean>(a, b, xy);
}

// Default number of rows per GEMM chunk: about `budget_bytes` of output per chunk, at least 256 rows
// and at most m. The GEMM writes straight into the output, so the chunk does not change the extra memory;
// it bounds the size of one GEMM call. Small chunks are slow: each GEMM call re-packs all of y.
// neg_dot takes all m rows in one call: BLAS results depend on how the rows are split between calls (by about
// an ulp), and one call gives exactly the bits of x @ y^T, the test protocol's score.
inline int64_t default_chunk_rows(int64_t m, int64_t n, int64_t budget_bytes, long metric) {
  if (metric == kNegDot) return m > 0 ? m : 1;
  const int64_t row_bytes = (n > 0 ? n : 1) * static_cast<int64_t>(sizeof(float));
  int64_t rows = budget_bytes / row_bytes;
  rows = rows < 256 ? 256 : rows;
  return rows < m ? rows : (m > 0 ? m : 1);
}

constexpr int64_t kCpuChunkBytes = int64_t{128} << 20;
constexpr int64_t kCudaChunkBytes = int64_t{1} << 30;

}  // namespace dgnet
