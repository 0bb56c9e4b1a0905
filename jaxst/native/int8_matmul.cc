// Exact int8 x int8 -> int32 matrix product with AVX-512 VNNI, as an XLA FFI custom call (CPU):
//
//   out[m, n] = sum_k x[m, k] * w[k, n]      x (M, K) int8, w (K, N) int8, out (M, N) int32
//
// what jax.lax.dot(x, w, preferred_element_type=int32) computes (the portable path of jaxst's int8
// mode): integer sums are exact, so both paths give the same numbers bit for bit. XLA's CPU backend
// does not lower that dot to VNNI; this kernel does.
//
// vpdpbusd multiplies unsigned by signed bytes, 4 at a time into each of 16 int32 lanes. Rows of x are
// shifted to unsigned (+128), and 128 * sum_k w[k, n] (``correction``) is taken off at the end. w comes
// packed once at load (jaxst.native.pack_int8_weights) in panels of 32 columns: for each group of 4 k,
// 32 columns x 4 bytes (two 64-byte vectors), zero past K and N. A tile of kRows rows x 32 columns
// keeps its 2 x kRows accumulators in registers for the whole K. Work (row blocks x column panels) is shared
// with XLA's intra-op thread pool; the calling thread takes work too.

#include <immintrin.h>

#include <algorithm>
#include <array>
#include <atomic>
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

constexpr int kCols = 32;  // columns per panel: two vectors of 16 int32 sums
constexpr int kRows = 8;  // rows per register tile: 16 accumulators + 2 panel vectors (12 rows ran at half speed)
constexpr int64_t kBlockRows = 96;  // rows per work item

struct Job {
  const int8_t* x;
  const int8_t* packed;        // (panels, groups, 32 x 4 bytes)
  const int32_t* correction;   // 128 * column sums, padded to panels * 32
  int32_t* out;
  int64_t m, k, n, groups, panels, row_blocks;
  std::atomic<int64_t> next{0};
  std::mutex mu;
  std::condition_variable cv;
  int64_t left = 0;
};

template <int R>
void Tile(const Job& job, const uint8_t* rows_u8, int64_t row_stride, int64_t panel, int64_t row0, int rows) {
  __m512i acc[R][2];
  for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_si512();
  const int8_t* p = job.packed + panel * job.groups * kCols * 4;
  for (int64_t g = 0; g < job.groups; ++g) {
    const __m512i b0 = _mm512_loadu_si512(p + g * kCols * 4);
    const __m512i b1 = _mm512_loadu_si512(p + g * kCols * 4 + 64);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      int32_t word;
      std::memcpy(&word, rows_u8 + r * row_stride + 4 * g, 4);
      const __m512i a = _mm512_set1_epi32(word);
      acc[r][0] = _mm512_dpbusd_epi32(acc[r][0], a, b0);
      acc[r][1] = _mm512_dpbusd_epi32(acc[r][1], a, b1);
    }
  }
  const __m512i c0 = _mm512_loadu_si512(job.correction + panel * kCols);
  const __m512i c1 = _mm512_loadu_si512(job.correction + panel * kCols + 16);
  const int64_t col0 = panel * kCols;
  const int cols = static_cast<int>(std::min<int64_t>(kCols, job.n - col0));
  for (int r = 0; r < rows; ++r) {
    alignas(64) int32_t tmp[kCols];
    _mm512_store_si512(tmp, _mm512_sub_epi32(acc[r][0], c0));
    _mm512_store_si512(tmp + 16, _mm512_sub_epi32(acc[r][1], c1));
    std::memcpy(job.out + (row0 + r) * job.n + col0, tmp, cols * sizeof(int32_t));
  }
}

using TileFn = void (*)(const Job&, const uint8_t*, int64_t, int64_t, int64_t, int);
template <int... N>
constexpr std::array<TileFn, sizeof...(N)> MakeTiles(std::integer_sequence<int, N...>) {
  return {&Tile<N + 1>...};
}
constexpr auto kTiles = MakeTiles(std::make_integer_sequence<int, kRows>());

