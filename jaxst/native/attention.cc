// Fused float32 self-attention for the CPU, as an XLA FFI custom call:
//
//   out[b, h, i] = sum_j softmax_j(where(allowed(b, i, j), scale * q[b, h, i] . k[b, h / G, j]
//                                                          + bias[b, h, i, j], -inf)) v[b, h / G, j]
//
// the semantics of jaxst.models.layers.xla_attention, which is what runs everywhere else: grouped-query
// heads (G = N / KV query heads share a key/value head), a padding mask (B, 1, S) or per-query masks
// (B, T, S), causal and sliding-window limits, an optional additive bias (MPNet's relative positions).
// A row that may see no key at all averages every value row, as XLA's softmax over a row of equal
// float32-min scores does.
//
// Why: XLA's CPU backend runs the two score matmuls of attention as many small batched matmuls (32
// GFLOP/s for a (32 x 12) x (208 x 64) x (208 x 64) product on 2 AVX-512 cores, against 160+ for the
// model's dense layers) and writes the (B, N, T, S) scores out to memory between them. Here each work
// item (one text, one key/value head, up to kBlock query rows of each head of its group) transposes its
// keys once, computes kTile rows of scores at a time in registers, applies the softmax in place, and
// multiplies by the values, so scores never leave the cache. Keys outside a causal or sliding window
// are not visited at all, which makes local layers O(T x window).
//
// Vectors are GCC/Clang vector extensions as wide as one register of the build (16 floats with AVX-512,
// 8 with AVX2, 4 otherwise), with the same arithmetic. exp is a Cephes-style
// polynomial (relative error ~2e-7). Work is shared with XLA's intra-op thread pool; the calling thread
// takes items too, so the call finishes even if no pool thread runs.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <mutex>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// One vector is one register of the widest kind the build enables: 16 floats (AVX-512), 8 (AVX2) or 4
// (SSE). Wider-than-register vector types would be split by the compiler, and GCC's split of 16-float
// vectors on AVX2 spills its accumulators to the stack (the kernel ran at a third of XLA's speed there).
#if defined(__AVX512F__)
constexpr int kLanes = 16;
constexpr int kTile = 8;          // query rows whose score accumulators stay in registers (32 zmm):
constexpr int kKeyVectors = 2;    // 8 rows x 32 keys
constexpr int kValueVectors = 4;  // output vectors per value tile: 4 rows x 4 accumulators
#else
#if defined(__AVX2__)
constexpr int kLanes = 8;
#else
constexpr int kLanes = 4;
#endif
constexpr int kTile = 4;  // 4 rows x 2 key vectors (8 of the 16 ymm / xmm registers)
constexpr int kKeyVectors = 2;
constexpr int kValueVectors = 2;  // 4 rows x 2 accumulators
#endif
constexpr int64_t kBlock = 64;  // query rows per work item

typedef float vf __attribute__((vector_size(4 * kLanes)));
typedef int32_t vi __attribute__((vector_size(4 * kLanes)));

inline vf Load(const float* p) {
  vf x;
  std::memcpy(&x, p, sizeof(x));
  return x;
}
inline void Store(float* p, vf x) { std::memcpy(p, &x, sizeof(x)); }
inline vf Splat(float x) { return vf{} + x; }
inline vi LaneIndex() {
  vi x;
  for (int i = 0; i < kLanes; ++i) x[i] = i;
  return x;
}
static const vi kLane = LaneIndex();

// Sum / max of the lanes as a tree of halves (log2 dependent steps, not kLanes - 1).
template <typename Op>
inline float Reduce(vf x, Op op) {
  float a[kLanes];
  std::memcpy(a, &x, sizeof(a));
  for (int w = kLanes / 2; w >= 4; w /= 2)
    for (int i = 0; i < w; ++i) a[i] = op(a[i], a[i + w]);
  return op(op(a[0], a[1]), op(a[2], a[3]));
}
// Partial sums of the softmax denominator: as many as one AVX-512 register has lanes, on every build.
constexpr int kSumLanes = 16;
constexpr int kSumGroups = kSumLanes / kLanes;

