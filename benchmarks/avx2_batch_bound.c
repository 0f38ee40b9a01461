// How fast batched int4 decoding could ever be on plain AVX2 (no VNNI), on this CPU (not a test;
// a standalone C program, any x86-64 CPU with AVX2):
//
//     gcc -O3 -mavx2 -fopenmp -o /tmp/avx2_batch_bound benchmarks/avx2_batch_bound.c
//     OMP_NUM_THREADS=2 /tmp/avx2_batch_bound [bytes of int4 codes a token, default PaliGemma-3B's]
//
// Without VNNI every product of an unsigned 4-bit code and a signed 8-bit activation goes through
// VPMADDUBSW (32 products into 16 int16 pair sums a 256-bit instruction), and every such result
// must be added to an accumulator (VPADDW, or wider). So no AVX2 kernel can do more products a
// second than a loop of only those two instructions, from registers, on every core: this
// program's first figure (in assembly, 4 accumulators a thread). Its second is the same
// with the least a real loop adds: the codes unpacked from bytes (two ANDs and a shift per 64
// codes, shared by the batch's rows) and the activations broadcast from memory per row, as
// quant/int4_dot_body.h's batched loop does (no group scales, no float steps: still a bound).
// The third is the memory a thread pool reads by a streaming sum (1 GiB of int32).
//
// From these it prints, for a model whose int4 decoder and head are `bytes` of codes a token
// (two codes a byte, one product each a row; default PaliGemma-3B-224's 1,332,686,848 with
// scales, taken as codes: generous), the tokens a second batch 8 could reach at each ceiling,
// the batch-1 rate at the bandwidth limit, and so whether "batch 8 >= 5x batch 1" can hold
// together with "batch 1 >= 70% of the bandwidth limit" (batch 8 >= 3.5x the limit's rate).
#include <immintrin.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define ROWS 8  // rows of x (the batch)

static volatile int64_t sink;  // the accumulators' fate, so that no loop is dropped

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

// VPMADDUBSW + VPADDW only, in assembly (compilers spill or fold such a loop): 8 products into
// 4 accumulators an iteration, 32 products an instruction pair. The products do not depend on
// the accumulators, so only the instructions' throughput bounds the loop.
#define PG_PAIR(t, a) "vpmaddubsw %[x], %[w], %%" t "\n\tvpaddw %%" t ", %[" a "], %[" a "]\n\t"
__attribute__((noinline)) static int64_t bare(int64_t iters, __m256i seed) {
  const __m256i w = _mm256_add_epi8(seed, _mm256_set1_epi8(3)), x = _mm256_set1_epi8(5);
  __m256i a0 = seed, a1 = seed, a2 = seed, a3 = seed;
  for (int64_t n = 0; n < iters; ++n) {
    __asm__ volatile(PG_PAIR("ymm12", "a0") PG_PAIR("ymm13", "a1") PG_PAIR("ymm14", "a2")
                     PG_PAIR("ymm15", "a3") PG_PAIR("ymm12", "a0") PG_PAIR("ymm13", "a1")
                     PG_PAIR("ymm14", "a2") PG_PAIR("ymm15", "a3")
                     : [a0] "+x"(a0), [a1] "+x"(a1), [a2] "+x"(a2), [a3] "+x"(a3)
                     : [w] "x"(w), [x] "x"(x)
                     : "xmm12", "xmm13", "xmm14", "xmm15");
  }
  const __m256i s = _mm256_xor_si256(_mm256_xor_si256(a0, a1), _mm256_xor_si256(a2, a3));
  sink = _mm256_extract_epi64(s, 0);
  return iters * 8 * 32;  // products done
}
#undef PG_PAIR

// Codes from 4 KB of bytes (L1): per 32 bytes (64 codes) the low and high nibbles unpacked once,
// then per row of x two broadcast activation words, two VPMADDUBSW, two VPADDW.
__attribute__((noinline)) static int64_t unpacked(int64_t iters, const uint8_t* codes, const int32_t* x) {
  const __m256i m = _mm256_set1_epi8(15);
  __m256i a[ROWS];
  for (int r = 0; r < ROWS; ++r) a[r] = _mm256_setzero_si256();
  int64_t products = 0;
  for (int64_t n = 0; n < iters; ++n) {
    for (int c = 0; c < 4096; c += 32) {
      const __m256i v = _mm256_load_si256((const __m256i*)(codes + c));
      const __m256i lo = _mm256_and_si256(v, m), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m);
#pragma GCC unroll 8
      for (int r = 0; r < ROWS; ++r) {
        const __m256i x0 = _mm256_set1_epi32(x[r * 64 + (c & 63)]);
        const __m256i x1 = _mm256_set1_epi32(x[r * 64 + (c & 63) + 1]);
        a[r] = _mm256_add_epi16(a[r], _mm256_maddubs_epi16(lo, x0));
        a[r] = _mm256_add_epi16(a[r], _mm256_maddubs_epi16(hi, x1));
      }
    }
    products += 4096 * 2 * ROWS;
  }
  __m256i s = a[0];
  for (int r = 1; r < ROWS; ++r) s = _mm256_xor_si256(s, a[r]);
  sink = _mm256_extract_epi64(s, 1);
  return products;
}

