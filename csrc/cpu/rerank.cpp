// k-reciprocal re-ranking on CPU: neighbour search from features, expansion sets, and the sparse
// Jaccard core. Per-row logic lives in dgnet/rerank.h, shared with csrc/cuda/rerank.cu.
// The Python front (dgnet/ops/rerank.py) validates arguments; checks here guard internal use.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <vector>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include "dgnet/rerank.h"
#include "dgnet/rerank_checks.h"

namespace dgnet {
namespace {

// Admission bar of a top-k list for the quick test !(v >= bar): NaN, which admits every value (inf and NaN
// included), until the list is full; then its last value. Columns arrive in increasing index order, so once
// the list is full a value equal to the bar ranks after it (topk_before) and `v < bar` is the exact test;
// a NaN passes the quick test and topk_insert ranks it as +inf.
inline float topk_bar(const float* vals, const int64_t* idx, int k) {
  return idx[k - 1] == kUnfilled ? std::numeric_limits<float>::quiet_NaN() : vals[k - 1];
}

// The running maximum of a row or column: NaN once any value was NaN, so the maxima also tell the caller whether
// the inputs were finite (re_ranking reads them instead of a pass of its own over the distances).
// Bitwise | of the two tests, not ||: no branch, so the tile loop below still vectorises.
inline float sticky_max(float v, float m) { return ((v > m) | (v != v)) ? v : m; }

// Fold one row of squared distances (columns col0..) into that row's top-k and maximum (sticky_max).
// Values are tested 8 at a time with a branch-free test the compiler vectorises: after the first
// few hundred columns almost no block of 8 holds a value that enters the top-k.
inline void scan_row(const float* v, int64_t n, int64_t col0, int k, float* vals, int64_t* idx, float& rowmax) {
  float m = rowmax;
  float bar = topk_bar(vals, idx, k);
  int64_t t = 0;
#if defined(__AVX2__)
  // GCC does not vectorise the max and the test below (the test feeds a branch): spell them out.
  __m256 vm = _mm256_set1_ps(m);
  __m256 vnan = _mm256_setzero_ps();  // _mm256_max_ps drops NaN: its lanes are tracked apart
  for (; t + 8 <= n; t += 8) {
    const __m256 x = _mm256_loadu_ps(v + t);
    vm = _mm256_max_ps(vm, x);
    vnan = _mm256_or_ps(vnan, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));
    if (_mm256_movemask_ps(_mm256_cmp_ps(x, _mm256_set1_ps(bar), _CMP_NGE_UQ)) == 0) continue;
    for (int l = 0; l < 8; ++l)
      if (!(v[t + l] >= bar)) {
        topk_insert(vals, idx, k, v[t + l], col0 + t + l);
        bar = topk_bar(vals, idx, k);
      }
  }
  float lanes[8];
  _mm256_storeu_ps(lanes, vm);
  for (int l = 0; l < 8; ++l) m = sticky_max(lanes[l], m);
  if (_mm256_movemask_ps(vnan) != 0) m = std::numeric_limits<float>::quiet_NaN();
#else
  for (; t + 8 <= n; t += 8) {
    int hit = 0;
    for (int l = 0; l < 8; ++l) {
      m = sticky_max(v[t + l], m);
      hit |= !(v[t + l] >= bar);
    }
    if (hit)
      for (int l = 0; l < 8; ++l)
        if (!(v[t + l] >= bar)) {
          topk_insert(vals, idx, k, v[t + l], col0 + t + l);
          bar = topk_bar(vals, idx, k);
        }
  }
#endif
  for (; t < n; ++t) {
    m = sticky_max(v[t], m);
    if (!(v[t] >= bar)) {
      topk_insert(vals, idx, k, v[t], col0 + t);
      bar = topk_bar(vals, idx, k);
    }
  }
  rowmax = m;
}

// Dot product with several accumulators so the compiler vectorises it.
inline float dot(const float* a, const float* b, int64_t d) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t t = 0;
  for (; t + 8 <= d; t += 8)
    for (int l = 0; l < 8; ++l) acc[l] += a[t + l] * b[t + l];
  float s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
  for (; t < d; ++t) s += a[t] * b[t];
  return s;
}

}  // namespace

