// Market-1501 ranking evaluation on CPU: queries in parallel; per query a sort of the query's true
// matches only and counting passes over the distance row (see dgnet/evaluation.h).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <tuple>
#include <type_traits>
#include <vector>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include "dgnet/evaluation_host.h"

namespace dgnet {

void check_evaluate_inputs(const at::Tensor& distmat, const at::Tensor& q_pids, const at::Tensor& g_pids,
                           const at::Tensor& q_camids, const at::Tensor& g_camids) {
  TORCH_CHECK(distmat.dim() == 2, "evaluate_queries: distmat must be [Q, G], got ", distmat.sizes());
  TORCH_CHECK(at::isFloatingType(distmat.scalar_type()), "evaluate_queries: distmat must be floating, got ",
              distmat.scalar_type());
  const int64_t q = distmat.size(0), g = distmat.size(1);
  const std::pair<const at::Tensor*, int64_t> expected[] = {{&q_pids, q}, {&g_pids, g}, {&q_camids, q}, {&g_camids, g}};
  const char* names[] = {"q_pids", "g_pids", "q_camids", "g_camids"};
  for (int k = 0; k < 4; ++k) {
    const at::Tensor& t = *expected[k].first;
    TORCH_CHECK(t.dim() == 1 && t.size(0) == expected[k].second, "evaluate_queries: ", names[k], " must be [",
                expected[k].second, "], got ", t.sizes());
    TORCH_CHECK(t.scalar_type() == at::kLong, "evaluate_queries: ", names[k], " must be int64, got ", t.scalar_type());
    TORCH_CHECK(t.device() == distmat.device(), "evaluate_queries: ", names[k], " is on ", t.device(),
                ", distmat on ", distmat.device());
  }
  TORCH_CHECK(g < std::numeric_limits<int32_t>::max(), "evaluate_queries: gallery too large: ", g);
}

EvaluateOutputs empty_evaluate_outputs(const at::Tensor& d) {
  const int64_t nq = d.size(0);
  auto ap = at::empty({nq}, d.options().dtype(at::kDouble));
  return {ap, at::empty({nq}, ap.options()), at::empty({nq}, d.options().dtype(at::kLong)),
          at::empty({nq}, ap.options())};
}

QueryOutputs output_pointers(const EvaluateOutputs& out) {
  return {std::get<0>(out).mutable_data_ptr<double>(), std::get<1>(out).mutable_data_ptr<double>(),
          std::get<2>(out).mutable_data_ptr<int64_t>(), std::get<3>(out).mutable_data_ptr<double>()};
}

namespace {

// Queries with at most this many matches count ranks with R vectorised passes over the candidates instead
// of a binary search per non-match: O(R * C / lanes) without branches beats O(C log R) with them for small R.
constexpr int64_t kDenseCountMaxMatches = 32;

#if defined(__AVX2__)
// permutation[m] moves the lanes set in the 8-bit mask m to the front (AVX2 left-packing).
struct LeftPackTable {
  alignas(32) int32_t permutation[256][8];
  LeftPackTable() {
    for (int m = 0; m < 256; ++m) {
      int n = 0;
      for (int b = 0; b < 8; ++b)
        if ((m >> b) & 1) permutation[m][n++] = b;
      while (n < 8) permutation[m][n++] = 0;
    }
  }
};
const LeftPackTable& left_pack_table() {
  static const LeftPackTable table;
  return table;
}
#endif

// The candidates of one query: kept non-matches (identity code neither the query's nor junk's -1) whose
// distance is at most `tmax`, the last match's distance; the others are ranked after every match. Writes
// their distances and gallery indices (ascending) to out_v / out_j, which need room for ng + 8 entries,
// and returns their number.
template <typename T>
int64_t compact_candidates(const T* row, const int32_t* code, int32_t qcode, int64_t ng, T tmax, T* out_v,
                           int32_t* out_j) {
  int64_t n = 0, j = 0;
#if defined(__AVX2__)
  if constexpr (std::is_same_v<T, float>) {
    const LeftPackTable& lut = left_pack_table();
    const __m256 vt = _mm256_set1_ps(tmax);
    const __m256i vq = _mm256_set1_epi32(qcode), zero = _mm256_setzero_si256(), eight = _mm256_set1_epi32(8);
    __m256i vj = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for (; j + 8 <= ng; j += 8) {
      const __m256 v = _mm256_loadu_ps(row + j);
      const __m256i c = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(code + j));
      const __m256i drop = _mm256_or_si256(_mm256_cmpeq_epi32(c, vq), _mm256_cmpgt_epi32(zero, c));
      const __m256 keep = _mm256_andnot_ps(_mm256_castsi256_ps(drop), _mm256_cmp_ps(v, vt, _CMP_LE_OQ));
      const int mask = _mm256_movemask_ps(keep);
      const __m256i perm = _mm256_load_si256(reinterpret_cast<const __m256i*>(lut.permutation[mask]));
      _mm256_storeu_ps(out_v + n, _mm256_permutevar8x32_ps(v, perm));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out_j + n), _mm256_permutevar8x32_epi32(vj, perm));
      n += __builtin_popcount(static_cast<unsigned>(mask));
      vj = _mm256_add_epi32(vj, eight);
    }
  }
#endif
  for (; j < ng; ++j) {  // branch-free: always write, advance only for a candidate
    out_v[n] = row[j];
    out_j[n] = static_cast<int32_t>(j);
    n += (code[j] != qcode) & (code[j] >= 0) & (row[j] <= tmax) ? 1 : 0;
  }
  return n;
}

