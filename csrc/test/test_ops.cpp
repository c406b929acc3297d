// C++ (LibTorch) tests of the dgnet operators, called through the dispatcher as a C++ user would,
// each against a reference computed with plain ATen.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

namespace {

int failures = 0;
int passes = 0;

void expect(bool ok, const std::string& what) {
  std::printf("%s %s\n", ok ? "PASS" : "FAIL", what.c_str());
  ++(ok ? passes : failures);
}

// ---- pairwise distance ------------------------------------------------------------------------

auto distance_op() {
  return c10::Dispatcher::singleton()
      .findSchemaOrThrow("dgnet::pairwise_distance", "")
      .typed<at::Tensor(const at::Tensor&, const at::Tensor&, int64_t, int64_t)>();
}

// Float64 reference from the definitions (difference form, not the GEMM expansion).
at::Tensor distance_reference(const at::Tensor& x, const at::Tensor& y, int64_t metric) {
  auto xd = x.to(at::kDouble), yd = y.to(at::kDouble);
  if (metric == 3) return (-at::mm(xd, yd.t())).to(at::kFloat);
  if (metric == 2) {
    auto xn = xd / xd.norm(2, {1}, true).clamp_min(1e-12);
    auto yn = yd / yd.norm(2, {1}, true).clamp_min(1e-12);
    return (1.0 - at::mm(xn, yn.t())).to(at::kFloat);
  }
  auto d = at::cdist(xd, yd, 2.0, /*compute_mode=*/2);  // 2: never use the mm expansion
  return (metric == 1 ? d.square() : d).to(at::kFloat);
}

void test_pairwise_distance() {
  auto op = distance_op();
  at::manual_seed(0);
  auto x = at::randn({37, 19});
  auto y = at::randn({53, 19});
  const char* names[] = {"euclidean", "sqeuclidean", "cosine", "neg_dot"};
  for (int64_t metric = 0; metric < 4; ++metric) {
    auto ref = distance_reference(x, y, metric);
    for (int64_t chunk : {0, 1, 8, 36, 100}) {
      auto out = op.call(x, y, metric, chunk);
      expect(out.scalar_type() == at::kFloat && out.sizes() == ref.sizes() && at::allclose(out, ref, 1e-5, 4e-4),
             std::string("pairwise_distance ") + names[metric] + " chunk_rows=" + std::to_string(chunk) +
                 " vs ATen float64 reference");
    }
    // Half-precision inputs are computed in float32: compare with the reference of the rounded values.
    auto xh = x.to(at::kHalf), yh = y.to(at::kHalf);
    auto out = op.call(xh, yh, metric, 0);
    expect(out.scalar_type() == at::kFloat && at::allclose(out, distance_reference(xh, yh, metric), 1e-4, 2e-3),
           std::string("pairwise_distance ") + names[metric] + " float16 inputs -> float32");
  }
  expect(at::allclose(op.call(x, y, 0, 0), at::cdist(x, y), 1e-4, 1e-4), "pairwise_distance euclidean vs at::cdist");
  expect(at::equal(op.call(x, y, 3, 0), -at::mm(x, y.t())), "pairwise_distance neg_dot is bit for bit -(x y^T)");
  auto empty = op.call(x.narrow(0, 0, 0), y, 0, 0);
  expect(empty.size(0) == 0 && empty.size(1) == 53, "pairwise_distance with no query rows gives [0, N]");
  bool threw = false;
  try {
    op.call(x, y, 7, 0);
  } catch (const c10::Error&) {
    threw = true;
  }
  expect(threw, "pairwise_distance rejects metric 7");
}

// ---- evaluation --------------------------------------------------------------------------------

using EvalOp = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                          const at::Tensor&, const at::Tensor&,
                                                                          const at::Tensor&);

// The classic per-query loop with ATen: stable sort of the row, drop same-id-same-camera and junk,
// AP from the cumulative hit count (and its trapezoidal form), first-match rank, INP.
struct RefQuery {
  double ap, inp;
  int64_t first;
  double ap_trapz;
};