// The k nearest samples of every row of x [N, D] among all rows (itself included), ascending,
// by the squared metric distance, and each row's largest squared distance.
// Blocks of rows are multiplied only once per unordered pair (I <= J): the product serves the
// rows of I directly and the rows of J through its transpose, halving the GEMM work.
std::tuple<at::Tensor, at::Tensor, at::Tensor> rerank_knn_cpu(const at::Tensor& x, int64_t metric, int64_t k,
                                                              int64_t block_rows, int64_t num_query) {
  check_knn(x, metric, k, num_query);
  const int64_t n = x.size(0);
  const auto xf = prepare_features(x, metric);
  const auto xx = xf.pow(2).sum(1).contiguous();
  auto vals = at::full({n, k}, std::numeric_limits<float>::infinity(), xf.options());
  auto idx = at::full({n, k}, kUnfilled, xf.options().dtype(at::kLong));
  auto rowmax = at::zeros({n}, xf.options());
  const int64_t nq = num_query, ng = n - num_query;
  auto qg = at::empty({nq, nq > 0 ? ng : 0}, xf.options());
  float* qgp = qg.data_ptr<float>();
  const int64_t b = block_rows > 0 ? block_rows : 1024;
  const float* xxp = xx.data_ptr<float>();
  float* vp = vals.data_ptr<float>();
  int64_t* ip = idx.data_ptr<int64_t>();
  float* mp = rowmax.data_ptr<float>();
  const int kk = static_cast<int>(k);
  for (int64_t i0 = 0; i0 < n; i0 += b) {
    const int64_t bi = std::min(n, i0 + b) - i0;
    const auto xi = xf.narrow(0, i0, bi);
    for (int64_t j0 = i0; j0 < n; j0 += b) {
      const int64_t bj = std::min(n, j0 + b) - j0;
      auto blk = at::mm(xi, xf.narrow(0, j0, bj).t()).contiguous();  // [bi, bj] dot products
      float* bp = blk.data_ptr<float>();
      // Dot products -> squared distances in place (symmetric in i and j, so the transpose below
      // holds the values of the J rows), then each I row folds its values in.
      at::parallel_for(0, bi, 16, [&](int64_t s, int64_t e) {
        for (int64_t r = s; r < e; ++r) {
          const int64_t row = i0 + r;
          float* br = bp + r * bj;
          const float xr = xxp[row];
          for (int64_t t = 0; t < bj; ++t) br[t] = rerank_base_sq(xr, xxp[j0 + t], br[t], metric);
          // Query rows keep their gallery columns: the [Q, G] block of the result needs them.
          // (i < Q <= j puts i's block at or before j's, so the I side sees every such pair.)
          if (row < nq && j0 + bj > nq) {
            const int64_t c0 = std::max(j0, nq);
            std::copy(br + (c0 - j0), br + bj, qgp + row * ng + (c0 - nq));
          }
          scan_row(br, bj, j0, kk, vp + row * k, ip + row * k, mp[row]);
        }
      });
      if (j0 == i0) continue;
      const auto blk_t = blk.t().contiguous();  // [bj, bi]
      const float* tp = blk_t.data_ptr<float>();
      at::parallel_for(0, bj, 16, [&](int64_t s, int64_t e) {
        for (int64_t r = s; r < e; ++r) {
          const int64_t row = j0 + r;
          scan_row(tp + r * bi, bi, i0, kk, vp + row * k, ip + row * k, mp[row]);
        }
      });
    }
  }
  return {idx, rowmax, qg};
}