// The total of kSumLanes partial sums held as kSumGroups vectors (lane l of vector g: partial sum
// g * kLanes + l), as a tree of halves: 16 -> 8 -> 4 -> (0 + 1) + (2 + 3).
inline float SumLanes(const vf* groups) {
  float a[kSumLanes];
  std::memcpy(a, groups, sizeof(a));
  for (int w = kSumLanes / 2; w >= 4; w /= 2)
    for (int i = 0; i < w; ++i) a[i] += a[i + w];
  return (a[0] + a[1]) + (a[2] + a[3]);
}
inline float HMax(vf x) {
  return Reduce(x, [](float a, float b) { return a > b ? a : b; });
}

// e^x for x <= 0 (softmax arguments), Cephes expf: x = n ln2 + r, |r| <= ln2 / 2, degree-6 polynomial.
inline vf Exp(vf x) {
  x = x < Splat(-87.0f) ? Splat(-87.0f) : x;
  const vf t = x * Splat(1.44269504088896341f) + Splat(0.5f);
  vi n = __builtin_convertvector(t, vi);
  n -= (t < __builtin_convertvector(n, vf)) ? vi{} + 1 : vi{};  // floor
  const vf nf = __builtin_convertvector(n, vf);
  const vf r = x - nf * Splat(0.693359375f) - nf * Splat(-2.12194440e-4f);
  vf p = Splat(1.9875691500e-4f);
  p = p * r + Splat(1.3981999507e-3f);
  p = p * r + Splat(8.3334519073e-3f);
  p = p * r + Splat(4.1665795894e-2f);
  p = p * r + Splat(1.6666665459e-1f);
  p = p * r + Splat(5.0000001201e-1f);
  p = p * r * r + r + Splat(1.0f);
  const vi scale = (n + 127) << 23;
  vf two_n;
  std::memcpy(&two_n, &scale, sizeof(two_n));
  return p * two_n;
}

struct Job {
  const float *q, *k, *v, *bias;
  const bool* mask;
  float* out;
  int64_t b, n, kv, t, s, d, g;
  bool heads_last;                 // q, out (B, T, N, D) and k, v (B, S, KV, D) instead of (B, N, T, D) / (B, KV, S, D)
  int64_t q_ld, kv_ld;             // floats from one row (token) of a head to the next: D, or N D / KV D
  int64_t mask_rows;               // 1 (one key mask per text) or t (one per query)
  int64_t bias_b, bias_n, bias_t;  // 0 = no bias; else 1 or the full extent (broadcast otherwise)
  float scale;
  bool causal;
  int64_t window;  // 0: none; else keys with |i - j| < window
  int64_t blocks;  // query blocks per (text, key/value head)
  int64_t items;

  std::atomic<int64_t> next{0};
  std::mutex mu;
  std::condition_variable cv;
  int64_t items_left = 0;
};

// scores[r][0 .. kLanes NK) = scale * q[r] . keys of NK panels, for rows r < rows (kTile x NK accumulators).
// kFull: rows == kTile, no per-row checks in the inner loop.
template <int NK, bool kFull>
inline void ScoreTile(const float* q, int64_t q_ld, int64_t d, int rows, const float* panels, float scale,
                      float* scores, int64_t stride) {
  vf acc[kTile][NK];
  for (int r = 0; r < kTile; ++r)
    for (int m = 0; m < NK; ++m) acc[r][m] = vf{};
  for (int64_t c = 0; c < d; ++c) {
    vf key[NK];
    for (int m = 0; m < NK; ++m) key[m] = Load(panels + m * d * kLanes + c * kLanes);
#pragma GCC unroll 8
    for (int r = 0; r < kTile; ++r) {
      if (kFull || r < rows) {
        const vf x = Splat(q[r * q_ld + c]);
        for (int m = 0; m < NK; ++m) acc[r][m] += x * key[m];
      }
    }
  }
  for (int r = 0; r < rows; ++r)
    for (int m = 0; m < NK; ++m) Store(scores + r * stride + m * kLanes, acc[r][m] * Splat(scale));
}