std::vector<RefQuery> evaluation_reference(const at::Tensor& dist, const at::Tensor& qp, const at::Tensor& gp,
                                           const at::Tensor& qc, const at::Tensor& gc) {
  std::vector<RefQuery> out;
  for (int64_t q = 0; q < dist.size(0); ++q) {
    auto order = std::get<1>(at::sort(dist[q], /*stable=*/true, /*dim=*/0, /*descending=*/false));
    auto pids = gp.index_select(0, order), cams = gc.index_select(0, order);
    auto keep = ((pids == qp[q]) & (cams == qc[q])).logical_not() & (pids != -1);
    auto hits = (pids.masked_select(keep) == qp[q]).to(at::kDouble);
    const double r = hits.sum().item<double>();
    if (r == 0) {
      out.push_back({NAN, NAN, 0, NAN});
      continue;
    }
    auto ranks = at::arange(1, hits.size(0) + 1, hits.options());
    const double ap = (hits.cumsum(0) / ranks * hits).sum().item<double>() / r;
    // precision one place before each position: 1 before rank 1, then (hits so far) / (rank - 1)
    auto before = ((hits.cumsum(0) - hits) / (ranks - 1)).index_fill(0, at::zeros({1}, at::kLong), 1.0);
    const double ap_trapz = ((before + hits.cumsum(0) / ranks) / 2 * hits).sum().item<double>() / r;
    auto hit_pos = hits.nonzero().flatten();
    const int64_t first = hit_pos[0].item<int64_t>() + 1;
    const int64_t last = hit_pos[-1].item<int64_t>() + 1;
    out.push_back({ap, r / static_cast<double>(last), first, ap_trapz});
  }
  return out;
}

bool same(double a, double b) { return (std::isnan(a) && std::isnan(b)) || std::fabs(a - b) <= 1e-12; }

void check_evaluation(const at::Tensor& dist, const at::Tensor& qp, const at::Tensor& gp, const at::Tensor& qc,
                      const at::Tensor& gc, const std::string& what) {
  auto op = c10::Dispatcher::singleton().findSchemaOrThrow("dgnet::evaluate_queries", "").typed<EvalOp>();
  auto [ap, inp, first, ap_trapz] = op.call(dist, qp, gp, qc, gc);
  auto ref = evaluation_reference(dist, qp, gp, qc, gc);
  bool ok = ap.scalar_type() == at::kDouble && first.scalar_type() == at::kLong;
  int valid = 0;
  for (int64_t q = 0; q < dist.size(0); ++q) {
    ok = ok && same(ap[q].item<double>(), ref[q].ap) && same(inp[q].item<double>(), ref[q].inp) &&
         first[q].item<int64_t>() == ref[q].first && same(ap_trapz[q].item<double>(), ref[q].ap_trapz);
    valid += ref[q].first > 0;
  }
  expect(ok && valid > 0 && valid < dist.size(0), "evaluate_queries " + what + " vs ATen stable-sort loop (" +
                                                      std::to_string(valid) + " valid queries)");
}

void test_evaluation() {
  at::manual_seed(1);
  const int64_t nq = 30, ng = 400;
  auto gp = at::randint(0, 20, {ng}, at::kLong);
  gp.masked_fill_(at::rand({ng}) < 0.08, -1);  // junk
  auto qp = at::randint(1, 25, {nq}, at::kLong);  // ids 20..24 have no gallery images
  auto qc = at::randint(0, 4, {nq}, at::kLong), gc = at::randint(0, 4, {ng}, at::kLong);
  check_evaluation(at::rand({nq, ng}), qp, gp, qc, gc, "float32");
  check_evaluation(at::rand({nq, ng}, at::kDouble), qp, gp, qc, gc, "float64");
  check_evaluation(at::randint(0, 5, {nq, ng}).to(at::kFloat), qp, gp, qc, gc, "with many ties");
  // One identity with hundreds of images: the binary-search path (more matches than the dense path takes).
  auto gp_big = gp.clone(), qp_big = qp.clone();
  gp_big.narrow(0, 0, 300).fill_(3);
  qp_big.narrow(0, 0, 4).fill_(3);
  check_evaluation(at::rand({nq, ng}), qp_big, gp_big, qc, gc, "with hundreds of matches per query");
  bool threw = false;
  try {
    auto op = c10::Dispatcher::singleton().findSchemaOrThrow("dgnet::evaluate_queries", "").typed<EvalOp>();
    op.call(at::rand({nq, ng}), qp.narrow(0, 0, 3), gp, qc, gc);
  } catch (const c10::Error&) {
    threw = true;
  }
  expect(threw, "evaluate_queries rejects q_pids of the wrong length");
}