namespace {

constexpr int64_t kDenseTile = 512;  // columns scanned together: 2 KB of each row of a block per pass

// Fold the squared values of `cols` consecutive entries of one row (index j) into the states of
// `cols` outputs (each one column of the block matrix). bar[t] mirrors topk_bar of output t.
template <typename T>
inline void fold_tile_row(const T* __restrict__ row, int64_t cols, int64_t j, int k, float* vals, int64_t* idx,
                          float* __restrict__ mx, float* __restrict__ bar) {
  float v[kDenseTile];
  for (int64_t t = 0; t < cols; ++t) {  // vectorises
    v[t] = square_to_float(row[t]);
    mx[t] = sticky_max(v[t], mx[t]);
  }
  // Inserts are rare after the first few hundred rows: test 8 columns at once (one vector compare),
  // and only a group with a hit takes the scalar path.
  int64_t t0 = 0;
  for (; t0 + 8 <= cols; t0 += 8) {
#if defined(__AVX2__)
    if (_mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(v + t0), _mm256_loadu_ps(bar + t0), _CMP_NGE_UQ)) == 0)
      continue;
#else
    int hit = 0;
    for (int l = 0; l < 8; ++l) hit |= !(v[t0 + l] >= bar[t0 + l]);
    if (!hit) continue;
#endif
    for (int64_t t = t0; t < t0 + 8; ++t)
      if (!(v[t] >= bar[t])) {
        topk_insert(vals + t * k, idx + t * k, k, v[t], j);
        bar[t] = topk_bar(vals + t * k, idx + t * k, k);
      }
  }
  for (int64_t t = t0; t < cols; ++t)
    if (!(v[t] >= bar[t])) {
      topk_insert(vals + t * k, idx + t * k, k, v[t], j);
      bar[t] = topk_bar(vals + t * k, idx + t * k, k);
    }
}

// Fold the squared values of one contiguous row (indices j0..) into one output's state.
template <typename T>
inline void fold_row(const T* row, int64_t len, int64_t j0, int k, float* vals, int64_t* idx, float& mx) {
  float buf[kDenseTile];
  for (int64_t s = 0; s < len; s += kDenseTile) {
    const int64_t n = std::min<int64_t>(kDenseTile, len - s);
    for (int64_t t = 0; t < n; ++t) buf[t] = square_to_float(row[s + t]);  // vectorises
    scan_row(buf, n, j0 + s, k, vals, idx, mx);
  }
}

template <typename T>
void dense_knn_impl(const T* qg, const T* qq, const T* gg, int64_t q, int64_t g, int k, float* vals,
                    int64_t* idx, float* colmax) {
  // Row i of the normalised matrix is column i of the squared block matrix (the classic code
  // normalises columns, then transposes), so each output scans one column: query column i is
  // q_q[:, i] then q_g[i, :]; gallery column g is q_g[:, g] then g_g[:, g]. Columns are taken in
  // tiles that read rows of the blocks contiguously; indices are visited in increasing order.
  const int64_t q_tiles = (q + kDenseTile - 1) / kDenseTile, g_tiles = (g + kDenseTile - 1) / kDenseTile;
  at::parallel_for(0, q_tiles + g_tiles, 1, [&](int64_t s, int64_t e) {
    for (int64_t tile = s; tile < e; ++tile) {
      const bool is_query = tile < q_tiles;
      const int64_t c0 = is_query ? tile * kDenseTile : q + (tile - q_tiles) * kDenseTile;  // output row
      const int64_t cols = std::min(is_query ? q : q + g, c0 + kDenseTile) - c0;
      float* v = vals + c0 * k;
      int64_t* ix = idx + c0 * k;
      float* mx = colmax + c0;
      float bar[kDenseTile];
      for (int64_t t = 0; t < cols; ++t) bar[t] = std::numeric_limits<float>::quiet_NaN();  // lists empty
      if (is_query) {
        for (int64_t r = 0; r < q; ++r) fold_tile_row(qq + r * q + c0, cols, r, k, v, ix, mx, bar);
        for (int64_t t = 0; t < cols; ++t) fold_row(qg + (c0 + t) * g, g, q, k, v + t * k, ix + t * k, mx[t]);
      } else {
        for (int64_t r = 0; r < q; ++r) fold_tile_row(qg + r * g + (c0 - q), cols, r, k, v, ix, mx, bar);
        for (int64_t r = 0; r < g; ++r) fold_tile_row(gg + r * g + (c0 - q), cols, q + r, k, v, ix, mx, bar);
      }
    }
  });
}

}  // namespace

