// The single-row product y = alpha * W x + beta * y of decoding (one token's
// [1, K] activation against a [N, K] weight: every linear of a decode step and
// the LM head). It reads each weight once and does 2 flops per weight read,
// so it is bound by memory bandwidth, not by arithmetic: SGEMM with M = 1
// packs W first (a second pass over it) and runs on one thread below
// kParallelGemmWork; on the 2-core EPYC this was measured on it streamed
// 11 GB/s, the kernels below 30 GB/s on one core (SmolLM2-135M reads 538 MB
// of f32 weights per token). 16-bit weights are read as stored, not copied
// to f32 first (linear_forward of one row sends them here).
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

#if defined(__x86_64__)
// GCC 12's AVX-512 intrinsics pass _mm512_undefined_*() as the masked-off
// operand, which -Wuninitialized flags once inlined (GCC bug 105593, fixed in
// GCC 13); the diagnostic state at the header's own lines is what counts.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop
#endif

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "kernels/cpu/cpu_util.h"

namespace llmft::cpu {
namespace {

// y[r] = alpha * dot(w[r, :], x) + beta * y[r] for r in [0, rows), in f32
// with one SIMD accumulator per row (lane partial sums, then a horizontal sum,
// then the k % lanes tail, as BLAS kernels do). Eight rows at a time share
// each load of x: eight independent streams keep the loads in flight. 16-bit
// weights are widened in registers, so they cost half the bytes of f32 ones.
// Written with intrinsics: GCC's vectorisation of the same loop (omp simd
// reductions, target_clones) reached 14-20 GB/s on one core of the EPYC this
// was measured on, these 30 GB/s (AVX-512) and 26 GB/s (AVX2).
enum class WeightType { kF32, kBF16, kF16 };

template <WeightType kType>
inline float weight_at(const void* w, int64_t index) {
  if constexpr (kType == WeightType::kF32) return static_cast<const float*>(w)[index];
  if constexpr (kType == WeightType::kBF16) return bf16_bits_to_float(static_cast<const uint16_t*>(w)[index]);
  return f16_bits_to_float(static_cast<const uint16_t*>(w)[index]);
}

template <WeightType kType>
const void* weight_row(const void* w, int64_t index) {
  const size_t bytes = kType == WeightType::kF32 ? sizeof(float) : sizeof(uint16_t);
  return static_cast<const char*>(w) + static_cast<size_t>(index) * bytes;
}

void store_row(float* y, int64_t row, float sum, float alpha, float beta) {
  y[row] = beta == 0.0f ? alpha * sum : alpha * sum + beta * y[row];
}

using DotRows = void (*)(const void* w, int64_t ldw, int64_t rows, int64_t k, const float* x, float alpha, float beta,
                         float* y);

// Rows in blocks of 8, then one at a time, through block(w, k, x, sums).
template <WeightType kType, int kRows, typename Block>
inline void dot_rows_blocked(const void* w, int64_t ldw, int64_t rows, const float* x, float alpha, float beta,
                             float* y, Block&& block) {
  (void)x;
  float sums[kRows];
  int64_t row = 0;
  for (; row + kRows <= rows; row += kRows) {
    block.template operator()<kRows>(weight_row<kType>(w, row * ldw), sums);
    for (int j = 0; j < kRows; ++j) store_row(y, row + j, sums[j], alpha, beta);
  }
  for (; row < rows; ++row) {
    block.template operator()<1>(weight_row<kType>(w, row * ldw), sums);
    store_row(y, row, sums[0], alpha, beta);
  }
}

#if defined(__x86_64__) && defined(__GNUC__)
#define LLMFT_GEMV_X86 1

// The 16 lanes summed pairwise (halves, then quarters, ...), through memory.
__attribute__((target("avx512f"))) inline float horizontal_sum(__m512 accumulator) {
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, accumulator);
  for (int width = 8; width >= 1; width /= 2)
    for (int lane = 0; lane < width; ++lane) lanes[lane] += lanes[lane + width];
  return lanes[0];
}

template <WeightType kType>
__attribute__((target("avx512f,fma"))) inline __m512 load16(const void* w, int64_t index) {
  if constexpr (kType == WeightType::kF32) {
    return _mm512_loadu_ps(static_cast<const float*>(w) + index);
  } else {
    const __m256i bits = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(w) + index));
    if constexpr (kType == WeightType::kBF16)
      return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
    return _mm512_cvtph_ps(bits);
  }
}

