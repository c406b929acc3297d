// Per-query logic of the Market-1501 ranking evaluation, shared by the CPU and CUDA kernels.
//
// For one query with identity qp and camera qc, gallery entry j is
//   removed     if g_pid[j] == -1 (junk) or (g_pid[j] == qp and g_cam[j] == qc);
//   a match     if kept and g_pid[j] == qp;
//   a non-match if kept and g_pid[j] != qp.
// The kept entries are ranked by (distance, gallery index): exactly the order a stable argsort of the
// distance row gives. No full sort is needed: with the R matches sorted by that key, the rank of the
// i-th match (0-based) is 1 + i + (number of non-matches ordered before it), and each non-match
// contributes to a suffix of the sorted matches, found by binary search. A kernel therefore
//   1. collects the matches of the query (R of them, usually a few dozen),
//   2. sorts them by (distance, index), keeping their distances and indices side by side,
//   3. counts, for each non-match ordered before the last match, its insertion position p into a
//      histogram hist[p] (p in [0, R)),
//   4. turns the histogram into ranks and the ranks into AP, first-match rank and INP (finish_query).
#pragma once
#include <cstdint>

#include "dgnet/macros.h"

namespace dgnet {

constexpr int64_t kJunkPid = -1;

DGNET_HD bool is_match(int64_t gpid, int64_t gcam, int64_t qpid, int64_t qcam) {
  return gpid == qpid && gcam != qcam && gpid != kJunkPid;
}

DGNET_HD bool is_kept_nonmatch(int64_t gpid, int64_t qpid) { return gpid != qpid && gpid != kJunkPid; }

// True when gallery entry (da, ja) is ranked before (db, jb): closer, or equally close with a lower index.
template <typename T>
DGNET_HD bool ranks_before(T da, int64_t ja, T db, int64_t jb) {
  return da < db || (da == db && ja < jb);
}

// Number of sorted matches that gallery entry (d, j) is ranked after, i.e. its insertion position into
// the matches sorted by (distance, index), given as their distances `vals[0:r]` and indices `idx[0:r]`.
// Written without data-dependent branches (select instead of if) so that consecutive searches overlap.
template <typename T, typename I>
DGNET_HD int64_t insertion_position(const T* vals, const I* idx, int64_t r, T d, int64_t j) {
  int64_t lo = 0, n = r;
  while (n > 0) {
    const int64_t half = n / 2;
    const bool after = ranks_before(vals[lo + half], static_cast<int64_t>(idx[lo + half]), d, j);
    lo = after ? lo + half + 1 : lo;
    n = after ? n - half - 1 : half;
  }
  return lo;
}

// Per-query results. first_rank is 0 (and ap, ap_trapz, inp NaN) for a query without any match.
struct QueryResult {
  double ap;
  double inp;
  int64_t first_rank;
  double ap_trapz;
};

// Where a kernel writes each query's result: four [Q] arrays (the op's outputs, csrc/ops.cpp).
struct QueryOutputs {
  double* ap;
  double* inp;
  int64_t* first;
  double* ap_trapz;

  DGNET_HD void store(int64_t q, const QueryResult& r) const {
    ap[q] = r.ap;
    inp[q] = r.inp;
    first[q] = r.first_rank;
    ap_trapz[q] = r.ap_trapz;
  }
};

// From the histogram of step 3 (hist[p] = number of non-matches ranked after exactly p matches) to
//   AP       = mean_i P_i with P_i = (i + 1) / rank_i, the precision at the i-th match (torchreid, fast-reid);
//   AP_trapz = mean_i (P_i + P'_i) / 2 with P'_i = i / (rank_i - 1) the precision one place before the match
//              (1 at rank 1): the trapezoidal rule of the Market-1501 devkit and the DG-Net reference;
// the 1-based rank of the first match, and INP = R / rank_{R-1}.
template <typename H>
DGNET_HD QueryResult finish_query(const H* hist, int64_t r, double nan) {
  QueryResult out{nan, nan, 0, nan};
  if (r == 0) return out;
  int64_t before = 0;  // non-matches ranked before the current match
  double precision_sum = 0.0, trapz_sum = 0.0;
  int64_t rank = 0;
  for (int64_t i = 0; i < r; ++i) {
    before += static_cast<int64_t>(hist[i]);
    rank = 1 + i + before;
    if (i == 0) out.first_rank = rank;
    const double precision = static_cast<double>(i + 1) / static_cast<double>(rank);
    const double previous = rank == 1 ? 1.0 : static_cast<double>(i) / static_cast<double>(rank - 1);
    precision_sum += precision;
    trapz_sum += 0.5 * (previous + precision);
  }
  out.ap = precision_sum / static_cast<double>(r);
  out.ap_trapz = trapz_sum / static_cast<double>(r);
  out.inp = static_cast<double>(r) / static_cast<double>(rank);
  return out;
}

}  // namespace dgnet