// Neighbour table of the classic dense re-ranking from its three distance blocks: for each of the
// N = Q + G rows of the normalised squared block matrix, its k nearest (ascending) as int64 [N, k],
// and each column's maximum of the squared block matrix (the normaliser of that row), float32 [N].
std::tuple<at::Tensor, at::Tensor> rerank_dense_knn_cpu(const at::Tensor& q_g, const at::Tensor& q_q,
                                                        const at::Tensor& g_g, int64_t k) {
  check_dense_knn(q_g, q_q, g_g, k);
  const int64_t q = q_g.size(0), g = q_g.size(1), n = q + g;
  const auto a = q_g.contiguous(), b = q_q.contiguous(), c = g_g.contiguous();
  const auto fopt = a.options().dtype(at::kFloat);
  auto vals = at::full({n, k}, std::numeric_limits<float>::infinity(), fopt);
  auto idx = at::full({n, k}, kUnfilled, fopt.dtype(at::kLong));
  auto colmax = at::zeros({n}, fopt);
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "rerank_dense_knn", [&] {
    dense_knn_impl<scalar_t>(a.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(), c.data_ptr<scalar_t>(), q, g,
                             static_cast<int>(k), vals.data_ptr<float>(), idx.data_ptr<int64_t>(),
                             colmax.data_ptr<float>());
  });
  return {idx, colmax};
}

// Normalised value T[i, j] = blocks[j, i]^2 / colmax[i] of every CSR entry (i, j) (dgnet::normalise).
at::Tensor rerank_dense_gather_cpu(const at::Tensor& q_g, const at::Tensor& q_q, const at::Tensor& g_g,
                                   const at::Tensor& colmax, const at::Tensor& indptr, const at::Tensor& indices) {
  check_dense_gather(q_g, q_q, g_g, colmax, indptr, indices);
  const int64_t q = q_g.size(0), g = q_g.size(1), n = q + g;
  const auto a = q_g.contiguous(), b = q_q.contiguous(), c = g_g.contiguous();
  const auto ip = indptr.contiguous(), ix = indices.contiguous();
  const auto cm = colmax.to(at::kFloat).contiguous();
  auto out = at::empty({ix.size(0)}, a.options().dtype(at::kFloat));
  const int64_t* ptr = ip.data_ptr<int64_t>();
  const int64_t* col = ix.data_ptr<int64_t>();
  const float* cmp = cm.data_ptr<float>();
  float* op = out.data_ptr<float>();
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "rerank_dense_gather", [&] {
    const scalar_t* ap = a.data_ptr<scalar_t>();
    const scalar_t* bp = b.data_ptr<scalar_t>();
    const scalar_t* cp = c.data_ptr<scalar_t>();
    at::parallel_for(0, n, 256, [&](int64_t s, int64_t e) {
      for (int64_t i = s; i < e; ++i)
        for (int64_t t = ptr[i]; t < ptr[i + 1]; ++t)
          op[t] = normalise(block_matrix_sq(ap, bp, cp, q, g, col[t], i), cmp[i]);
    });
  });
  return out;
}

// Expansion sets E(i) of every row as CSR: indptr [N + 1], indices [nnz], sorted within rows.
std::tuple<at::Tensor, at::Tensor> rerank_expand_cpu(const at::Tensor& nbr, int64_t k1) {
  check_expand(nbr, k1);
  const auto nb = nbr.contiguous();
  const int64_t n = nb.size(0), stride = nb.size(1);
  const ExpansionSizes sizes = expansion_sizes(k1, stride);
  const int64_t cap = expansion_capacity(sizes);
  auto padded = at::empty({n, cap}, nb.options());
  auto counts = at::empty({n}, nb.options());
  const int64_t* np_ = nb.data_ptr<int64_t>();
  int64_t* pp = padded.data_ptr<int64_t>();
  int64_t* cp = counts.data_ptr<int64_t>();
  at::parallel_for(0, n, 64, [&](int64_t s, int64_t e) {
    for (int64_t i = s; i < e; ++i) cp[i] = expansion_set(np_, stride, i, sizes, pp + i * cap);
  });
  auto indptr = at::zeros({n + 1}, nb.options());
  indptr.narrow(0, 1, n).copy_(counts.cumsum(0));
  const int64_t* ptr = indptr.data_ptr<int64_t>();
  auto indices = at::empty({ptr[n]}, nb.options());
  int64_t* op = indices.data_ptr<int64_t>();
  at::parallel_for(0, n, 256, [&](int64_t s, int64_t e) {
    for (int64_t i = s; i < e; ++i) std::copy(pp + i * cap, pp + i * cap + cp[i], op + ptr[i]);
  });
  return {indptr, indices};
}