// out[r][c0 .. c0 + kLanes NC) = inv[r] * sum over keys j in [lo, hi) of p[r][j] v[j][c0 ..], for rows r < n <= 4
// (kFull: n == 4). p holds the softmax's unnormalized exps; inv[r] is one over their sum.
template <int NC, bool kFull>
inline void ValueTile(const float* p, int64_t stride, int n, const float* v, int64_t v_ld, int64_t c0, int64_t lo,
                      int64_t hi, const float* inv, float* out, int64_t out_ld) {
  vf acc[4][NC];
  for (int r = 0; r < 4; ++r)
    for (int m = 0; m < NC; ++m) acc[r][m] = vf{};
  for (int64_t j = lo; j < hi; ++j) {
    vf value[NC];
    for (int m = 0; m < NC; ++m) value[m] = Load(v + j * v_ld + c0 + m * kLanes);
    for (int r = 0; r < 4; ++r) {
      if (kFull || r < n) {
        const vf x = Splat(p[r * stride + j]);
        for (int m = 0; m < NC; ++m) acc[r][m] += x * value[m];
      }
    }
  }
  for (int r = 0; r < n; ++r)
    for (int m = 0; m < NC; ++m) Store(out + r * out_ld + c0 + m * kLanes, acc[r][m] * Splat(inv[r]));
}

// ValueTile over the output dimensions in whole vectors, kValueVectors at a time, then fewer; returns the first
// dimension it did not cover (d rounded down to a multiple of kLanes).
template <bool kFull>
inline int64_t ValueColumns(const float* p, int64_t stride, int n, const float* v, int64_t v_ld, int64_t d,
                            int64_t lo, int64_t hi, const float* inv, float* out, int64_t out_ld) {
  int64_t c0 = 0;
  for (; c0 + kValueVectors * kLanes <= d; c0 += kValueVectors * kLanes)
    ValueTile<kValueVectors, kFull>(p, stride, n, v, v_ld, c0, lo, hi, inv, out, out_ld);
  if constexpr (kValueVectors > 3)
    if (d - c0 >= 3 * kLanes) ValueTile<3, kFull>(p, stride, n, v, v_ld, c0, lo, hi, inv, out, out_ld), c0 += 3 * kLanes;
  if constexpr (kValueVectors > 2)
    if (d - c0 >= 2 * kLanes) ValueTile<2, kFull>(p, stride, n, v, v_ld, c0, lo, hi, inv, out, out_ld), c0 += 2 * kLanes;
  if (d - c0 >= kLanes) ValueTile<1, kFull>(p, stride, n, v, v_ld, c0, lo, hi, inv, out, out_ld), c0 += kLanes;
  return c0;
}

// Keys row i may see, as a half-open range [lo, hi) before masks.
inline void KeyRange(const Job& job, int64_t i, int64_t* lo, int64_t* hi) {
  *lo = 0;
  *hi = job.s;
  if (job.causal) *hi = std::min(*hi, i + 1);
  if (job.window > 0) {
    *lo = std::max<int64_t>(*lo, i - job.window + 1);
    *hi = std::min(*hi, i + job.window);
  }
  if (*hi < *lo) *hi = *lo;
}