template <WeightType kType>
__attribute__((target("avx512f,fma"))) void dot_rows_avx512(const void* w, int64_t ldw, int64_t rows, int64_t k,
                                                            const float* x, float alpha, float beta, float* y) {
  auto block = [&]<int kRows>(const void* block_w, float* sums) __attribute__((target("avx512f,fma"))) {
    __m512 accumulators[kRows];
    for (int j = 0; j < kRows; ++j) accumulators[j] = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= k; i += 16) {
      const __m512 xv = _mm512_loadu_ps(x + i);
      for (int j = 0; j < kRows; ++j)
        accumulators[j] = _mm512_fmadd_ps(load16<kType>(block_w, j * ldw + i), xv, accumulators[j]);
    }
    for (int j = 0; j < kRows; ++j) {
      float sum = horizontal_sum(accumulators[j]);
      for (int64_t tail = i; tail < k; ++tail) sum += weight_at<kType>(block_w, j * ldw + tail) * x[tail];
      sums[j] = sum;
    }
  };
  dot_rows_blocked<kType, 8>(w, ldw, rows, x, alpha, beta, y, block);
}

template <WeightType kType>
__attribute__((target("avx2,fma,f16c"))) inline __m256 load8(const void* w, int64_t index) {
  if constexpr (kType == WeightType::kF32) {
    return _mm256_loadu_ps(static_cast<const float*>(w) + index);
  } else {
    const __m128i bits = _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(w) + index));
    if constexpr (kType == WeightType::kBF16)
      return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(bits), 16));
    return _mm256_cvtph_ps(bits);
  }
}

template <WeightType kType>
__attribute__((target("avx2,fma,f16c"))) void dot_rows_avx2(const void* w, int64_t ldw, int64_t rows, int64_t k,
                                                            const float* x, float alpha, float beta, float* y) {
  auto block = [&]<int kRows>(const void* block_w, float* sums) __attribute__((target("avx2,fma,f16c"))) {
    __m256 accumulators[kRows];
    for (int j = 0; j < kRows; ++j) accumulators[j] = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= k; i += 8) {
      const __m256 xv = _mm256_loadu_ps(x + i);
      for (int j = 0; j < kRows; ++j)
        accumulators[j] = _mm256_fmadd_ps(load8<kType>(block_w, j * ldw + i), xv, accumulators[j]);
    }
    for (int j = 0; j < kRows; ++j) {
      __m128 half = _mm_add_ps(_mm256_castps256_ps128(accumulators[j]), _mm256_extractf128_ps(accumulators[j], 1));
      half = _mm_add_ps(half, _mm_movehl_ps(half, half));
      half = _mm_add_ss(half, _mm_movehdup_ps(half));
      float sum = _mm_cvtss_f32(half);
      for (int64_t tail = i; tail < k; ++tail) sum += weight_at<kType>(block_w, j * ldw + tail) * x[tail];
      sums[j] = sum;
    }
  };
  dot_rows_blocked<kType, 8>(w, ldw, rows, x, alpha, beta, y, block);
}
#endif

template <WeightType kType>
void dot_rows_portable(const void* w, int64_t ldw, int64_t rows, int64_t k, const float* x, float alpha, float beta,
                       float* y) {
  for (int64_t row = 0; row < rows; ++row) {
    float sum = 0.0f;
    for (int64_t i = 0; i < k; ++i) sum += weight_at<kType>(w, row * ldw + i) * x[i];
    store_row(y, row, sum, alpha, beta);
  }
}

struct DotRowsKernels {
  DotRows f32, bf16, f16;

  DotRows of(DType dtype) const {
    switch (dtype) {
      case DType::kF32: return f32;
      case DType::kBF16: return bf16;
      case DType::kF16: return f16;
      default: throw_runtime("gemv: weights must be f32, bf16 or f16, found ", dtype_name(dtype));
    }
  }
};

