// Exact top-k of int8 x int8 dot products with AVX-512 VNNI, as an XLA FFI custom call (CPU).
//
// Semantics are those of jaxst.search._chunked_top_k(kind="int8"): for every query, the k rows
// first <= row < n_valid of the (N, D) int8 corpus with the largest int32 dot product, best first,
// ties to the lower row; scores are returned as float32 and ids as offset + row.
//
// The corpus is read row-major as stored (no second copy). Each 16-row block is repacked once into
// VNNI order (dimension groups of 4 bytes, 16 rows side by side, shifted to unsigned by + 128) in a
// per-thread scratch buffer, then every query tile runs against it from L1: one vpdpbusd per query
// per 4 dimensions gives 16 rows' partial sums at once. The +128 shift is undone with 128 * sum(q).
// A row enters a query's heap only when it beats the heap's worst (score, then lower row), so the
// score matrix is never written out. Work is shared with XLA's intra-op thread pool in slices of
// blocks; the calling thread takes slices too, so the call finishes even if no pool thread runs.

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <array>
#include <atomic>
#include <climits>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int kRows = 16;        // rows per block: one 512-bit vector of int32 sums
constexpr int kQueryTile = 24;   // accumulators live in registers (32 zmm)
constexpr int64_t kSlice = 64;   // blocks a thread claims at a time

struct Hit {
  int32_t score;
  int32_t row;
};

// a is worse than b: lower score, or the same score at a higher row.
inline bool Worse(const Hit& a, const Hit& b) {
  return a.score < b.score || (a.score == b.score && a.row > b.row);
}

// Min-heap of the k best hits seen so far: heap[0] is the worst kept.
struct Heap {
  Hit* h;
  int k;
  void Offer(Hit x) {
    if (!Worse(h[0], x)) return;
    int i = 0;
    for (;;) {
      int l = 2 * i + 1, r = l + 1, m = i;
      const Hit* cur = &x;
      if (l < k && Worse(h[l], *cur)) { m = l; cur = &h[l]; }
      if (r < k && Worse(h[r], *cur)) { m = r; }
      if (m == i) break;
      h[i] = h[m];
      i = m;
    }
    h[i] = x;
  }
};

struct Job {
  const int8_t* queries;  // (Q, D)
  const int8_t* corpus;   // (N, D)
  int64_t q, d, k;
  int64_t first, n_valid;  // rows scanned: [first, n_valid)
  int64_t first_block, n_blocks;
  std::vector<int32_t> correction;  // 128 * sum(q) per query

  std::atomic<int64_t> next{0};  // next slice to claim
  std::atomic<int> slot{0};      // next heap set to hand out
  std::vector<Hit> heaps;        // (slots, Q, k)
  int slots = 0;

  std::mutex mu;
  std::condition_variable cv;
  int64_t slices_left = 0;
};

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
constexpr bool kVnni = true;

// Scores of NQ queries against one packed block: one vpdpbusd per query per group of 4 dimensions,
// the NQ accumulators held in registers for the whole block.
template <int NQ>
void TileScoresN(const uint8_t* packed, const int8_t* q, int64_t d, const int32_t* correction,
                 int32_t (*out)[kRows]) {
  const int64_t groups = d / 4;
  __m512i acc[NQ];
  for (int j = 0; j < NQ; ++j) acc[j] = _mm512_setzero_si512();
  for (int64_t g = 0; g < groups; ++g) {
    const __m512i v = _mm512_load_si512(packed + g * 64);
#pragma GCC unroll 32
    for (int j = 0; j < NQ; ++j) {
      int32_t w;
      std::memcpy(&w, q + j * d + 4 * g, 4);
      acc[j] = _mm512_dpbusd_epi32(acc[j], v, _mm512_set1_epi32(w));
    }
  }
  for (int j = 0; j < NQ; ++j)
    _mm512_store_si512(out[j], _mm512_sub_epi32(acc[j], _mm512_set1_epi32(correction[j])));
}

using TileFn = void (*)(const uint8_t*, const int8_t*, int64_t, const int32_t*, int32_t (*)[kRows]);

template <int... N>
constexpr std::array<TileFn, sizeof...(N)> MakeTiles(std::integer_sequence<int, N...>) {
  return {&TileScoresN<N + 1>...};
}
constexpr auto kTiles = MakeTiles(std::make_integer_sequence<int, kQueryTile>());

void TileScores(const uint8_t* packed, const int8_t* q, int nq, int64_t d, const int32_t* correction,
                int32_t (*out)[kRows]) {
  kTiles[nq - 1](packed, q, d, correction, out);
}

