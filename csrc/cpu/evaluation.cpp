// Market-1501 ranking evaluation on CPU: queries in parallel, per query two linear scans of the
// distance row and a sort of the query's true matches only (see dgnet/evaluation.h).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <tuple>
#include <vector>

#include "dgnet/evaluation.h"

namespace dgnet {

// Shared by the CPU and CUDA entry points: shapes, dtypes and devices of the five inputs.
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

namespace {

template <typename T>
void evaluate_rows(const T* dist, int64_t nq, int64_t ng, const int64_t* qp, const int64_t* gp, const int64_t* qc,
                   const int64_t* gc, double* ap, double* inp, int64_t* first) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  at::parallel_for(0, nq, 1, [&](int64_t b, int64_t e) {
    std::vector<int64_t> matches;
    std::vector<int64_t> hist;
    for (int64_t q = b; q < e; ++q) {
      const T* row = dist + q * ng;
      const int64_t qpid = qp[q], qcam = qc[q];
      matches.clear();
      for (int64_t j = 0; j < ng; ++j)
        if (is_match(gp[j], gc[j], qpid, qcam)) matches.push_back(j);
      std::sort(matches.begin(), matches.end(),
                [row](int64_t ja, int64_t jb) { return ranks_before(row[ja], ja, row[jb], jb); });
      const int64_t r = static_cast<int64_t>(matches.size());
      hist.assign(static_cast<size_t>(r), 0);
      if (r > 0) {
        // Only non-matches ranked before the last match change any rank; one comparison rejects the rest.
        const int64_t jl = matches.back();
        const T dl = row[jl];
        for (int64_t j = 0; j < ng; ++j) {
          if (ranks_before(row[j], j, dl, jl) && is_kept_nonmatch(gp[j], qpid))
            ++hist[insertion_position(row, matches.data(), r, row[j], j)];
        }
      }
      const QueryResult res = finish_query(hist.data(), r, nan);
      ap[q] = res.ap;
      inp[q] = res.inp;
      first[q] = res.first_rank;
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> evaluate_queries_cpu(const at::Tensor& distmat, const at::Tensor& q_pids,
                                                                    const at::Tensor& g_pids, const at::Tensor& q_camids,
                                                                    const at::Tensor& g_camids) {
  check_evaluate_inputs(distmat, q_pids, g_pids, q_camids, g_camids);
  // Half precision widens to float32 exactly, so the ranking is unchanged.
  auto d = (distmat.scalar_type() == at::kDouble ? distmat : distmat.to(at::kFloat)).contiguous();
  auto qp = q_pids.contiguous(), gp = g_pids.contiguous(), qc = q_camids.contiguous(), gc = g_camids.contiguous();
  const int64_t nq = d.size(0), ng = d.size(1);
  auto ap = at::empty({nq}, d.options().dtype(at::kDouble));
  auto inp = at::empty({nq}, ap.options());
  auto first = at::empty({nq}, d.options().dtype(at::kLong));
  AT_DISPATCH_FLOATING_TYPES(d.scalar_type(), "evaluate_queries_cpu", [&] {
    evaluate_rows<scalar_t>(d.const_data_ptr<scalar_t>(), nq, ng, qp.const_data_ptr<int64_t>(),
                            gp.const_data_ptr<int64_t>(), qc.const_data_ptr<int64_t>(), gc.const_data_ptr<int64_t>(),
                            ap.mutable_data_ptr<double>(), inp.mutable_data_ptr<double>(),
                            first.mutable_data_ptr<int64_t>());
  });
  return {ap, inp, first};
}

}  // namespace

TORCH_LIBRARY_IMPL(dgnet, CPU, m) { m.impl("evaluate_queries", &evaluate_queries_cpu); }

}  // namespace dgnet
