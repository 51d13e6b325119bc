// The multiply-add rates this CPU reaches in registers, with nothing else in the loop, against
// the rate of the loop every direct or GEMM convolution kernel runs: one operand broadcast from
// memory, a few vectors of output channels loaded, a tile of accumulators (issue 36: how far
// oneDNN's bf16 convolutions are from what the CPU allows). Needs avx512_bf16 for the bf16 lines.
//   gcc -O2 -fopenmp studies/dot_rate.c -o /tmp/dot_rate && /tmp/dot_rate
#include <immintrin.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>

#define BF16 __attribute__((target("avx512f,avx512bf16,avx512bw,avx512vl"), noinline))
static uint32_t X[8192] __attribute__((aligned(64)));  // in L1: the rate, not the memory's
static uint32_t D[8192] __attribute__((aligned(64)));

// 12 independent accumulators, both operands in registers: the dot-product unit's own rate
BF16 float registers_bf16(long iters) {
  __m512 a[12];
  for (int k = 0; k < 12; ++k) a[k] = _mm512_setzero_ps();
  __m512i x = _mm512_set1_epi32(0x3F803F80), y = _mm512_set1_epi32(0x3C003C00);
  for (long i = 0; i < iters; ++i) {
#pragma GCC unroll 12
    for (int k = 0; k < 12; ++k) a[k] = _mm512_dpbf16_ps(a[k], (__m512bh)x, (__m512bh)y);
    __asm__ volatile("" : "+v"(x));
  }
  __m512 s = _mm512_setzero_ps();
  for (int k = 0; k < 12; ++k) s = _mm512_add_ps(s, a[k]);
  return _mm512_reduce_add_ps(s);
}

__attribute__((target("avx2,fma"), noinline)) float registers_f32(long iters) {
  __m256 a[12];
  for (int k = 0; k < 12; ++k) a[k] = _mm256_setzero_ps();
  __m256 x = _mm256_set1_ps(1.0001f), y = _mm256_set1_ps(0.999f);
  for (long i = 0; i < iters; ++i) {
#pragma GCC unroll 12
    for (int k = 0; k < 12; ++k) a[k] = _mm256_fmadd_ps(x, y, a[k]);
    __asm__ volatile("" : "+x"(x));
  }
  float s = 0, t[8];
  for (int k = 0; k < 12; ++k) { _mm256_storeu_ps(t, a[k]); s += t[0]; }
  return s;
}

// a CIB x COB tile: COB vectors of 16 output channels loaded, CIB input values broadcast
#define TILE(NAME, CIB, COB)                                                               \
  BF16 float NAME(long iters) {                                                            \
    __m512 s[CIB][COB];                                                                    \
    for (int i = 0; i < CIB; ++i)                                                          \
      for (int k = 0; k < COB; ++k) s[i][k] = _mm512_setzero_ps();                         \
    for (long it = 0; it < iters; ++it) {                                                  \
      int j = it & 63;                                                                     \
      __m512i b[COB];                                                                      \
      _Pragma("GCC unroll 4") for (int k = 0; k < COB; ++k)                                \
          b[k] = _mm512_loadu_si512(D + j * 64 + 16 * k);                                  \
      _Pragma("GCC unroll 16") for (int i = 0; i < CIB; ++i) {                             \
        __m512i a = _mm512_set1_epi32((int)X[j * 16 + i]);                                 \
        _Pragma("GCC unroll 4") for (int k = 0; k < COB; ++k)                              \
            s[i][k] = _mm512_dpbf16_ps(s[i][k], (__m512bh)a, (__m512bh)b[k]);              \
      }                                                                                    \
    }                                                                                      \
    __m512 t = _mm512_setzero_ps();                                                        \
    for (int i = 0; i < CIB; ++i)                                                          \
      for (int k = 0; k < COB; ++k) t = _mm512_add_ps(t, s[i][k]);                         \
    return _mm512_reduce_add_ps(t);                                                        \
  }
TILE(tile_16x1, 16, 1)
TILE(tile_8x2, 8, 2)
TILE(tile_12x2, 12, 2)
TILE(tile_6x4, 6, 4)
TILE(tile_8x3, 8, 3)

int main(void) {
  const long n = 100000000;
  const int cores = omp_get_max_threads();
  double t = omp_get_wtime();
  float v = 0;
#pragma omp parallel reduction(+ : v)
  v += registers_bf16(n);
  t = omp_get_wtime() - t;
  printf("bf16 dot products, registers only, %d threads: %.1f G multiply-adds/s\n", cores,
         12.0 * 32 * n * cores / t / 1e9);
  t = omp_get_wtime();
#pragma omp parallel reduction(+ : v)
  v += registers_f32(n);
  t = omp_get_wtime() - t;
  printf("float32 AVX2 FMA, registers only, %d threads: %.1f G multiply-adds/s\n", cores,
         12.0 * 8 * n * cores / t / 1e9);
  struct { const char* name; float (*f)(long); int dots; } tiles[] = {
      {"16x1", tile_16x1, 16}, {"8x2", tile_8x2, 16}, {"12x2", tile_12x2, 24},
      {"6x4", tile_6x4, 24}, {"8x3", tile_8x3, 24}};
  for (int k = 0; k < 5; ++k) {
    t = omp_get_wtime();
    v += tiles[k].f(n / 2);
    t = omp_get_wtime() - t;
    printf("bf16 tile %s, broadcast from L1, one thread: %.2f dot products/ns (%.1f G "
           "multiply-adds/s on %d such cores)\n", tiles[k].name, tiles[k].dots * 0.5 * n / t / 1e9,
           tiles[k].dots * 0.5 * n / t / 1e9 * 32 * cores, cores);
  }
  return v == 12345.f;
}
