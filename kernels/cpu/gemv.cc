// The single-row product y = alpha * W x + beta * y of decoding (one token's
// [1, K] activation against a [N, K] weight: every linear of a decode step and
// the LM head). It reads each weight once and does 2 flops per 4 bytes read,
// so it is bound by memory bandwidth, not by arithmetic: SGEMM with M = 1
// packs W first (a second pass over it) and runs on one thread below
// kParallelGemmWork, which on the 2-core EPYC this was measured on left half
// the machine's bandwidth unused (11 GB/s vs 17 GB/s for this loop on one
// core; SmolLM2-135M streams 538 MB of f32 weights per token).
//
// The rows are split into chunks that the calling thread and the helper
// threads claim from one atomic counter, and the caller goes on as soon as
// every chunk is DONE, without waiting for helpers that never started. A
// fork-join OpenMP region instead ends in a barrier that waits for every team
// thread: on a shared machine, where another process holds one core, each of
// a decode step's ~200 products then waits for that thread's next time slice
// (milliseconds), and two threads decoded 6x slower than one (measured:
// 2.9 vs 18.8 tokens/s). Here a descheduled helper only means the caller does
// all chunks itself. Helpers spin briefly between products (a decode step
// issues one every few microseconds) and then sleep, so they cost nothing
// while OpenMP regions (training, prefill) run.
#include <omp.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "kernels/cpu/cpu_util.h"

namespace llmft::cpu {
namespace {

// y[r] = alpha * dot(w[r, :], x) + beta * y[r] for r in [0, rows). Four rows
// at a time share each load of x; the sums are f32 in SIMD lanes, like SGEMM's.
LLMFT_CPU_MULTIVERSION void dot_rows(const float* w, int64_t ldw, int64_t rows, int64_t k, const float* x, float alpha,
                                     float beta, float* y) {
  auto store = [&](int64_t row, float sum) { y[row] = beta == 0.0f ? alpha * sum : alpha * sum + beta * y[row]; };
  int64_t row = 0;
  for (; row + 4 <= rows; row += 4) {
    const float* w0 = w + row * ldw;
    const float* w1 = w0 + ldw;
    const float* w2 = w1 + ldw;
    const float* w3 = w2 + ldw;
    float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
    for (int64_t i = 0; i < k; ++i) {
      const float xi = x[i];
      s0 += w0[i] * xi;
      s1 += w1[i] * xi;
      s2 += w2[i] * xi;
      s3 += w3[i] * xi;
    }
    store(row, s0);
    store(row + 1, s1);
    store(row + 2, s2);
    store(row + 3, s3);
  }
  for (; row < rows; ++row) {
    const float* w0 = w + row * ldw;
    float s0 = 0.0f;
#pragma omp simd reduction(+ : s0)
    for (int64_t i = 0; i < k; ++i) s0 += w0[i] * x[i];
    store(row, s0);
  }
}

struct GemvJob {
  const float* w;
  int64_t ldw, n, k;
  const float* x;
  float alpha, beta;
  float* y;
  int64_t chunk_rows;

  void run_chunk(int64_t chunk) const {
    const int64_t begin = chunk * chunk_rows, rows = std::min(chunk_rows, n - begin);
    dot_rows(w + begin * ldw, ldw, rows, k, x, alpha, beta, y + begin);
  }
};

// True on a thread while it runs a chunk, so a product issued from inside one
// (none today) would run serially instead of waiting on the pool.
thread_local bool inside_pool = false;

// The calling thread plus `helpers` threads sharing one product at a time.
// `claim_` packs (epoch << 32 | chunks << 16 | next chunk): a helper claims
// chunk `next` of the current product with one compare-and-swap, which fails
// if the product it saw has since been replaced, so a helper waking late can
// never run a chunk of a product that is done. The job description is written
// before the release store that publishes the epoch and is only rewritten
// after every chunk of the previous product is done.
class GemvPool {
 public:
  static constexpr int64_t kMaxChunks = 0xffff;

  void run(const GemvJob& job, int64_t chunks, int helpers) {
    if (solo_remaining_ > 0) {
      --solo_remaining_;
      for (int64_t chunk = 0; chunk < chunks; ++chunk) job.run_chunk(chunk);
      return;
    }
    ensure_helpers(helpers);
    job_ = job;
    active_helpers_.store(helpers, std::memory_order_relaxed);
    done_.store(0, std::memory_order_relaxed);
    epoch_ = epoch_ + 1 == 0 ? 1 : epoch_ + 1;
    const uint64_t published = (static_cast<uint64_t>(epoch_) << 32) | (static_cast<uint64_t>(chunks) << 16);
    claim_.store(published, std::memory_order_seq_cst);
    if (sleepers_.load(std::memory_order_seq_cst) > 0) claim_.notify_all();
    inside_pool = true;
    int64_t chunk;
    while ((chunk = claim(published)) >= 0) {
      job_.run_chunk(chunk);
      done_.fetch_add(1, std::memory_order_acq_rel);
    }
    inside_pool = false;
    // Only chunks a running helper has claimed are outstanding. A helper that
    // lost its core in the middle of one (another process took it) holds the
    // caller until its next time slice: after such a stall, products run on
    // the calling thread alone for a while (twice as long after each stall in
    // a row), so a busy machine decodes at one thread's speed, not slower.
    if (done_.load(std::memory_order_acquire) < chunks) {
      const auto wait_start = std::chrono::steady_clock::now();
      while (done_.load(std::memory_order_acquire) < chunks) pause();
      if (std::chrono::steady_clock::now() - wait_start > kStall) {
        solo_span_ = std::min<int64_t>(2 * solo_span_, kMaxSoloSpan);
        solo_remaining_ = solo_span_;
        return;
      }
    }
    solo_span_ = kMinSoloSpan / 2;
  }