void Item(const Job& job, int64_t item, std::vector<float>& kt, std::vector<float>& scores,
          std::vector<float>& allowed) {
  const int64_t block = item % job.blocks;
  const int64_t kvh = (item / job.blocks) % job.kv;
  const int64_t b = item / (job.blocks * job.kv);
  const int64_t d = job.d, s = job.s;
  const int64_t s_pad = (s + kLanes - 1) / kLanes * kLanes;
  const int64_t row0 = block * kBlock, row1 = std::min(job.t, row0 + kBlock);

  // Keys in panels of kLanes (L): panel p holds keys L p .. L p + L - 1 as (D, L), zero past S, so a
  // score tile reads one contiguous vector of keys per dimension.
  const int64_t kv_base = job.heads_last ? (b * s * job.kv + kvh) * d : (b * job.kv + kvh) * s * d;
  const float* k = job.k + kv_base;
  const float* v = job.v + kv_base;
  const int64_t kv_ld = job.kv_ld, q_ld = job.q_ld;
  kt.assign(static_cast<size_t>(d * s_pad), 0.0f);
  for (int64_t j = 0; j < s; ++j) {
    float* panel = kt.data() + (j / kLanes) * d * kLanes + j % kLanes;
    for (int64_t c = 0; c < d; ++c) panel[c * kLanes] = k[j * kv_ld + c];
  }
  scores.resize(static_cast<size_t>(kTile * s_pad));
  // The padding mask as 0 / 1 floats (one row per text, or one per query row): multiplies the exps.
  allowed.assign(static_cast<size_t>(kTile * s_pad), 0.0f);
  auto fill_allowed = [&](float* dst, int64_t i) {
    const bool* m = job.mask + (b * job.mask_rows + (job.mask_rows == 1 ? 0 : i)) * s;
    for (int64_t j = 0; j < s; ++j) dst[j] = m[j] ? 1.0f : 0.0f;
  };
  if (job.mask_rows == 1) fill_allowed(allowed.data(), 0);

  for (int64_t hg = 0; hg < job.g; ++hg) {
    const int64_t h = kvh * job.g + hg;
    const int64_t q_base = job.heads_last ? (b * job.t * job.n + h) * d : ((b * job.n + h) * job.t) * d;
    const float* q = job.q + q_base;
    float* out = job.out + q_base;  // the output has q's layout
    for (int64_t r0 = row0; r0 < row1; r0 += kTile) {
      const int rows = static_cast<int>(std::min<int64_t>(kTile, row1 - r0));
      // The union of the tile's key ranges, widened to whole vectors.
      int64_t lo = s, hi = 0;
      for (int r = 0; r < rows; ++r) {
        int64_t a, z;
        KeyRange(job, r0 + r, &a, &z);
        if (z > a) lo = std::min(lo, a), hi = std::max(hi, z);
      }
      if (hi <= lo) lo = hi = 0;
      const int64_t vlo = lo / kLanes * kLanes, vhi = (hi + kLanes - 1) / kLanes * kLanes;

      // Scores of the tile's rows: kTile x kKeyVectors accumulators of kLanes keys, from key panels.
      const bool full = rows == kTile;
      int64_t j0 = vlo;
      for (; j0 + kKeyVectors * kLanes <= vhi; j0 += kKeyVectors * kLanes)
        (full ? ScoreTile<kKeyVectors, true> : ScoreTile<kKeyVectors, false>)(
            q + r0 * q_ld, q_ld, d, rows, kt.data() + j0 * d, job.scale, scores.data() + j0, s_pad);
      for (; j0 < vhi; j0 += kLanes)
        (full ? ScoreTile<1, true> : ScoreTile<1, false>)(q + r0 * q_ld, q_ld, d, rows, kt.data() + j0 * d, job.scale,
                                                          scores.data() + j0, s_pad);

      // Softmax's exps in place over [vlo, vhi) (what a row may not see becomes 0), and one over their sum.
      // Three passes over the tile's rows (maxima, exps, sums), so the rows' dependency chains overlap.
      bool empty[kTile] = {};
      float inv[kTile] = {}, best[kTile];
      int32_t first[kTile], last[kTile];  // each row's key range [a, z)
      const float* oks[kTile];
      // A key counts when it is in the row's range and allowed: one vector mask per kLanes keys, no branches.
      auto keep = [&](int r, int64_t j0) {
        const vi j = kLane + static_cast<int32_t>(j0);
        return (j >= first[r]) & (j < last[r]) & (Load(oks[r] + j0) != Splat(0.0f));
      };
      for (int r = 0; r < rows; ++r) {
        const int64_t i = r0 + r;
        float* sc = scores.data() + r * s_pad;
        oks[r] = allowed.data();
        if (job.mask_rows != 1) {
          fill_allowed(allowed.data() + r * s_pad, i);
          oks[r] = allowed.data() + r * s_pad;
        }
        int64_t a, z;
        KeyRange(job, i, &a, &z);
        first[r] = static_cast<int32_t>(a), last[r] = static_cast<int32_t>(z);
        if (job.bias_b) {
          const float* bias = job.bias + (((job.bias_b == 1 ? 0 : b) * job.bias_n + (job.bias_n == 1 ? 0 : h)) *
                                              job.bias_t + (job.bias_t == 1 ? 0 : i)) * s;
          for (int64_t j = a; j < z; ++j) sc[j] += bias[j];
        }
        vf top = Splat(-std::numeric_limits<float>::infinity());
        for (int64_t j0 = vlo; j0 < vhi; j0 += kLanes) {
          const vf x = Load(sc + j0);
          top = keep(r, j0) & (x > top) ? x : top;
        }
        best[r] = HMax(top);
        empty[r] = best[r] == -std::numeric_limits<float>::infinity();
      }
      // Each row's sum of exps in kSumLanes partial sums (lane l: keys j with j % kSumLanes == l), added up in
      // the same order whatever the vector width, so every build gives bit-identical results.
      vf sum[kTile][kSumGroups];
      for (int r = 0; r < rows; ++r) {
        float* sc = scores.data() + r * s_pad;
        for (int g = 0; g < kSumGroups; ++g) sum[r][g] = vf{};
        if (empty[r]) {
          std::fill(sc + vlo, sc + vhi, 0.0f);
          continue;
        }
        for (int64_t j0 = vlo; j0 < vhi; j0 += kLanes) {
          const vf e = keep(r, j0) ? Exp(Load(sc + j0) - Splat(best[r])) : vf{};
          Store(sc + j0, e);
          sum[r][(j0 / kLanes) % kSumGroups] += e;
        }
      }
      for (int r = 0; r < rows; ++r) inv[r] = empty[r] ? 0.0f : 1.0f / SumLanes(sum[r]);

      // Output rows = (exps v) / sum: up to kValueVectors x kLanes output dimensions at a time, 4 rows' accumulators over the keys.
      for (int r = 0; r < rows; r += 4) {
        const int n = std::min(4, rows - r);
        const float* p = scores.data() + r * s_pad;
        const float* w = inv + r;
        float* o = out + (r0 + r) * q_ld;
        int64_t c0 = (n == 4 ? ValueColumns<true> : ValueColumns<false>)(p, s_pad, n, v, kv_ld, d, lo, hi, w, o, q_ld);
        for (; c0 < d; ++c0) {  // dimensions past the last whole vector
          for (int i = 0; i < n; ++i) {
            float acc = 0.0f;
            for (int64_t j = lo; j < hi; ++j) acc += p[i * s_pad + j] * v[j * kv_ld + c0];
            o[i * q_ld + c0] = acc * w[i];
          }
        }
      }
      // A row that sees no key: XLA's softmax of equal scores, the mean of every value row.
      for (int r = 0; r < rows; ++r) {
        if (!empty[r]) continue;
        float* o = out + (r0 + r) * q_ld;
        std::fill(o, o + d, 0.0f);
        for (int64_t j = 0; j < s; ++j)
          for (int64_t c = 0; c < d; ++c) o[c] += v[j * kv_ld + c];
        for (int64_t c = 0; c < d; ++c) o[c] /= static_cast<float>(s);
      }
    }
  }
}