// ---- re-ranking: memory safety on any finite input ------------------------------------------------
// The Python front (dgnet/ops/rerank.py) scales inputs into float32's range; these call the kernels without it,
// so overflowing squares (inf) and all-zero rows reach them. Under scripts/sanitize.sh (AddressSanitizer) an
// out-of-bounds access fails the run: the neighbour table once kept index -1 for inf values, read as a sample.

using DenseKnnOp = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                       int64_t);
using ExpandOp = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, int64_t);
using GatherOp = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                            const at::Tensor&, const at::Tensor&);
using MixOp = void(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                   int64_t, double);
using KnnOp = std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, int64_t, int64_t, int64_t, int64_t);
using PairDistOp = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t);

template <typename F>
auto op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<F>();
}

// A neighbour table names k distinct samples per row, all in [0, N).
bool valid_table(const at::Tensor& nbr, int64_t n) {
  if (nbr.min().item<int64_t>() < 0 || nbr.max().item<int64_t>() >= n) return false;
  if (nbr.size(1) < 2) return true;
  auto sorted = std::get<0>(nbr.sort(1));
  const int64_t k = nbr.size(1);
  return (sorted.narrow(1, 1, k - 1) != sorted.narrow(1, 0, k - 1)).all().item<bool>();
}

// The sizes the Python front passes: k1 + 1 or k2 beyond N take the whole order (a table of all N columns).
int64_t table_width(int64_t k1, int64_t k2, int64_t n) { return std::min(std::max(k1 + 1, k2), n); }

// re_ranking's path from distance blocks, as dgnet/ops/rerank.py runs it after its checks and scaling.
at::Tensor rerank_dense(const at::Tensor& qg, const at::Tensor& qq, const at::Tensor& gg, int64_t k1, int64_t k2,
                        bool* table_ok) {
  const int64_t q = qg.size(0), n = q + qg.size(1);
  auto [nbr, colmax] = op<DenseKnnOp>("dgnet::rerank_dense_knn").call(qg, qq, gg, table_width(k1, k2, n));
  *table_ok = valid_table(nbr, n);
  auto [indptr, indices] = op<ExpandOp>("dgnet::rerank_expand").call(nbr, k1);
  auto dist = op<GatherOp>("dgnet::rerank_dense_gather").call(qg, qq, gg, colmax, indptr, indices);
  auto cm = colmax.narrow(0, 0, q).unsqueeze(1);
  auto out = (qg.square().to(at::kFloat) / cm).masked_fill(cm == 0, 1.0).contiguous();
  op<MixOp>("dgnet::rerank_jaccard_mix_").call(out, indptr, indices, dist, nbr, std::min(k2, n), 0.3);
  return out;
}

// re_ranking_features' path.
at::Tensor rerank_features(const at::Tensor& x, int64_t q, int64_t k1, int64_t k2, bool* table_ok) {
  const int64_t n = x.size(0);
  auto [nbr, rowmax, out] = op<KnnOp>("dgnet::rerank_knn").call(x, 0, table_width(k1, k2, n), 3, q);
  *table_ok = valid_table(nbr, n);
  auto rm = rowmax.narrow(0, 0, q).unsqueeze(1);
  out = (out / rm).masked_fill(rm == 0, 1.0).contiguous();
  auto [indptr, indices] = op<ExpandOp>("dgnet::rerank_expand").call(nbr, k1);
  auto dist = op<PairDistOp>("dgnet::rerank_pair_dist").call(x, indptr, indices, rowmax, 0);
  op<MixOp>("dgnet::rerank_jaccard_mix_").call(out, indptr, indices, dist, nbr, std::min(k2, n), 0.3);
  return out;
}

bool in_unit_range(const at::Tensor& t) {
  return at::isfinite(t).all().item<bool>() && t.min().item<float>() >= -1e-6f && t.max().item<float>() <= 1 + 1e-6f;
}

