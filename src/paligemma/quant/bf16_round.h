// float32 -> bfloat16 in vectors as c10 rounds (to nearest even; NaN -> the quiet NaN 0x7fc0),
// shared by the units that write bfloat16 from vectors: int4_quantize_x.h (store_bf16),
// gelu_isa.h (store), dequant_isa.h (put) and f32_gemm.h (round_out). No include guard:
// included once per instruction set, inside that set's namespace and target options, with
// PG_BF16_ISA 1 (AVX2: 8 floats) or 2 (AVX-512: 16 floats, and the 8-float forms); it undefines
// PG_BF16_ISA.
//   round_bf16(v): each lane's float32 bits rounded to nearest even at bit 16 (the bfloat16
//       value in the high half; NaNs not singled out)
//   bf16_lanes(v): each lane's bfloat16 bits in its low half (a NaN: 0x7fc0)

#if PG_BF16_ISA >= 1
inline __m256i round_bf16(__m256 f) {
  const __m256i b = _mm256_castps_si256(f);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(b, 16), _mm256_set1_epi32(1));
  return _mm256_add_epi32(b, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff)));
}
inline __m256i bf16_lanes(__m256 f) {
  const __m256i r = _mm256_srli_epi32(round_bf16(f), 16);
  const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(f, f, _CMP_UNORD_Q));
  return _mm256_blendv_epi8(r, _mm256_set1_epi32(0x7fc0), nan);
}
#endif
#if PG_BF16_ISA == 2
inline __m512i round_bf16(__m512 f) {
  const __m512i b = _mm512_castps_si512(f);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(b, 16), _mm512_set1_epi32(1));
  return _mm512_add_epi32(b, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff)));
}
inline __m512i bf16_lanes(__m512 f) {
  const __m512i r = _mm512_srli_epi32(round_bf16(f), 16);
  return _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(f, f, _CMP_UNORD_Q), _mm512_set1_epi32(0x7fc0));
}
#endif
#undef PG_BF16_ISA