template <typename T>
void evaluate_rows(const T* dist, int64_t nq, int64_t ng, const int64_t* qp, const int64_t* gp, const int64_t* qc,
                   const int64_t* gc, QueryOutputs out) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  // Gallery indices grouped by identity (ascending within an identity): a query's candidates are one
  // equal range, so collecting its matches costs O(log G + its identity's size), not a scan of the row.
  std::vector<int64_t> by_pid(static_cast<size_t>(ng));
  for (int64_t j = 0; j < ng; ++j) by_pid[j] = j;
  std::stable_sort(by_pid.begin(), by_pid.end(), [gp](int64_t a, int64_t b) { return gp[a] < gp[b]; });
  std::vector<int64_t> sorted_pids(static_cast<size_t>(ng));
  for (int64_t k = 0; k < ng; ++k) sorted_pids[k] = gp[by_pid[k]];
  // Dense int32 code of each gallery identity (-1 for junk): the per-query mask pass then runs on 32-bit
  // lanes alongside float32 distances, which vectorises, instead of on int64 identities.
  std::vector<int32_t> code(static_cast<size_t>(ng));
  int32_t next_code = -1;
  for (int64_t k = 0; k < ng; ++k) {
    next_code += (k == 0 || sorted_pids[k] != sorted_pids[k - 1]) ? 1 : 0;
    code[by_pid[k]] = sorted_pids[k] == kJunkPid ? -1 : next_code;
  }
  at::parallel_for(0, nq, 1, [&](int64_t b, int64_t e) {
    std::vector<int64_t> matches;
    std::vector<T> vals;
    std::vector<T> cand_v(static_cast<size_t>(ng) + 8);  // candidates of the dense path (compact_candidates)
    std::vector<int32_t> cand_j(static_cast<size_t>(ng) + 8);
    std::vector<int64_t> hist;
    for (int64_t q = b; q < e; ++q) {
      const T* row = dist + q * ng;
      const int64_t qpid = qp[q], qcam = qc[q];
      matches.clear();
      const auto range = std::equal_range(sorted_pids.begin(), sorted_pids.end(), qpid);
      for (auto k = range.first - sorted_pids.begin(); k < range.second - sorted_pids.begin(); ++k) {
        const int64_t j = by_pid[k];
        if (is_match(gp[j], gc[j], qpid, qcam)) matches.push_back(j);
      }
      std::sort(matches.begin(), matches.end(),
                [row](int64_t ja, int64_t jb) { return ranks_before(row[ja], ja, row[jb], jb); });
      const int64_t r = static_cast<int64_t>(matches.size());
      vals.resize(static_cast<size_t>(r));
      for (int64_t k = 0; k < r; ++k) vals[k] = row[matches[k]];
      hist.assign(static_cast<size_t>(r), 0);
      if (r > 0 && r <= kDenseCountMaxMatches) {
        const int64_t nc = compact_candidates(row, code.data(), code[matches[0]], ng, vals[r - 1], cand_v.data(),
                                              cand_j.data());
        const T* cv = cand_v.data();
        // before_k: candidates ranked before match k = closer, or equally close at a lower index.
        int64_t previous = 0;
        for (int64_t k = 0; k < r; ++k) {
          const T t = vals[k];
          const int64_t split = std::lower_bound(cand_j.begin(), cand_j.begin() + nc, matches[k]) - cand_j.begin();
          int32_t c = 0;
          for (int64_t i = 0; i < split; ++i) c += cv[i] <= t ? 1 : 0;
          for (int64_t i = split; i < nc; ++i) c += cv[i] < t ? 1 : 0;
          hist[k] = c - previous;
          previous = c;
        }
      } else if (r > 0) {
        // Only non-matches ranked before the last match change any rank; one comparison rejects the rest.
        const int64_t jl = matches.back();
        const T dl = vals[r - 1];
        for (int64_t j = 0; j < ng; ++j) {
          const T d = row[j];
          if (ranks_before(d, j, dl, jl) && is_kept_nonmatch(gp[j], qpid))
            ++hist[insertion_position(vals.data(), matches.data(), r, d, j)];
        }
      }
      out.store(q, finish_query(hist.data(), r, nan));
    }
  });
}

EvaluateOutputs evaluate_queries_cpu(const at::Tensor& distmat, const at::Tensor& q_pids, const at::Tensor& g_pids,
                                     const at::Tensor& q_camids, const at::Tensor& g_camids) {
  check_evaluate_inputs(distmat, q_pids, g_pids, q_camids, g_camids);
  // Half precision widens to float32 exactly, so the ranking is unchanged.
  auto d = (distmat.scalar_type() == at::kDouble ? distmat : distmat.to(at::kFloat)).contiguous();
  auto qp = q_pids.contiguous(), gp = g_pids.contiguous(), qc = q_camids.contiguous(), gc = g_camids.contiguous();
  auto out = empty_evaluate_outputs(d);
  AT_DISPATCH_FLOATING_TYPES(d.scalar_type(), "evaluate_queries_cpu", [&] {
    evaluate_rows<scalar_t>(d.const_data_ptr<scalar_t>(), d.size(0), d.size(1), qp.const_data_ptr<int64_t>(),
                            gp.const_data_ptr<int64_t>(), qc.const_data_ptr<int64_t>(), gc.const_data_ptr<int64_t>(),
                            output_pointers(out));
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(dgnet, CPU, m) { m.impl("evaluate_queries", &evaluate_queries_cpu); }

}  // namespace dgnet