void test_rerank_memory_safety() {
  at::manual_seed(2);
  // Distances between 26 random points (6 queries), at scales whose squares overflow float32 (the reported crash).
  auto x = at::randn({26, 8}, at::kDouble);
  auto d = at::cdist(x, x);
  const std::pair<double, const char*> scales[] = {{1e19, "1e19"}, {1e20, "1e20"}, {1e30, "1e30"}};
  for (const auto& [scale, scale_name] : scales) {
    for (auto dtype : {at::kFloat, at::kDouble}) {
      auto ds = (d * scale).to(dtype);
      bool table_ok = false;
      rerank_dense(ds.narrow(0, 0, 6).narrow(1, 6, 20), ds.narrow(0, 0, 6).narrow(1, 0, 6),
                   ds.narrow(0, 6, 20).narrow(1, 6, 20), 5, 3, &table_ok);
      const std::string name = dtype == at::kFloat ? " float32" : " float64";
      expect(table_ok, std::string("rerank dense path at scale ") + scale_name + name +
                           ": neighbour table in range, no out-of-bounds access");
    }
  }
  // Every value inf: the table is the index order.
  auto huge = at::full({9, 9}, 1e30, at::kDouble);
  auto [nbr, colmax] = op<DenseKnnOp>("dgnet::rerank_dense_knn")
                           .call(huge.narrow(0, 0, 3).narrow(1, 3, 6), huge.narrow(0, 0, 3).narrow(1, 0, 3),
                                 huge.narrow(0, 3, 6).narrow(1, 3, 6), 9);
  expect(at::equal(nbr, at::arange(9).expand({9, 9})), "rerank_dense_knn: all-inf rows rank by index");

  // All-zero distances (identical samples): finite, the all-ones result (a zero row normalises to ones).
  bool ok_zero = false, ok_one = false;
  auto zeros = at::zeros({13, 13}, at::kDouble), ones = at::ones({13, 13}, at::kDouble);
  auto z = rerank_dense(zeros.narrow(0, 0, 4).narrow(1, 4, 9), zeros.narrow(0, 0, 4).narrow(1, 0, 4),
                        zeros.narrow(0, 4, 9).narrow(1, 4, 9), 4, 2, &ok_zero);
  auto o = rerank_dense(ones.narrow(0, 0, 4).narrow(1, 4, 9), ones.narrow(0, 0, 4).narrow(1, 0, 4),
                        ones.narrow(0, 4, 9).narrow(1, 4, 9), 4, 2, &ok_one);
  expect(ok_zero && in_unit_range(z) && at::allclose(z, o, 0, 1e-6), "rerank all-zero distances = all-equal result");

  // Tiny N with k1 and k2 beyond it: one query and one gallery sample 5 apart, dense and from features alike.
  for (int64_t k1 : {1, 5, 100}) {
    auto pts = at::tensor({0.0f, 0.0f, 3.0f, 4.0f}).reshape({2, 2});
    auto dist = at::cdist(pts, pts);
    bool ok_dense = false, ok_feat = false;
    auto a = rerank_dense(dist.narrow(0, 0, 1).narrow(1, 1, 1), dist.narrow(0, 0, 1).narrow(1, 0, 1),
                          dist.narrow(0, 1, 1).narrow(1, 1, 1), k1, 3, &ok_dense);
    auto b = rerank_features(pts, 1, k1, 3, &ok_feat);
    expect(ok_dense && ok_feat && in_unit_range(a) && at::allclose(a, b, 0, 1e-6),
           "rerank 1 query x 1 gallery, k1=" + std::to_string(k1) + " k2=3: dense = from features, in [0, 1]");
  }

  // Features whose squared norms overflow, and identical features: memory-safe, tables in range.
  bool ok_huge = false, ok_same = false;
  rerank_features(at::full({7, 4}, 3e38f), 2, 5, 3, &ok_huge);
  auto same = rerank_features(at::ones({7, 4}), 2, 5, 3, &ok_same);
  expect(ok_huge, "rerank_knn: overflowing features give a table in range");
  expect(ok_same && in_unit_range(same), "rerank from identical features: finite, in [0, 1]");

  // A corrupt table or CSR from a direct call is rejected, never read.
  bool threw = false;
  try {
    op<ExpandOp>("dgnet::rerank_expand").call(at::tensor({0, 1, 1, -1}, at::kLong).reshape({2, 2}), 1);
  } catch (const c10::Error&) {
    threw = true;
  }
  expect(threw, "rerank_expand rejects a neighbour index of -1");
}

// ---- fused AdaIN ------------------------------------------------------------------------------------
// A case worked by hand (eps = 0, so every number is closed-form), then odd shapes in every dtype against the
// plain ATen formula: rows of 1, 35 and 37 elements cover the 16-lane loops' tails and the float16 staging
// buffers, which is what scripts/sanitize.sh checks for out-of-bounds reads and writes.

using AdainForward = std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                     const at::Tensor&,
                                                                     const std::optional<at::Tensor>&, int64_t,
                                                                     double, double);
