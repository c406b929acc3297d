// Per-element and per-row logic of k-reciprocal re-ranking (Zhong et al., CVPR 2017), shared by
// the CPU kernels (csrc/cpu/rerank.cpp) and the CUDA kernels (csrc/cuda/rerank.cu), so CPU tests
// exercise exactly the code the GPU runs.
//
// Terms (N = Q + G samples, rows 0..Q-1 are queries):
//   nbr       [N, K] int64: each row's K nearest samples, ascending by distance (itself first).
//   R(i, k)   k-reciprocal set: the j among nbr[i, :k+1] with i among nbr[j, :k+1].
//   E(i)      expansion set: R(i, k1) plus R(c, round(k1/2)) for each c in R(i, k1) whose set
//             shares more than 2/3 of its members with R(i, k1); sorted, unique.
#pragma once
#include <cmath>
#include <cstdint>

#include "dgnet/distance.h"
#include "dgnet/macros.h"

namespace dgnet {

// Squared distance the re-ranking starts from, from ||x||^2, ||y||^2 and <x, y>: the square of the
// metric's distance. Cosine inputs are pre-normalised, so <x, y> is the cosine. For euclidean the
// square root is skipped: sqrt then square is the identity up to one rounding.
DGNET_HD float rerank_base_sq(float xx, float yy, float xy, long metric) {
  if (metric == kCosine) {
    const float d = 1.0f - xy;
    return d * d;
  }
  float d2 = xx + yy - 2.0f * xy;
  d2 = d2 > 0.0f ? d2 : 0.0f;  // cancellation can make it slightly negative
  return metric == kEuclidean ? d2 : d2 * d2;
}

// The classic code squares the given distances in their own dtype, then stores float32.
template <typename T>
DGNET_HD float square_to_float(T x) {
  return static_cast<float>(x * x);
}

// Entry [r, c] of the (Q+G) x (Q+G) block matrix [[q_q, q_g], [q_g^T, g_g]], squared, read from
// the three contiguous blocks without building the matrix.
template <typename T>
DGNET_HD float block_matrix_sq(const T* qg, const T* qq, const T* gg, int64_t q, int64_t g, int64_t r, int64_t c) {
  if (r < q) return square_to_float(c < q ? qq[r * q + c] : qg[r * g + (c - q)]);
  return square_to_float(c < q ? qg[c * g + (r - q)] : gg[(r - q) * g + (c - q)]);
}

// Top-k lists (vals, idx), k smallest so far in ascending order, are ordered by (value, index): equal values
// keep the lower index first, as a stable sort over increasing indices would, and NaN ranks with +inf. A total
// order, so every list fills with k real entries whatever the values: a list that only took values below its
// last (+inf) slot once left the slots of overflowed (inf) values unfilled, and their index -1 was later read as
// a sample (out of bounds). Unfilled slots hold (+inf, kUnfilled), after every real entry.
constexpr int64_t kUnfilled = INT64_MAX;

DGNET_HD bool topk_before(float v, int64_t j, float w, int64_t l) { return v < w || (v == w && j < l); }

// Insert (v, j) into vals/idx if it belongs there.
DGNET_HD void topk_insert(float* vals, int64_t* idx, int k, float v, int64_t j) {
  v = v != v ? INFINITY : v;
  if (!topk_before(v, j, vals[k - 1], idx[k - 1])) return;
  int p = k - 1;
  while (p > 0 && topk_before(v, j, vals[p - 1], idx[p - 1])) {
    vals[p] = vals[p - 1];
    idx[p] = idx[p - 1];
    --p;
  }
  vals[p] = v;
  idx[p] = j;
}

// Normalised distance: a value over its row's maximum. A row whose maximum is 0 holds only zeros (identical
// samples) and normalises to ones, like every other constant row: all-equal distances then give one result at
// every scale, 0 included, where the classic code divides 0 by 0 (NaN).
DGNET_HD float normalise(float value, float row_max) { return row_max > 0.0f ? value / row_max : 1.0f; }

// Membership in a short list, without an early exit: the lists are a few dozen entries, and a
// data-dependent branch per entry costs more than the comparisons it saves.
DGNET_HD bool contains(const int64_t* list, int n, int64_t x) {
  bool found = false;
  for (int t = 0; t < n; ++t) found |= list[t] == x;
  return found;
}

// R(i, k): writes the members in neighbour order to out (capacity k + 1), returns their count.
DGNET_HD int k_reciprocal(const int64_t* nbr, int64_t stride, int64_t i, int k, int64_t* out) {
  const int64_t* fwd = nbr + i * stride;
  int n = 0;
  for (int t = 0; t <= k; ++t) {
    const int64_t j = fwd[t];
    if (contains(nbr + j * stride, k + 1, i)) out[n++] = j;
  }
  return n;
}

// The 2/3 rule, evaluated in double exactly as `overlap > 2./3 * len(candidate_set)`.
DGNET_HD bool expansion_accepts(int overlap, int candidate_size) {
  return static_cast<double>(overlap) > (2.0 / 3.0) * static_cast<double>(candidate_size);
}

// The neighbourhood sizes of E(i) over a table of K columns: k1 for R(i, k1) and round(k1 / 2) (half to even,
// as numpy's around(k1 / 2)) for the candidates' sets, each capped at K - 1. With K = N, the whole order, the cap
// is what the classic code's slices rank[i, :k + 1] do for k + 1 > N.
struct ExpansionSizes {
  int k;
  int half;
};

inline ExpansionSizes expansion_sizes(int64_t k1, int64_t num_cols) {
  const int64_t h = k1 / 2;
  const int64_t half = (k1 % 2 == 1 && h % 2 == 1) ? h + 1 : h;
  const int64_t cap = num_cols - 1;
  return {static_cast<int>(k1 < cap ? k1 : cap), static_cast<int>(half < cap ? half : cap)};
}

// Capacity E(i) needs: R(i) plus one candidate set per member of R(i).
DGNET_HD int64_t expansion_capacity(ExpansionSizes s) { return static_cast<int64_t>(s.k + 1) * (s.half + 2); }

// E(i): writes the sorted unique members to out (capacity expansion_capacity(s)), returns the count.
DGNET_HD int expansion_set(const int64_t* nbr, int64_t stride, int64_t i, ExpansionSizes s, int64_t* out) {
  const int r = k_reciprocal(nbr, stride, i, s.k, out);  // out[0, r) = R(i, k1), kept intact below
  const int h = s.half;
  int len = r;
  for (int c = 0; c < r; ++c) {
    // The candidate's set goes after the accepted ones; it stays only if the rule accepts it.
    int64_t* cand = out + len;
    const int nc = k_reciprocal(nbr, stride, out[c], h, cand);
    int overlap = 0;
    for (int t = 0; t < nc; ++t) overlap += contains(out, r, cand[t]) ? 1 : 0;
    if (!expansion_accepts(overlap, nc)) continue;
    // Keep only members not yet in the set: accepted sets overlap heavily, and a short list keeps
    // the sort below cheap. (Writes never pass the reads: the kept count is at most t.)
    const int start = len;
    for (int t = 0; t < nc; ++t)
      if (!contains(out, len, out[start + t])) out[len++] = out[start + t];
  }
  // Sort (insertion: a few dozen entries, all distinct) and drop duplicates (none left; kept as a guard).
  for (int a = 1; a < len; ++a) {
    const int64_t v = out[a];
    int b = a;
    while (b > 0 && out[b - 1] > v) {
      out[b] = out[b - 1];
      --b;
    }
    out[b] = v;
  }
  int n = 0;
  for (int a = 0; a < len; ++a)
    if (n == 0 || out[n - 1] != out[a]) out[n++] = out[a];
  return n;
}

constexpr int kMaxQueryExpansion = 64;

// Gaussian kernel weight of a normalised squared distance (normalised to sum 1 per row afterwards).
DGNET_HD float gaussian_weight(float d) { return expf(-d); }

// One term of the Jaccard overlap: min(V[q, j], V[g, j]).
DGNET_HD float overlap_term(float a, float b) { return a < b ? a : b; }

// Local query expansion of one row: the mean of the sparse rows V[rows[0..k2)], each sorted by
// column, merged k2-way. With out_cols == nullptr only counts the union's size.
// V is CSR (indptr, cols, vals); writes sorted columns and mean values, returns the count.
DGNET_HD int64_t qe_merge_row(const int64_t* indptr, const int64_t* cols, const float* vals, const int64_t* rows,
                              int k2, int64_t* out_cols, float* out_vals) {
  // One cursor per source row, in fixed-size local arrays (registers or local memory on a GPU);
  // the Python front rejects k2 > kMaxQueryExpansion.
  int64_t pos[kMaxQueryExpansion];
  int64_t end[kMaxQueryExpansion];
  for (int t = 0; t < k2; ++t) {
    pos[t] = indptr[rows[t]];
    end[t] = indptr[rows[t] + 1];
  }
  int64_t n = 0;
  while (true) {
    int64_t col = INT64_MAX;
    for (int t = 0; t < k2; ++t)
      if (pos[t] < end[t] && cols[pos[t]] < col) col = cols[pos[t]];
    if (col == INT64_MAX) break;
    float sum = 0.0f;
    for (int t = 0; t < k2; ++t)
      if (pos[t] < end[t] && cols[pos[t]] == col) sum += vals[pos[t]++];
    if (out_cols != nullptr) {
      out_cols[n] = col;
      out_vals[n] = sum / static_cast<float>(k2);  // a mean, as np.mean over the k2 rows
    }
    ++n;
  }
  return n;
}
// Final distance from the Jaccard overlap s = sum_j min(V[q, j], V[g, j]) and the original distance.
DGNET_HD float rerank_mix(float s, float original, float lambda_value) {
  const float jaccard = 1.0f - s / (2.0f - s);
  return jaccard * (1.0f - lambda_value) + original * lambda_value;
}

}  // namespace dgnet