// One work item: a block of rows (shifted to unsigned once, K padded to whole groups) against every panel.
void Item(const Job& job, int64_t item, std::vector<uint8_t>& rows_u8) {
  const int64_t row0 = item * kBlockRows, row1 = std::min(job.m, row0 + kBlockRows);
  const int64_t stride = job.groups * 4;
  rows_u8.assign(static_cast<size_t>((row1 - row0) * stride), 128);  // padding bytes: 0 + 128
  for (int64_t r = row0; r < row1; ++r) {
    const int8_t* src = job.x + r * job.k;
    uint8_t* dst = rows_u8.data() + (r - row0) * stride;
    for (int64_t c = 0; c < job.k; ++c) dst[c] = static_cast<uint8_t>(src[c] + 128);
  }
  for (int64_t panel = 0; panel < job.panels; ++panel) {
    for (int64_t r = row0; r < row1; r += kRows) {
      const int rows = static_cast<int>(std::min<int64_t>(kRows, row1 - r));
      kTiles[rows - 1](job, rows_u8.data() + (r - row0) * stride, stride, panel, r, rows);
    }
  }
}

void Work(Job& job) {
  std::vector<uint8_t> rows_u8;
  int64_t done = 0;
  for (;;) {
    const int64_t item = job.next.fetch_add(1);
    if (item >= job.row_blocks) break;
    Item(job, item, rows_u8);
    ++done;
  }
  if (done) {
    std::lock_guard<std::mutex> lock(job.mu);
    job.left -= done;
    if (job.left == 0) job.cv.notify_all();
  }
}

ffi::Error Int8Matmul(ffi::ThreadPool pool, ffi::Buffer<ffi::S8> x, ffi::Buffer<ffi::S8> packed,
                      ffi::Buffer<ffi::S32> correction, ffi::ResultBuffer<ffi::S32> out) {
  const auto xd = x.dimensions(), pd = packed.dimensions(), od = out->dimensions();
  if (xd.size() != 2 || pd.size() != 3 || od.size() != 2 || od[0] != xd[0] || pd[2] != kCols * 4)
    return ffi::Error::InvalidArgument("jaxst_int8_matmul: expected x (M, K), packed (P, G, 128), out (M, N)");
  auto job = std::make_shared<Job>();
  job->x = x.typed_data(), job->packed = packed.typed_data(), job->correction = correction.typed_data();
  job->out = out->typed_data();
  job->m = xd[0], job->k = xd[1], job->n = od[1];
  job->groups = pd[1], job->panels = pd[0];
  if (job->groups != (job->k + 3) / 4 || job->panels != (job->n + kCols - 1) / kCols ||
      correction.element_count() != job->panels * kCols)
    return ffi::Error::InvalidArgument("jaxst_int8_matmul: packed weights do not match x's K and out's N");
  if (job->k > (int64_t{1} << 16))
    return ffi::Error::InvalidArgument("jaxst_int8_matmul: K above 65,536 could overflow int32 sums");
  if (job->m == 0 || job->n == 0) return ffi::Error::Success();
  job->row_blocks = (job->m + kBlockRows - 1) / kBlockRows;
  job->left = job->row_blocks;
  const int helpers = static_cast<int>(std::min<int64_t>(std::max<int64_t>(pool.num_threads(), 1) - 1,
                                                         job->row_blocks - 1));
  for (int i = 0; i < helpers; ++i) pool.Schedule([job] { Work(*job); });
  Work(*job);
  std::unique_lock<std::mutex> lock(job->mu);
  job->cv.wait(lock, [&] { return job->left == 0; });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxstInt8Matmul, Int8Matmul,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::S8>>()
                                  .Arg<ffi::Buffer<ffi::S8>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::S32>>());
