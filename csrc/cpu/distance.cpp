// Pairwise distance on CPU: one GEMM per chunk of rows, written straight into the output, then the
// per-element epilogue of dgnet/distance.h on that chunk (in place, parallel over rows). Extra memory
// beyond the [M, N] output is O((M + N) * D) at most (a float32 copy of non-float32 inputs) plus the
// two per-row term vectors; no normalised copies, no [M, N] temporaries.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif

#include "dgnet/distance.h"

namespace dgnet {
namespace {

void check_inputs(const at::Tensor& x, const at::Tensor& y, int64_t metric) {
  TORCH_CHECK(x.dim() == 2 && y.dim() == 2 && x.size(1) == y.size(1),
              "pairwise_distance: expected x [M, D] and y [N, D], got ", x.sizes(), " and ", y.sizes());
  TORCH_CHECK(metric >= 0 && metric < kNumMetrics,
              "pairwise_distance: metric must be 0 (euclidean), 1 (sqeuclidean), 2 (cosine) or 3 (neg_dot), got ",
              metric);
  TORCH_CHECK(at::isFloatingType(x.scalar_type()) && at::isFloatingType(y.scalar_type()),
              "pairwise_distance: expected floating inputs, got ", x.scalar_type(), " and ", y.scalar_type());
}

// a_i (or b_j) of dgnet/distance.h for every row; sums of squares accumulate in double.
at::Tensor row_terms(const at::Tensor& xf, int64_t metric) {
  const int64_t m = xf.size(0), d = xf.size(1);
  if (!uses_row_terms(metric)) return at::zeros({m}, xf.options());  // read by the epilogue, not used
  auto out = at::empty({m}, xf.options());
  const float* xp = xf.const_data_ptr<float>();
  float* op = out.mutable_data_ptr<float>();
  at::parallel_for(0, m, std::max<int64_t>(1, 16384 / std::max<int64_t>(d, 1)), [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const float* r = xp + i * d;
      double s = 0.0;
#pragma omp simd reduction(+ : s)
      for (int64_t k = 0; k < d; ++k) s += static_cast<double>(r[k]) * r[k];
      op[i] = distance_row_term(static_cast<float>(s), metric);
    }
  });
  return out;
}

template <long Metric>
void epilogue_row(float* o, float a, const float* b, int64_t n) {
  int64_t j = 0;
#if defined(__AVX2__) && defined(__FMA__)
  // The scalar loop does not vectorise (sqrtf keeps errno semantics), so the euclidean case,
  // the one that needs sqrt, gets an explicit AVX2 form of distance_from_dot.
  if constexpr (Metric == kEuclidean) {
    const __m256 va = _mm256_set1_ps(a), minus2 = _mm256_set1_ps(-2.0f), zero = _mm256_setzero_ps();
    for (; j + 8 <= n; j += 8) {
      __m256 d2 = _mm256_fmadd_ps(minus2, _mm256_loadu_ps(o + j), _mm256_add_ps(va, _mm256_loadu_ps(b + j)));
      // max_ps returns its second operand when either is NaN: (zero, d2) keeps a NaN distance NaN.
      _mm256_storeu_ps(o + j, _mm256_sqrt_ps(_mm256_max_ps(zero, d2)));
    }
  }
#endif
  // The other metrics vectorise as written (neg_dot is a sign flip).
#pragma omp simd
  for (int64_t jj = j; jj < n; ++jj) o[jj] = distance_from_dot<Metric>(a, b[jj], o[jj]);
}

template <long Metric>
void epilogue(float* out, const float* a, const float* b, int64_t rows, int64_t n) {
  at::parallel_for(0, rows, std::max<int64_t>(1, 32768 / std::max<int64_t>(n, 1)), [&](int64_t r0, int64_t r1) {
    for (int64_t i = r0; i < r1; ++i) epilogue_row<Metric>(out + i * n, a[i], b, n);
  });
}

}  // namespace

at::Tensor pairwise_distance_cpu(const at::Tensor& x, const at::Tensor& y, int64_t metric, int64_t chunk_rows) {
  check_inputs(x, y, metric);
  // Half-precision inputs are computed in float32; float32 contiguous inputs are used in place.
  const auto xf = x.to(at::kFloat).contiguous();
  const auto yf = y.to(at::kFloat).contiguous();
  const int64_t m = xf.size(0), n = yf.size(0);
  auto out = at::empty({m, n}, xf.options());
  if (m == 0 || n == 0) return out;
  const auto a = row_terms(xf, metric);
  const auto b = row_terms(yf, metric);
  const auto yt = yf.t();
  const int64_t step = chunk_rows > 0 ? chunk_rows : default_chunk_rows(m, n, kCpuChunkBytes, metric);
  for (int64_t r0 = 0; r0 < m; r0 += step) {
    const int64_t rows = std::min(m, r0 + step) - r0;
    auto block = out.narrow(0, r0, rows);
    at::mm_out(block, xf.narrow(0, r0, rows), yt);
    float* bp = block.mutable_data_ptr<float>();
    const float* ap = a.const_data_ptr<float>() + r0;
    const float* bq = b.const_data_ptr<float>();
    switch (metric) {
      case kEuclidean: epilogue<kEuclidean>(bp, ap, bq, rows, n); break;
      case kSqEuclidean: epilogue<kSqEuclidean>(bp, ap, bq, rows, n); break;
      case kCosine: epilogue<kCosine>(bp, ap, bq, rows, n); break;
      default: epilogue<kNegDot>(bp, ap, bq, rows, n); break;
    }
  }
  return out;
}

TORCH_LIBRARY_IMPL(dgnet, CPU, m) { m.impl("pairwise_distance", &pairwise_distance_cpu); }

}  // namespace dgnet
