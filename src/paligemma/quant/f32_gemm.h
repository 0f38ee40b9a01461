// Our float32 GEMM for the bfloat16 prefill on CPUs without a fast bfloat16 GEMM (AVX2 hosts):
// out bf16[M, O] = x bf16[M, K] @ B[O, K].T (+ bias f32[O]) summed in float32 and rounded once,
// B's rows bfloat16 (a plain weight) or dequantised from int8 / int4 codes (a Job: float32
// holding the bfloat16 path's values), widened into the GEMM's own panels as it packs them, so
// no float32 copy of the weight is made. Included by
// dequant.cpp's per-ISA sections with PG_DQ_ISA >= 1 (AVX2 + FMA code, also under AVX-512).
//
// Blocking (BLIS's): x packed once per call into MR-row panels per KC block of K; the output
// columns in blocks of NC that threads take in turn as they come free (a busy host's stalled
// thread holds up one block, not half the product): per KC block the NC columns are packed into
// NR-column panels (L2), then an MR x NR micro-kernel (12 accumulators) runs over every x
// panel, adding into the block's float32 sums [Mp, NC]. Each output element is one FMA chain
// over k = 0, 1, ..., K - 1 whatever M, the thread count or NC: the same bits for a row alone
// or in any batch.
constexpr int kMR = 6, kNR = 16, kKC = 256;