// Normalised squared distance d(i, j)^2 / rowmax[i] of every CSR entry (i, j), from features (dgnet::normalise).
at::Tensor rerank_pair_dist_cpu(const at::Tensor& x, const at::Tensor& indptr, const at::Tensor& indices,
                                const at::Tensor& rowmax, int64_t metric) {
  check_pair_dist(x, indptr, indices, rowmax);
  const auto xf = prepare_features(x, metric);
  const auto xx = xf.pow(2).sum(1).contiguous();
  const auto ip = indptr.contiguous(), ix = indices.contiguous();
  const auto rm = rowmax.to(at::kFloat).contiguous();
  const int64_t n = xf.size(0), d = xf.size(1);
  auto out = at::empty({ix.size(0)}, xf.options());
  const float* xp = xf.data_ptr<float>();
  const float* xxp = xx.data_ptr<float>();
  const float* rmp = rm.data_ptr<float>();
  const int64_t* ptr = ip.data_ptr<int64_t>();
  const int64_t* col = ix.data_ptr<int64_t>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, n, 16, [&](int64_t s, int64_t e) {
    for (int64_t i = s; i < e; ++i)
      for (int64_t t = ptr[i]; t < ptr[i + 1]; ++t) {
        const int64_t j = col[t];
        op[t] = normalise(rerank_base_sq(xxp[i], xxp[j], dot(xp + i * d, xp + j * d, d), metric), rmp[i]);
      }
  });
  return out;
}

// The sparse core after the expansion sets, in four steps: Gaussian weights -> V, local query expansion over
// the k2 nearest rows, an inverted index over the gallery rows, and per query the Jaccard distance to each
// gallery sample mixed into out.
namespace {

// A CSR matrix over n rows whose arrays live elsewhere.
struct CsrView {
  const int64_t* ptr;
  const int64_t* col;
  const float* val;
};

// The rows of V after local query expansion, when k2 != 1.
struct Csr {
  std::vector<int64_t> ptr;
  std::vector<int64_t> col;
  std::vector<float> val;
  CsrView view() const { return {ptr.data(), col.data(), val.data()}; }
};

// For each column c, the gallery rows r with V[r, c] != 0 (ascending, numbered from 0) and their values.
struct InvertedIndex {
  std::vector<int64_t> ptr;
  std::vector<int32_t> row;
  std::vector<float> val;
};

// V: Gaussian weights of the CSR entries' distances, normalised to sum 1 per row.
std::vector<float> gaussian_rows(const int64_t* ptr, const float* dp, int64_t n, int64_t nnz) {
  std::vector<float> v(static_cast<size_t>(nnz));
  at::parallel_for(0, n, 256, [&](int64_t s, int64_t e) {
    for (int64_t i = s; i < e; ++i) {
      float sum = 0.0f;
      for (int64_t t = ptr[i]; t < ptr[i + 1]; ++t) sum += (v[t] = gaussian_weight(dp[t]));
      for (int64_t t = ptr[i]; t < ptr[i + 1]; ++t) v[t] /= sum;
    }
  });
  return v;
}

// Local query expansion: row i becomes the mean of the rows of its k2 nearest samples (nbp, stride per row).
Csr expand_rows(CsrView v, int64_t n, const int64_t* nbp, int64_t stride, int k2) {
  Csr out;
  out.ptr.assign(static_cast<size_t>(n + 1), 0);
  at::parallel_for(0, n, 256, [&](int64_t s, int64_t e) {
    for (int64_t i = s; i < e; ++i)
      out.ptr[i + 1] = qe_merge_row(v.ptr, v.col, v.val, nbp + i * stride, k2, nullptr, nullptr);
  });
  for (int64_t i = 0; i < n; ++i) out.ptr[i + 1] += out.ptr[i];
  out.col.resize(static_cast<size_t>(out.ptr[n]));
  out.val.resize(static_cast<size_t>(out.ptr[n]));
  at::parallel_for(0, n, 256, [&](int64_t s, int64_t e) {
    for (int64_t i = s; i < e; ++i)
      qe_merge_row(v.ptr, v.col, v.val, nbp + i * stride, k2, out.col.data() + out.ptr[i], out.val.data() + out.ptr[i]);
  });
  return out;
}

// The inverted index of rows q..n-1 of v: a counting sort, linear in the number of entries.
InvertedIndex gallery_index(CsrView v, int64_t q, int64_t n) {
  InvertedIndex index;
  index.ptr.assign(static_cast<size_t>(n + 1), 0);
  for (int64_t t = v.ptr[q]; t < v.ptr[n]; ++t) ++index.ptr[v.col[t] + 1];
  for (int64_t c = 0; c < n; ++c) index.ptr[c + 1] += index.ptr[c];
  index.row.resize(static_cast<size_t>(index.ptr[n]));
  index.val.resize(static_cast<size_t>(index.ptr[n]));
  std::vector<int64_t> fill(index.ptr.begin(), index.ptr.end() - 1);
  for (int64_t r = q; r < n; ++r)
    for (int64_t t = v.ptr[r]; t < v.ptr[r + 1]; ++t) {
      const int64_t p = fill[v.col[t]]++;
      index.row[p] = static_cast<int32_t>(r - q);
      index.val[p] = v.val[t];
    }
  return index;
}

// Per query row i < q: accumulate the overlap with every gallery sample, then mix into out's row i [g].
void mix_jaccard(float* outp, CsrView v, const InvertedIndex& index, int64_t q, int64_t g, float lam) {
  at::parallel_for(0, q, 8, [&](int64_t s, int64_t e) {
    std::vector<float> acc(static_cast<size_t>(g));
    for (int64_t i = s; i < e; ++i) {
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (int64_t t = v.ptr[i]; t < v.ptr[i + 1]; ++t) {
        const int64_t c = v.col[t];
        const float a = v.val[t];
        for (int64_t p = index.ptr[c]; p < index.ptr[c + 1]; ++p) acc[index.row[p]] += overlap_term(a, index.val[p]);
      }
      float* row = outp + i * g;
      for (int64_t j = 0; j < g; ++j) row[j] = rerank_mix(acc[j], row[j], lam);
    }
  });
}

}  // namespace