using AdainBackward = std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                      const at::Tensor&, const at::Tensor&,
                                                                      const at::Tensor&, const at::Tensor&, int64_t,
                                                                      double);

at::Tensor nchw(std::vector<double> v, int64_t c, at::ScalarType dtype) {
  return at::tensor(v, at::kDouble).reshape({1, c, 2, 2}).to(dtype);
}

void test_adain_hand_case() {
  auto fwd = op<AdainForward>("dgnet::adain_forward");
  auto bwd = op<AdainBackward>("dgnet::adain_backward");
  const double r5 = 1.0 / std::sqrt(5.0);
  // Channel 0: 0 2 0 2, mean 1, variance 1, so xhat = -1 1 -1 1. Channel 1: 1 3 5 7, mean 4, variance 5, so
  // xhat = (-3 -1 1 3) / sqrt(5). scale (3, -2), bias (0.5, 1): z = scale * xhat + bias.
  const std::vector<double> z = {-2.5, 3.5, -2.5, 3.5, 1 + 6 * r5, 1 + 2 * r5, 1 - 2 * r5, 1 - 6 * r5};
  // Upstream gradient: one element per channel. With g = dy * act'(z): d bias = sum g, d scale = sum g xhat and
  // dx = rstd * scale * (g - mean(g) - xhat * mean(g xhat)). For act = identity:
  //   channel 0, g = (1 0 0 0): dx = 3 * ((1 0 0 0) - 1/4 + (-1 1 -1 1) / 4) = (1.5 0 -1.5 0), d scale = -1;
  //   channel 1, g = (0 0 0 1), mean(g xhat) = 3 / (4 sqrt(5)): dx = -2/sqrt(5) * ((0 0 0 1) - 1/4 - (-9 -3 3 9) / 20)
  //   = (-0.4 0.2 0.8 -0.6) / sqrt(5), d scale = 3 / sqrt(5).
  const std::vector<double> dx_none = {1.5, 0, -1.5, 0, -0.4 * r5, 0.2 * r5, 0.8 * r5, -0.6 * r5};
  for (auto dtype : {at::kDouble, at::kFloat}) {
    const double tol = dtype == at::kDouble ? 1e-14 : 2e-6;
    const std::string name = dtype == at::kDouble ? " float64" : " float32";
    auto x = nchw({0, 2, 0, 2, 1, 3, 5, 7}, 2, dtype);
    auto scale = at::tensor({3.0, -2.0}, at::kDouble).reshape({1, 2}).to(dtype);
    auto bias = at::tensor({0.5, 1.0}, at::kDouble).reshape({1, 2}).to(dtype);
    auto res = nchw({1, 1, 1, 1, 0, 0, 0, 0}, 2, dtype);
    auto dy = nchw({1, 0, 0, 0, 0, 0, 0, 1}, 2, dtype);
    for (int64_t act : {0, 1, 2}) {
      const double slope = 0.2;
      std::vector<double> y(8), g_scale(8);
      for (int i = 0; i < 8; ++i) {
        g_scale[i] = act == 0 || z[i] > 0 ? 1.0 : (act == 1 ? 0.0 : slope);  // act'(z)
        y[i] = z[i] * g_scale[i] + (i < 4 ? 1.0 : 0.0);  // act(z) = act'(z) z for these piecewise-linear acts
      }
      auto [out, mean, rstd] = fwd.call(x, scale, bias, res, act, 0.0, slope);
      const std::string what = "adain hand case act=" + std::to_string(act) + name;
      expect(at::allclose(out.to(at::kDouble), nchw(y, 2, at::kDouble), 0, tol), what + ": y");
      expect(at::allclose(mean.to(at::kDouble), at::tensor({1.0, 4.0}, at::kDouble).reshape({1, 2}), 0, tol) &&
                 at::allclose(rstd.to(at::kDouble), at::tensor({1.0, r5}, at::kDouble).reshape({1, 2}), 0, tol),
             what + ": mean and rstd");
      // dy touches z[0] (< 0) and z[7] (< 0): the activation scales the whole identity-case gradient of its
      // channel by act'(z) there (0 for relu, 0.2 for leaky relu).
      auto [dx, dscale, dbias] = bwd.call(dy, x, scale, bias, mean, rstd, act, slope);
      std::vector<double> dx_want(8);
      for (int i = 0; i < 8; ++i) dx_want[i] = dx_none[i] * g_scale[i < 4 ? 0 : 7];
      const double k0 = g_scale[0], k1 = g_scale[7];
      expect(at::allclose(dx.to(at::kDouble), nchw(dx_want, 2, at::kDouble), 0, tol) &&
                 at::allclose(dscale.to(at::kDouble), at::tensor({-k0, 3 * r5 * k1}, at::kDouble).reshape({1, 2}),
                              0, tol) &&
                 at::allclose(dbias.to(at::kDouble), at::tensor({k0, k1}, at::kDouble).reshape({1, 2}), 0, tol),
             what + ": grad_x, grad_scale, grad_bias");
    }
  }
}