// 16 rows x 16 words (64 bytes each) -> 16 vectors, each holding one word of every row.
inline void Transpose16(__m512i r[16]) {
  __m512i t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
    r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
    r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
    r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
  }
  for (int i = 0; i < 16; i += 8)
    for (int j = 0; j < 4; ++j) {
      t[i + j] = _mm512_shuffle_i32x4(r[i + j], r[i + j + 4], 0x88);
      t[i + j + 4] = _mm512_shuffle_i32x4(r[i + j], r[i + j + 4], 0xdd);
    }
  for (int j = 0; j < 8; ++j) {
    r[j] = _mm512_shuffle_i32x4(t[j], t[j + 8], 0x88);
    r[j + 8] = _mm512_shuffle_i32x4(t[j], t[j + 8], 0xdd);
  }
}

// Words [g0, g0 + 16) of 16 full rows into VNNI order, shifted to unsigned.
inline void PackWords(const uint8_t* rows, int64_t d, int64_t g0, uint8_t* packed) {
  __m512i r[16];
  const __m512i flip = _mm512_set1_epi32(static_cast<int32_t>(0x80808080u));
  for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_si512(rows + i * d + 4 * g0);
  Transpose16(r);
  for (int k = 0; k < 16; ++k) _mm512_store_si512(packed + (g0 + k) * 64, _mm512_xor_si512(r[k], flip));
}
#define JAXST_HAVE_PACK_WORDS 1

inline uint32_t AtLeast(const int32_t* s, int32_t threshold) {
  return _mm512_cmpge_epi32_mask(_mm512_load_si512(s), _mm512_set1_epi32(threshold));
}
#else
constexpr bool kVnni = false;

// The same arithmetic in portable C++ (for CPUs without AVX-512 VNNI; slower than XLA's own dot,
// so jaxst searches with it only when asked to, as the tests do to check this file everywhere).
void TileScores(const uint8_t* packed, const int8_t* q, int nq, int64_t d, const int32_t* correction,
                int32_t (*out)[kRows]) {
  for (int j = 0; j < nq; ++j) {
    int32_t acc[kRows] = {0};
    for (int64_t i = 0; i < d; ++i) {
      const int32_t w = q[j * d + i];
      const uint8_t* column = packed + (i / 4) * 64 + (i % 4);
      for (int r = 0; r < kRows; ++r) acc[r] += w * column[4 * r];
    }
    for (int r = 0; r < kRows; ++r) out[j][r] = acc[r] - correction[j];
  }
}

inline uint32_t AtLeast(const int32_t* s, int32_t threshold) {
  uint32_t mask = 0;
  for (int r = 0; r < kRows; ++r) mask |= static_cast<uint32_t>(s[r] >= threshold) << r;
  return mask;
}
#endif

void ScanBlock(Job& job, int64_t block, uint8_t* packed, Hit* heaps) {
  const int64_t d = job.d, groups = d / 4;
  const int64_t row0 = block * kRows;
  // Repack rows row0..row0+15 (missing rows as zeros) into VNNI order, shifted to unsigned.
  int64_t packed_groups = 0;
#ifdef JAXST_HAVE_PACK_WORDS
  if (row0 + kRows <= job.n_valid) {  // a full block: 16 x 16 word transposes
    const uint8_t* rows = reinterpret_cast<const uint8_t*>(job.corpus + row0 * d);
    for (; packed_groups + 16 <= groups; packed_groups += 16) PackWords(rows, d, packed_groups, packed);
  }
#endif
  for (int r = 0; r < kRows; ++r) {
    const int64_t row = row0 + r;
    uint32_t* out = reinterpret_cast<uint32_t*>(packed) + r;
    if (row < job.n_valid) {
      const uint8_t* src = reinterpret_cast<const uint8_t*>(job.corpus + row * d);
      for (int64_t g = packed_groups; g < groups; ++g) {
        uint32_t w;
        std::memcpy(&w, src + 4 * g, 4);
        out[g * kRows] = w ^ 0x80808080u;
      }
    } else {
      for (int64_t g = packed_groups; g < groups; ++g) out[g * kRows] = 0x80808080u;
    }
  }
  // Lanes that hold rows inside [first, n_valid).
  uint32_t valid = 0;
  for (int r = 0; r < kRows; ++r) {
    const int64_t row = row0 + r;
    if (row >= job.first && row < job.n_valid) valid |= 1u << r;
  }
  // Query tiles of near-equal size (100 queries: 5 x 20), each a fully unrolled kernel.
  const int64_t n_tiles = (job.q + kQueryTile - 1) / kQueryTile;
  for (int64_t i = 0, t = 0; i < n_tiles; ++i) {
    const int nq = static_cast<int>(job.q / n_tiles + (i < job.q % n_tiles ? 1 : 0));
    alignas(64) int32_t tile[kQueryTile][kRows];
    TileScores(packed, job.queries + t * d, nq, d, job.correction.data() + t, tile);
    for (int j = 0; j < nq; ++j) {
      Heap heap{heaps + (t + j) * job.k, static_cast<int>(job.k)};
      // Candidates: at least the worst kept score (ties are settled by row in Offer).
      uint32_t hits = AtLeast(tile[j], heap.h[0].score) & valid;
      while (hits) {
        const int r = __builtin_ctz(hits);
        hits &= hits - 1;
        heap.Offer(Hit{tile[j][r], static_cast<int32_t>(row0 + r)});
      }
    }
    t += nq;
  }
}