// out [Q, G] holds the normalised original distances on entry and the re-ranked distances on return; rows Q.. of
// the CSR are the gallery.
void rerank_jaccard_mix_cpu(const at::Tensor& out, const at::Tensor& indptr, const at::Tensor& indices,
                            const at::Tensor& dist, const at::Tensor& nbr, int64_t k2, double lambda_value) {
  check_jaccard_mix(out, indptr, indices, dist, nbr, k2);
  const int64_t q = out.size(0), g = out.size(1), n = q + g;
  const auto ip = indptr.contiguous(), ix = indices.contiguous(), nb = nbr.contiguous();
  const auto dv = dist.to(at::kFloat).contiguous();
  const int64_t* ptr = ip.data_ptr<int64_t>();
  const std::vector<float> v = gaussian_rows(ptr, dv.data_ptr<float>(), n, ix.size(0));
  CsrView rows{ptr, ix.data_ptr<int64_t>(), v.data()};
  Csr expanded;
  if (k2 != 1) {
    expanded = expand_rows(rows, n, nb.data_ptr<int64_t>(), nb.size(1), static_cast<int>(k2));
    rows = expanded.view();
  }
  mix_jaccard(out.data_ptr<float>(), rows, gallery_index(rows, q, n), q, g, static_cast<float>(lambda_value));
}

TORCH_LIBRARY_IMPL(dgnet, CPU, m) {
  m.impl("rerank_knn", &rerank_knn_cpu);
  m.impl("rerank_dense_knn", &rerank_dense_knn_cpu);
  m.impl("rerank_dense_gather", &rerank_dense_gather_cpu);
  m.impl("rerank_expand", &rerank_expand_cpu);
  m.impl("rerank_pair_dist", &rerank_pair_dist_cpu);
  m.impl("rerank_jaccard_mix_", &rerank_jaccard_mix_cpu);
}

}  // namespace dgnet