void Work(Job& job) {
  std::vector<float> kt, scores, allowed;
  int64_t done = 0;
  for (;;) {
    const int64_t item = job.next.fetch_add(1);
    if (item >= job.items) break;
    Item(job, item, kt, scores, allowed);
    ++done;
  }
  if (done) {
    std::lock_guard<std::mutex> lock(job.mu);
    job.items_left -= done;
    if (job.items_left == 0) job.cv.notify_all();
  }
}

ffi::Error Attention(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k,
                     ffi::Buffer<ffi::F32> v, ffi::Buffer<ffi::PRED> mask, ffi::Buffer<ffi::F32> bias,
                     ffi::ResultBuffer<ffi::F32> out, float scale, bool causal, int64_t window, bool has_bias,
                     bool heads_last) {
  const auto qd = q.dimensions(), kd = k.dimensions(), vd = v.dimensions(), md = mask.dimensions(),
             bd = bias.dimensions();
  if (qd.size() != 4 || kd.size() != 4 || vd.size() != 4 || md.size() != 3 || bd.size() != 4)
    return ffi::Error::InvalidArgument("jaxst_attention: expected q (B, N, T, D), k and v (B, KV, S, D) (heads_last: "
                                       "(B, T, N, D), (B, S, KV, D)), mask (B, 1 or T, S), bias (1 or B, 1 or N, "
                                       "1 or T, S)");
  auto job = std::make_shared<Job>();
  const int heads = heads_last ? 2 : 1, tokens = heads_last ? 1 : 2;
  job->heads_last = heads_last;
  job->b = qd[0], job->n = qd[heads], job->t = qd[tokens], job->d = qd[3];
  job->kv = kd[heads], job->s = kd[tokens];
  if (kd[0] != job->b || kd[3] != job->d || vd[0] != kd[0] || vd[1] != kd[1] || vd[2] != kd[2] ||
      vd[3] != kd[3] || job->kv < 1 || job->n % job->kv != 0)
    return ffi::Error::InvalidArgument("jaxst_attention: q, k, v shapes do not agree");
  if (md[0] != job->b || (md[1] != 1 && md[1] != job->t) || md[2] != job->s)
    return ffi::Error::InvalidArgument("jaxst_attention: mask must be (B, 1 or T, S)");
  if ((causal || window > 0) && job->t != job->s)
    return ffi::Error::InvalidArgument("jaxst_attention: causal or windowed attention needs T == S");
  if (has_bias && ((bd[0] != 1 && bd[0] != job->b) || (bd[1] != 1 && bd[1] != job->n) ||
                   (bd[2] != 1 && bd[2] != job->t) || bd[3] != job->s))
    return ffi::Error::InvalidArgument("jaxst_attention: bias must be (1 or B, 1 or N, 1 or T, S)");
  job->g = job->n / job->kv;
  job->q_ld = heads_last ? job->n * job->d : job->d;
  job->kv_ld = heads_last ? job->kv * job->d : job->d;
  job->q = q.typed_data(), job->k = k.typed_data(), job->v = v.typed_data();
  job->mask = mask.typed_data();
  job->bias = bias.typed_data();
  job->out = out->typed_data();
  job->mask_rows = md[1];
  job->bias_b = has_bias ? bd[0] : 0, job->bias_n = bd[1], job->bias_t = bd[2];
  job->scale = scale;
  job->causal = causal;
  job->window = window;
  job->blocks = (job->t + kBlock - 1) / kBlock;
  job->items = job->b * job->kv * job->blocks;
  if (job->items == 0 || job->d == 0) return ffi::Error::Success();
  job->items_left = job->items;
  const int helpers = static_cast<int>(std::min<int64_t>(std::max<int64_t>(pool.num_threads(), 1) - 1,
                                                         job->items - 1));
  for (int i = 0; i < helpers; ++i) pool.Schedule([job] { Work(*job); });
  Work(*job);
  std::unique_lock<std::mutex> lock(job->mu);
  job->cv.wait(lock, [&] { return job->items_left == 0; });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxstAttention, Attention,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::PRED>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<float>("scale")
                                  .Attr<bool>("causal")
                                  .Attr<int64_t>("window")
                                  .Attr<bool>("has_bias")
                                  .Attr<bool>("heads_last"));

// Vector width this build was compiled for, in bits (512 = AVX-512, else what the compiler split to).
extern "C" int JaxstAttentionVectorBits() {
#if defined(__AVX512F__)
  return 512;
#elif defined(__AVX2__)
  return 256;
#else
  return 128;
#endif
}