// 8 x 8 floats transposed: r[i] lane j -> r[j] lane i
inline void transpose8(__m256* r) {
  __m256 t[8], s[8];
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {
    s[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
    s[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
    s[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
    s[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
  }
  for (int i = 0; i < 4; ++i) {
    r[i] = _mm256_permute2f128_ps(s[i], s[4 + i], 0x20);
    r[4 + i] = _mm256_permute2f128_ps(s[i], s[4 + i], 0x31);
  }
}

inline __m256 widen8(const void* p) {  // 8 bfloat16 -> 8 float32
  const __m128i v = _mm_loadu_si128(static_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(v), 16));
}

// x rows [6p, 6p + 6) for p in [p0, p1) -> ap: per KC block k0 (in order), panel p at
// ap + k0 * Mp + p * 6 * kc, as [kc][6] floats; rows past M are zeros.
inline void pack_x(const c10::BFloat16* x, int64_t M, int64_t K, int64_t p0, int64_t p1,
                   float* ap) {
  const int64_t Mp = (M + kMR - 1) / kMR * kMR;
  const __m256i six = _mm256_setr_epi32(-1, -1, -1, -1, -1, -1, 0, 0);
  for (int64_t k0 = 0; k0 < K; k0 += kKC) {
    const int64_t kc = std::min<int64_t>(kKC, K - k0);
    for (int64_t p = p0; p < p1; ++p) {
      float* dst = ap + k0 * Mp + p * kMR * kc;
      const int rows = int(std::min<int64_t>(kMR, M - p * kMR));  // the rest are zeros
      const c10::BFloat16* src = x + p * kMR * K + k0;
      int64_t k = 0;
      for (; k + 8 <= kc; k += 8) {  // 8 k of the 6 rows (8 with two zero ones), transposed
        __m256 r[8];
        for (int i = 0; i < 8; ++i) r[i] = i < rows ? widen8(src + i * K + k) : _mm256_setzero_ps();
        transpose8(r);
        for (int j = 0; j < 8; ++j) _mm256_maskstore_ps(dst + (k + j) * kMR, six, r[j]);
      }
      for (; k < kc; ++k)
        for (int i = 0; i < kMR; ++i) dst[k * kMR + i] = i < rows ? float(src[i * K + k]) : 0.f;
    }
  }
}

// One NR-column panel: B rows n0..n0 + nr (nr <= 16; the rest zeros), k in [k0, k0 + kc) ->
// bp[k][16]. Rows are bfloat16 (`b16`) or float32, `ld` elements apart.
inline void pack_b(const void* rows, bool b16, int64_t ld, int64_t n0, int64_t nr, int64_t k0,
                   int64_t kc, float* bp) {
  auto at = [&](int64_t n, int64_t k) -> float {
    if (n >= nr) return 0.f;
    const int64_t i = (n0 + n) * ld + k0 + k;
    return b16 ? float(static_cast<const c10::BFloat16*>(rows)[i])
               : static_cast<const float*>(rows)[i];
  };
  int64_t k = 0;
  for (; nr == kNR && k + 8 <= kc; k += 8) {
    for (int h = 0; h < 2; ++h) {
      __m256 r[8];
      for (int i = 0; i < 8; ++i) {
        const int64_t idx = (n0 + 8 * h + i) * ld + k0 + k;
        r[i] = b16 ? widen8(static_cast<const uint16_t*>(rows) + idx)
                   : _mm256_loadu_ps(static_cast<const float*>(rows) + idx);
      }
      transpose8(r);
      for (int j = 0; j < 8; ++j) _mm256_storeu_ps(bp + (k + j) * kNR + 8 * h, r[j]);
    }
  }
  for (; k < kc; ++k)
    for (int n = 0; n < kNR; ++n) bp[k * kNR + n] = at(n, k);
}

// c[6][16] (row stride ldc) = (first ? 0 : c) + ap[kc][6] x bp[kc][16], one FMA per k in order
inline void micro_kernel(int64_t kc, const float* ap, const float* bp, float* c, int64_t ldc,
                         bool first) {
  __m256 acc[kMR][2];
  for (int i = 0; i < kMR; ++i)
    for (int h = 0; h < 2; ++h)
      acc[i][h] = first ? _mm256_setzero_ps() : _mm256_loadu_ps(c + i * ldc + 8 * h);
  for (int64_t k = 0; k < kc; ++k) {
    const __m256 b0 = _mm256_loadu_ps(bp + k * kNR), b1 = _mm256_loadu_ps(bp + k * kNR + 8);
#pragma GCC unroll 6
    for (int i = 0; i < kMR; ++i) {
      const __m256 a = _mm256_broadcast_ss(ap + k * kMR + i);
      acc[i][0] = _mm256_fmadd_ps(a, b0, acc[i][0]);
      acc[i][1] = _mm256_fmadd_ps(a, b1, acc[i][1]);
    }
  }
  for (int i = 0; i < kMR; ++i)
    for (int h = 0; h < 2; ++h) _mm256_storeu_ps(c + i * ldc + 8 * h, acc[i][h]);
}

// n float32 sums (+ bias) -> bfloat16 bits, rounded to nearest even as PyTorch's conversion
// (NaN stays NaN)
inline void round_out(const float* s, const float* bias, int64_t n, uint16_t* out) {
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    __m256 v = _mm256_loadu_ps(s + j);
    if (bias) v = _mm256_add_ps(v, _mm256_loadu_ps(bias + j));
    const __m256i r = bf16_lanes(v);  // (bf16_round.h, through dequant_isa.h)
    const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0x08);
    _mm_storeu_si128((__m128i*)(out + j), _mm256_castsi256_si128(packed));
  }
  for (; j < n; ++j) out[j] = bf16_bits(s[j] + (bias ? bias[j] : 0.f));
}

// Blocks of nc output columns of out bf16[M, O] (+ bias f32[O] when given), taken in turn from
// `next` (block b: columns [b * nc, b * nc + nc) clamped to O) until all are taken, from x
// packed by pack_x (ap): B's rows are w's (bfloat16 [O, K]) or, with `job`, dequantised a
// block at a time into a float32 buffer.
inline void gemm_blocks(const float* ap, int64_t M, int64_t K, const Job* job,
                        const c10::BFloat16* w, const float* bias, int64_t O, int64_t nc,
                        std::atomic<int64_t>& next, uint16_t* out) {
  const int64_t Mp = (M + kMR - 1) / kMR * kMR, blocks = (O + nc - 1) / nc;
  // this thread's buffers, every element written before it is read (no zero-filling)
  const std::unique_ptr<float[]> sums(new float[Mp * nc]), panels(new float[kKC * nc]);
  const std::unique_ptr<float[]> deq(job ? new float[nc * K] : nullptr);
  for (int64_t b = next++; b < blocks; b = next++) {
    const int64_t nb = b * nc, nw = std::min(nc, O - nb);
    const void* src = job ? static_cast<const void*>(deq.get()) : w + nb * K;  // B's row nb
    if (job) {  // this block's rows dequantised
      Job j = *job;
      j.dst = deq.get(), j.r0 = nb;
      rows(j, nb, nb + nw);
    }
    for (int64_t k0 = 0; k0 < K; k0 += kKC) {
      const int64_t kc = std::min<int64_t>(kKC, K - k0);
      for (int64_t p = 0; p < nw; p += kNR)
        pack_b(src, !job, K, p, std::min<int64_t>(kNR, nw - p), k0, kc, panels.get() + p * kKC);
      for (int64_t m = 0; m < Mp; m += kMR)
        for (int64_t p = 0; p < nw; p += kNR)
          micro_kernel(kc, ap + k0 * Mp + m * kc, panels.get() + p * kKC,
                       sums.get() + m * nc + p, nc, k0 == 0);
    }
    for (int64_t m = 0; m < M; ++m)
      round_out(sums.get() + m * nc, bias ? bias + nb : nullptr, nw, out + m * O + nb);
  }
}