// Products a second over all threads, the best of 3 runs of `seconds`.
static double rate(int which, double seconds, const uint8_t* codes, const int32_t* x) {
  double best = 0;
  for (int run = 0; run < 3; ++run) {
    int64_t total = 0;
    const double start = now();
#pragma omp parallel reduction(+ : total)
    {
      const __m256i seed = _mm256_set1_epi8((char)omp_get_thread_num());
      while (now() - start < seconds) total += which ? unpacked(64, codes, x) : bare(20000, seed);
    }
    const double r = total / (now() - start);
    best = r > best ? r : best;
  }
  return best;
}

// Bytes a second a streaming sum reads over all threads (1 GiB of int32, 256-bit loads), the
// best of 3.
static double bandwidth(void) {
  const int64_t n = (int64_t)1 << 28;
  int32_t* a = aligned_alloc(64, n * 4);
#pragma omp parallel for
  for (int64_t i = 0; i < n; ++i) a[i] = (int32_t)i;
  double best = 0;
  for (int run = 0; run < 3; ++run) {
    const double start = now();
#pragma omp parallel
    {
      __m256i s0 = _mm256_setzero_si256(), s1 = s0, s2 = s0, s3 = s0;
#pragma omp for
      for (int64_t i = 0; i < n; i += 32) {
        s0 = _mm256_add_epi32(s0, _mm256_load_si256((const __m256i*)(a + i)));
        s1 = _mm256_add_epi32(s1, _mm256_load_si256((const __m256i*)(a + i + 8)));
        s2 = _mm256_add_epi32(s2, _mm256_load_si256((const __m256i*)(a + i + 16)));
        s3 = _mm256_add_epi32(s3, _mm256_load_si256((const __m256i*)(a + i + 24)));
      }
      sink = _mm256_extract_epi32(_mm256_add_epi32(_mm256_add_epi32(s0, s1), _mm256_add_epi32(s2, s3)), 0);
    }
    const double r = n * 4.0 / (now() - start);
    best = r > best ? r : best;
  }
  free(a);
  return best;
}

int main(int argc, char** argv) {
  const double bytes = argc > 1 ? atof(argv[1]) : 1332686848.0;
  uint8_t* codes = aligned_alloc(64, 4096);
  int32_t* x = aligned_alloc(64, ROWS * 64 * 4);
  for (int i = 0; i < 4096; ++i) codes[i] = (uint8_t)(i * 37);
  for (int i = 0; i < ROWS * 64; ++i) x[i] = i * 2654435761u;
  const double b = bandwidth(), r0 = rate(0, 1.0, codes, x), r1 = rate(1, 1.0, codes, x);
  const double per_token = 2 * bytes;  // products a row of the batch needs a token
  const double limit = b / bytes;      // batch-1 tokens a second at the bandwidth limit
  printf("threads %d, int4 codes a token %.0f bytes\n", omp_get_max_threads(), bytes);
  printf("bandwidth (streaming sum)             %8.1f GB/s -> batch 1 at the limit %7.2f tok/s\n",
         b / 1e9, limit);
  printf("VPMADDUBSW + VPADDW alone             %8.1f G products/s -> batch 8 at most %7.2f tok/s"
         " = %.2fx the limit's batch 1\n", r0 / 1e9, r0 / per_token, r0 / per_token / limit);
  printf("... with unpacking and broadcasts     %8.1f G products/s -> batch 8 at most %7.2f tok/s"
         " = %.2fx the limit's batch 1\n", r1 / 1e9, r1 / per_token, r1 / per_token / limit);
  printf("both targets together need batch 8 >= 3.5x the limit's batch 1 (5 x 70%%): %s\n",
         r1 / per_token >= 3.5 * limit ? "within this bound" : "beyond this bound");
  return 0;
}