void Work(Job& job) {
  const int my_slot = job.slot.fetch_add(1);
  Hit* heaps = job.heaps.data() + static_cast<int64_t>(my_slot) * job.q * job.k;
  alignas(64) uint8_t packed_storage[1024 * kRows];  // D <= 1024
  const int64_t n_slices = (job.n_blocks + kSlice - 1) / kSlice;
  for (;;) {
    const int64_t slice = job.next.fetch_add(1);
    if (slice >= n_slices) break;
    const int64_t b0 = job.first_block + slice * kSlice;
    const int64_t b1 = std::min(b0 + kSlice, job.first_block + job.n_blocks);
    for (int64_t b = b0; b < b1; ++b) ScanBlock(job, b, packed_storage, heaps);
    std::lock_guard<std::mutex> lock(job.mu);
    if (--job.slices_left == 0) job.cv.notify_all();
  }
}

ffi::Error Int8TopK(ffi::ThreadPool pool, ffi::Buffer<ffi::S8> queries, ffi::Buffer<ffi::S8> corpus,
                    ffi::Buffer<ffi::S32> bounds, ffi::ResultBuffer<ffi::F32> values,
                    ffi::ResultBuffer<ffi::S32> ids) {
  const auto qdims = queries.dimensions(), cdims = corpus.dimensions(), odims = values->dimensions();
  if (qdims.size() != 2 || cdims.size() != 2 || odims.size() != 2 || qdims[1] != cdims[1] ||
      bounds.element_count() != 3)
    return ffi::Error::InvalidArgument("jaxst_int8_top_k: expected queries (Q, D), corpus (N, D), bounds (3,)");
  const int64_t d = qdims[1];
  if (d % 4 != 0 || d > 1024)
    return ffi::Error::InvalidArgument("jaxst_int8_top_k: the dimension must be a multiple of 4, at most 1024");
  auto job = std::make_shared<Job>();
  job->queries = queries.typed_data();
  job->corpus = corpus.typed_data();
  job->q = qdims[0];
  job->d = d;
  job->k = odims[1];
  const int32_t* b = bounds.typed_data();  // n_valid, first, offset
  job->n_valid = std::min<int64_t>(b[0], cdims[0]);
  job->first = std::max<int64_t>(b[1], 0);
  const int64_t offset = b[2];
  if (job->k < 1 || job->n_valid - job->first < job->k)
    return ffi::Error::InvalidArgument("jaxst_int8_top_k: fewer rows than k");
  job->first_block = job->first / kRows;
  job->n_blocks = (job->n_valid + kRows - 1) / kRows - job->first_block;
  job->correction.resize(job->q);
  for (int64_t i = 0; i < job->q; ++i) {
    int32_t s = 0;
    for (int64_t j = 0; j < d; ++j) s += job->queries[i * d + j];
    job->correction[i] = 128 * s;
  }
  const int64_t n_slices = (job->n_blocks + kSlice - 1) / kSlice;
  const int helpers = static_cast<int>(std::min<int64_t>(std::max<int64_t>(pool.num_threads(), 1) - 1, n_slices - 1));
  job->slots = helpers + 1;
  job->heaps.assign(static_cast<size_t>(job->slots) * job->q * job->k, Hit{INT32_MIN, INT32_MAX});
  job->slices_left = n_slices;
  for (int i = 0; i < helpers; ++i) pool.Schedule([job] { Work(*job); });
  Work(*job);
  {
    std::unique_lock<std::mutex> lock(job->mu);
    job->cv.wait(lock, [&] { return job->slices_left == 0; });
  }
  // Merge the per-thread heaps: the k best by (score desc, row asc).
  float* out_v = values->typed_data();
  int32_t* out_i = ids->typed_data();
  std::vector<Hit> all;
  for (int64_t i = 0; i < job->q; ++i) {
    all.clear();
    for (int s = 0; s < job->slots; ++s) {
      const Hit* h = job->heaps.data() + (static_cast<int64_t>(s) * job->q + i) * job->k;
      for (int64_t j = 0; j < job->k; ++j)
        if (h[j].row != INT32_MAX) all.push_back(h[j]);
    }
    std::sort(all.begin(), all.end(), [](const Hit& a, const Hit& b) { return Worse(b, a); });
    for (int64_t j = 0; j < job->k; ++j) {
      out_v[i * job->k + j] = static_cast<float>(all[j].score);
      out_i[i * job->k + j] = static_cast<int32_t>(all[j].row + offset);
    }
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxstInt8TopK, Int8TopK,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::S8>>()
                                  .Arg<ffi::Buffer<ffi::S8>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::S32>>());

// Which inner loop this build has: 1 = AVX-512 VNNI, 0 = portable.
extern "C" int JaxstInt8TopKVnni() { return kVnni ? 1 : 0; }