// The plain formula with ATen, in float64 from the (rounded) inputs.
at::Tensor adain_aten(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& bias, const at::Tensor& res,
                      double eps) {
  auto xd = x.to(at::kDouble);
  auto mean = xd.mean({2, 3}, true);
  auto var = (xd - mean).square().mean({2, 3}, true);
  auto z = (xd - mean) / (var + eps).sqrt() * scale.to(at::kDouble).unsqueeze(2).unsqueeze(3) +
           bias.to(at::kDouble).unsqueeze(2).unsqueeze(3);
  return at::leaky_relu(z, 0.2) + res.to(at::kDouble);
}

void test_adain_shapes_and_dtypes() {
  auto fwd = op<AdainForward>("dgnet::adain_forward");
  auto bwd = op<AdainBackward>("dgnet::adain_backward");
  at::manual_seed(3);
  const std::vector<std::vector<int64_t>> shapes = {{2, 3, 5, 7}, {1, 2, 1, 37}, {3, 1, 1, 1}, {1, 40, 16, 8}};
  for (const auto& shape : shapes) {
    for (auto dtype : {at::kDouble, at::kFloat, at::kHalf, at::kBFloat16}) {
      auto x = (at::randn(shape, at::kDouble) * 2 + 0.5).to(dtype);
      auto scale = at::randn({shape[0], shape[1]}, at::kDouble).to(dtype);
      auto bias = at::randn({shape[0], shape[1]}, at::kDouble).to(dtype);
      auto res = at::randn(shape, at::kDouble).to(dtype);
      auto [y, mean, rstd] = fwd.call(x, scale, bias, res, 2, 1e-5, 0.2);
      // float16 and bfloat16 are computed in float32 and rounded once: within half a unit in the last place,
      // 2^-11 |y| (float16) or 2^-8 |y| (bfloat16), plus float32's own error, which is relative to the terms
      // (|scale xhat|, |bias|, |residual| of order 10 here), not to y: 1e-6 of that, times ten for margin.
      const double rtol = dtype == at::kHalf ? 0x1p-11 : dtype == at::kBFloat16 ? 0x1p-8 : 0.0;
      const double atol = dtype == at::kDouble ? 1e-12 : 1e-4;
      auto want = adain_aten(x, scale, bias, res, 1e-5);
      const bool fwd_ok = y.scalar_type() == dtype && at::allclose(y.to(at::kDouble), want, rtol, atol);
      auto dy = at::randn(shape, at::kDouble).to(dtype);
      auto [dx, dscale, dbias] = bwd.call(dy, x, scale, bias, mean, rstd, 2, 0.2);
      const bool bwd_ok = dx.sizes() == x.sizes() && dx.scalar_type() == dtype && at::isfinite(dx).all().item<bool>() &&
                          dscale.sizes() == scale.sizes() && at::isfinite(dscale).all().item<bool>() &&
                          at::isfinite(dbias).all().item<bool>();
      expect(fwd_ok && bwd_ok, "adain lrelu+residual " + std::string(c10::toString(dtype)) + " shape " +
                                   std::to_string(shape[0]) + "x" + std::to_string(shape[1]) + "x" +
                                   std::to_string(shape[2]) + "x" + std::to_string(shape[3]) +
                                   " vs ATen float64; backward finite, shaped");
    }
  }
  bool threw = false;
  try {
    fwd.call(at::randn({2, 3, 4}), at::randn({2, 3}), at::randn({2, 3}), std::nullopt, 0, 1e-5, 0.2);
  } catch (const c10::Error&) {
    threw = true;
  }
  expect(threw, "adain_forward rejects a 3-d x");
}
}  // namespace

int main() {
  test_pairwise_distance();
  test_evaluation();
  test_rerank_memory_safety();
  test_adain_hand_case();
  test_adain_shapes_and_dtypes();
  std::printf("%d passed, %d failed\n", passes, failures);
  return failures == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