  ~GemvPool() {
    stop_.store(true, std::memory_order_seq_cst);
    claim_.fetch_add(1ull << 32, std::memory_order_seq_cst);  // a new "epoch" wakes every sleeper
    claim_.notify_all();
    for (std::thread& thread : threads_) thread.join();
  }

 private:
  static void pause() {
#if defined(__x86_64__)
    __builtin_ia32_pause();
#endif
  }

  // Claims the next chunk of the product published as `seen` (epoch, chunks);
  // -1 when it has none left or has been replaced.
  int64_t claim(uint64_t seen) {
    uint64_t state = claim_.load(std::memory_order_acquire);
    for (;;) {
      if ((state >> 16) != (seen >> 16)) return -1;  // another product (epoch or chunk count differ)
      const uint64_t next = state & 0xffff, chunks = (state >> 16) & 0xffff;
      if (next >= chunks) return -1;
      if (claim_.compare_exchange_weak(state, state + 1, std::memory_order_acq_rel, std::memory_order_acquire))
        return static_cast<int64_t>(next);
    }
  }

  void ensure_helpers(int helpers) {
    while (static_cast<int>(threads_.size()) < helpers) {
      const int index = static_cast<int>(threads_.size());
      threads_.emplace_back([this, index] { helper_loop(index); });
    }
  }

  void helper_loop(int index) {
    // Spin this long after the last product before sleeping: a decode step
    // issues its products microseconds apart, a training step not at all.
    constexpr auto kSpin = std::chrono::microseconds(2000);
    uint64_t last_seen = 0;
    auto idle_since = std::chrono::steady_clock::now();
    for (int spins = 0;; ++spins) {
      if (stop_.load(std::memory_order_acquire)) return;
      const uint64_t state = claim_.load(std::memory_order_acquire);
      if ((state >> 32) != (last_seen >> 32)) {
        last_seen = state;
        if (index < active_helpers_.load(std::memory_order_acquire)) {
          const uint64_t published = state & ~uint64_t{0xffff};
          inside_pool = true;
          int64_t chunk;
          while ((chunk = claim(published)) >= 0) {
            job_.run_chunk(chunk);
            done_.fetch_add(1, std::memory_order_acq_rel);
          }
          inside_pool = false;
        }
        idle_since = std::chrono::steady_clock::now();
        spins = 0;
        continue;
      }
      if ((spins & 63) == 63 && std::chrono::steady_clock::now() - idle_since > kSpin) {
        sleepers_.fetch_add(1, std::memory_order_seq_cst);
        claim_.wait(state, std::memory_order_seq_cst);
        sleepers_.fetch_sub(1, std::memory_order_seq_cst);
        idle_since = std::chrono::steady_clock::now();
        continue;
      }
      pause();
    }
  }

  // A chunk is at most 256 KB of weights (tens of microseconds), so a wait this
  // long means a helper was descheduled mid-chunk.
  static constexpr auto kStall = std::chrono::microseconds(500);
  static constexpr int64_t kMinSoloSpan = 256, kMaxSoloSpan = 1 << 16;  // products (a decode step has ~200)

  GemvJob job_{};
  // Written by the calling thread only (under sgemv's mutex).
  uint32_t epoch_ = 0;
  int64_t solo_remaining_ = 0, solo_span_ = kMinSoloSpan / 2;
  std::atomic<uint64_t> claim_{0};
  std::atomic<int64_t> done_{0};
  std::atomic<int> active_helpers_{0};
  std::atomic<int> sleepers_{0};
  std::atomic<bool> stop_{false};
  std::vector<std::thread> threads_;
};

}  // namespace

void sgemv(int64_t n, int64_t k, float alpha, const float* w, int64_t ldw, const float* x, float beta, float* y) {
  if (n == 0) return;
  // Below this many weights (256 KB of f32, ~15 us on one core) a product
  // stays on the calling thread: handing chunks out costs about a microsecond.
  constexpr int64_t kParallelWeights = 1 << 16;
  const int threads = omp_in_parallel() || inside_pool ? 1 : omp_get_max_threads();
  if (threads == 1 || n * k < kParallelWeights || n < 32) {
    dot_rows(w, ldw, n, k, x, alpha, beta, y);
    return;
  }
  // About 8 chunks per thread (so a thread that loses its core for a while
  // leaves little behind) of at most 256 KB of weights, whole multiples of 16 rows.
  const int64_t most_rows = std::max<int64_t>(16, (int64_t{1} << 16) / k / 16 * 16);
  const int64_t chunk_rows = std::max<int64_t>(ceil_div(n, GemvPool::kMaxChunks),
                                               std::min(most_rows, ceil_div(ceil_div(n, 8 * threads), 16) * 16));
  const int64_t chunks = ceil_div(n, chunk_rows);
  // One pool per process, like OpenMP's own team: its size follows
  // omp_get_max_threads(), which Context::cpu sets.
  static GemvPool pool;
  static std::mutex pool_mutex;  // products issued from two threads at once take turns
  std::lock_guard<std::mutex> lock(pool_mutex);
  pool.run(GemvJob{w, ldw, n, k, x, alpha, beta, y, chunk_rows}, chunks, threads - 1);
}

}  // namespace llmft::cpu