// The widest kernels this CPU runs, chosen once (the library itself is built
// for baseline x86-64). LLMFT_CPU_GEMV=avx512|avx2|portable picks one instead,
// so tests can run every kernel on a machine that has the widest.
DotRowsKernels pick_kernels() {
  const char* forced = std::getenv("LLMFT_CPU_GEMV");
  const std::string choice = forced != nullptr ? forced : "";
  const DotRowsKernels portable{dot_rows_portable<WeightType::kF32>, dot_rows_portable<WeightType::kBF16>,
                                dot_rows_portable<WeightType::kF16>};
#ifdef LLMFT_GEMV_X86
  __builtin_cpu_init();
  const bool avx512 = __builtin_cpu_supports("avx512f");
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");  // every AVX2 CPU has F16C
  const DotRowsKernels wide512{dot_rows_avx512<WeightType::kF32>, dot_rows_avx512<WeightType::kBF16>,
                               dot_rows_avx512<WeightType::kF16>};
  const DotRowsKernels wide256{dot_rows_avx2<WeightType::kF32>, dot_rows_avx2<WeightType::kBF16>,
                               dot_rows_avx2<WeightType::kF16>};
  if (choice == "avx512" && avx512) return wide512;
  if (choice == "avx2" && avx2) return wide256;
  if (choice.empty() && avx512) return wide512;
  if (choice.empty() && avx2) return wide256;
#endif
  if (choice.empty() || choice == "portable") return portable;
  throw_runtime("LLMFT_CPU_GEMV: expected avx512, avx2 or portable (one this CPU runs), found '", choice, "'");
}

DotRows dot_rows_for(DType dtype) {
  static const DotRowsKernels kernels = pick_kernels();
  return kernels.of(dtype);
}

struct GemvJob {
  DotRows kernel;
  const void* w;
  size_t weight_bytes;  // of one element of w
  int64_t ldw, n, k;
  const float* x;
  float alpha, beta;
  float* y;
  int64_t chunk_rows;

  void run_chunk(int64_t chunk) const {
    const int64_t begin = chunk * chunk_rows, rows = std::min(chunk_rows, n - begin);
    kernel(static_cast<const char*>(w) + static_cast<size_t>(begin * ldw) * weight_bytes, ldw, rows, k, x, alpha, beta,
           y + begin);
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
      // Yield after a few microseconds: the helper may be waiting for this very core.
      for (int spins = 0; done_.load(std::memory_order_acquire) < chunks; ++spins) spins < 4096 ? pause() : yield();
      if (std::chrono::steady_clock::now() - wait_start > kStall) {
        solo_span_ = std::min<int64_t>(2 * solo_span_, kMaxSoloSpan);
        solo_remaining_ = solo_span_;
        return;
      }
    }
    solo_span_ = kMinSoloSpan / 2;
  }

 private:
  static void yield() { std::this_thread::yield(); }
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
      // Idle: spin a little, then give the core to whoever else wants it
      // (returns at once on an otherwise idle core).
      (spins & 255) == 255 ? yield() : pause();
    }
  }

  // A chunk is at most 64K weights (tens of microseconds), so a wait this
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
  std::vector<std::thread> threads_;
};

}  // namespace

void gemv(int64_t n, int64_t k, float alpha, const void* w, DType w_dtype, int64_t ldw, const float* x, float beta,
          float* y) {
  if (n == 0) return;
  const DotRows kernel = dot_rows_for(w_dtype);
  // Below this many weights (~15 us on one core) a product stays on the
  // calling thread: handing chunks out costs about a microsecond.
  constexpr int64_t kParallelWeights = 1 << 16;
  const int threads = omp_in_parallel() || inside_pool ? 1 : omp_get_max_threads();
  if (threads == 1 || n * k < kParallelWeights || n < 32) {
    kernel(w, ldw, n, k, x, alpha, beta, y);
    return;
  }
  // About 8 chunks per thread (so a thread that loses its core for a while
  // leaves little behind) of at most 64K weights, whole multiples of 16 rows.
  const int64_t most_rows = std::max<int64_t>(16, (int64_t{1} << 16) / k / 16 * 16);
  const int64_t chunk_rows = std::max<int64_t>(ceil_div(n, GemvPool::kMaxChunks),
                                               std::min(most_rows, ceil_div(ceil_div(n, 8 * threads), 16) * 16));
  const int64_t chunks = ceil_div(n, chunk_rows);
  // One pool per process, like OpenMP's own team: its size follows
  // omp_get_max_threads(), which Context::cpu sets. Never destroyed: its
  // helpers sleep until the process ends (joining them at exit would hang in
  // a forked child, which has none of them).
  static GemvPool* const pool = new GemvPool();
  static std::mutex* const pool_mutex = new std::mutex();  // products issued from two threads at once take turns
  std::lock_guard<std::mutex> lock(*pool_mutex);
  pool->run(GemvJob{kernel, w, dtype_size(w_dtype), ldw, n, k, x, alpha, beta, y, chunk_rows}, chunks, threads - 1);
}

}  // namespace llmft::cpu
