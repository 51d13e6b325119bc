// msjax's own bf16 weight gradient of 3³ stride-1 convolutions, with AVX-512 BF16 dot products.
//
// oneDNN 3.2 runs the bf16 weight gradient on AVX-512 BF16 CPUs without AMX (a Zen 4) with its
// older `jit_bf16` kernel, at ~41 % of the CPU's bf16 dot-product rate (32³ 32->32, one 12-patch
// batch: 10.9 G multiply-adds in 56.6 ms on a Zen 4 whose two cores do 455-468 G a second with
// `vdpbf16ps` in registers): the largest single share of a bf16 training step there.
//
//   dw[kd, kh, kw, ci, co] = sum over n, z, y, x of
//                            xpad[n, z+kd, y+kh, x+kw, ci] * dy[n, z, y, x, co]
//
// `vdpbf16ps` multiplies pairs of bf16 values and adds both products to one float32 lane, so the
// sum runs over pairs of neighbouring output voxels along x, (x, x+1) with x even: dy is packed
// as such pairs (one 32-bit word per channel: low half the voxel at x, high half at x+1), and
// so is the zero-padded input, twice: pairs starting at even padded columns and pairs starting at
// odd ones, since a tap's offset (kd (h+2) + kh) (w+2) + kw between the flattened padded input
// and an output voxel is odd for some taps. Each step of the inner loop loads COB vectors of 16
// output channels of one dy pair, broadcasts the x pair of CIB input channels and does CIB x COB
// dot products into accumulators held in registers over a chunk of x-lines; one chunk of dy (in
// cache) serves all 27 taps. Accumulation is float32 throughout, as oneDNN's; each thread sums its
// chunks into its own buffer, the buffers are added in the end.
#include <algorithm>
#include <cstdint>
#include <cstring>

#include <omp.h>
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

void* MsjaxThreadBuffer(int slot, size_t bytes);  // onednn_conv.cc

bool MsjaxTapBf16Supported() {
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512bf16");
#else
  return false;
#endif
}

#if defined(__x86_64__) && defined(__GNUC__)
#define MSJAX_BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16,avx2,fma")))

namespace {

// out[j] = a[j] | b[j] << 16 for j < c (c a multiple of 8); a or b nullptr: zeros
MSJAX_BF16 inline void PackPair(const uint16_t* a, const uint16_t* b, uint32_t* out, int64_t c) {
  int64_t j = 0;
  for (; j + 16 <= c; j += 16) {
    const __m512i lo = a ? _mm512_cvtepu16_epi32(_mm256_loadu_si256(
                               reinterpret_cast<const __m256i*>(a + j)))
                         : _mm512_setzero_si512();
    const __m512i hi = b ? _mm512_cvtepu16_epi32(_mm256_loadu_si256(
                               reinterpret_cast<const __m256i*>(b + j)))
                         : _mm512_setzero_si512();
    _mm512_storeu_si512(out + j, _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
  }
  for (; j < c; ++j)
    out[j] = (a ? a[j] : 0u) | (static_cast<uint32_t>(b ? b[j] : 0u) << 16);
}

// The accumulators of CIB input channels x COB * 16 output channels of one tap, over the runs
// [r0, r1) of a chunk: xs is the packed input at this tap and the first input channel, run k's
// pairs starting at xs + run_pair[k] * c; dys the packed dy at run r0 and the first output
// channel; acc (c x oc, row-major) at the tile's corner.
template <int CIB, int COB>
MSJAX_BF16 void TapTile(const uint32_t* xs, int64_t c, const uint32_t* dys, int64_t oc,
                        const int64_t* run_pair, int64_t runs, int64_t half_w, float* acc) {
  __m512 s[CIB][COB];
#pragma GCC unroll 16
  for (int i = 0; i < CIB; ++i)
#pragma GCC unroll 4
    for (int k = 0; k < COB; ++k) s[i][k] = _mm512_loadu_ps(acc + i * oc + 16 * k);
  for (int64_t r = 0; r < runs; ++r) {
    const uint32_t* xr = xs + run_pair[r] * c;
    const uint32_t* dr = dys + r * half_w * oc;
    for (int64_t j = 0; j < half_w; ++j) {
      __m512i b[COB];
#pragma GCC unroll 4
      for (int k = 0; k < COB; ++k)
        b[k] = _mm512_loadu_si512(dr + j * oc + 16 * k);
#pragma GCC unroll 16
      for (int i = 0; i < CIB; ++i) {
        const __m512i a = _mm512_set1_epi32(static_cast<int>(xr[j * c + i]));
#pragma GCC unroll 4
        for (int k = 0; k < COB; ++k)
          s[i][k] = _mm512_dpbf16_ps(s[i][k], (__m512bh)a,
                                     (__m512bh)b[k]);
      }
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < CIB; ++i)
#pragma GCC unroll 4
    for (int k = 0; k < COB; ++k) _mm512_storeu_ps(acc + i * oc + 16 * k, s[i][k]);
}

// the bias gradient's share of a chunk: the sum of its dy pairs (a dot product with (1, 1))
MSJAX_BF16 void BiasTile(const uint32_t* dys, int64_t oc, int64_t pairs, float* acc) {
  const __m512i ones = _mm512_set1_epi32(0x3F803F80);  // bf16 1.0 in both halves
  for (int64_t k = 0; k < oc; k += 16) {
    __m512 s = _mm512_loadu_ps(acc + k);
    for (int64_t p = 0; p < pairs; ++p)
      s = _mm512_dpbf16_ps(s, (__m512bh)ones,
                           (__m512bh)_mm512_loadu_si512(dys + p * oc + k));
    _mm512_storeu_ps(acc + k, s);
  }
}

template <int CIB, int COB>
MSJAX_BF16 void AllTaps(const uint32_t* x_even, const uint32_t* x_odd, const uint32_t* dyc,
                        const int64_t* run_pair, int64_t runs, int64_t half_w, int64_t ph,
                        int64_t pw, int64_t c, int64_t oc, float* a) {
  for (int64_t t = 0; t < 27; ++t) {
    const int64_t kd = t / 9, kh = (t / 3) % 3, kw = t % 3;
    const int64_t o = (kd * ph + kh) * pw + kw;
    // an output pair starts at an even padded index b (w + 2 and x even), so b + o has o's parity
    const uint32_t* xs = (o % 2 == 0 ? x_even + (o / 2) * c : x_odd + ((o - 1) / 2) * c);
    for (int64_t ci = 0; ci < c; ci += CIB)
      for (int64_t co = 0; co < oc; co += 16 * COB)
        TapTile<CIB, COB>(xs + ci, c, dyc + co, oc, run_pair, runs, half_w,
                          a + t * c * oc + ci * oc + co);
  }
}

}  // namespace

// x (n, d, h, w, c) and dy (n, d, h, w, oc), bf16 as uint16; dw (3, 3, 3, c, oc) and db (oc),
// float32. Needs c % 8 == 0, oc % 16 == 0, w even (MsjaxTapBf16Eligible).
void MsjaxTapBf16Weights(const uint16_t* x, const uint16_t* dy, float* dw, float* db, int64_t n,
                         int64_t d, int64_t h, int64_t w, int64_t c, int64_t oc) {
  const int64_t pd = d + 2, ph = h + 2, pw = w + 2, half_pw = pw / 2, half_w = w / 2;
  const int64_t lines = n * pd * ph, x_pairs = lines * half_pw;  // the padded input's pairs
  const int64_t runs = n * d * h;                                // dy's x-lines
  const int64_t block = 27 * c * oc + oc;                        // a thread's accumulators
  const int threads = omp_get_max_threads();
  auto* x_even = static_cast<uint32_t*>(
      MsjaxThreadBuffer(2, sizeof(uint32_t) * 2 * (x_pairs + half_pw) * c));
  uint32_t* x_odd = x_even + (x_pairs + half_pw) * c;
  auto* dyp = static_cast<uint32_t*>(MsjaxThreadBuffer(
      3, sizeof(uint32_t) * runs * half_w * oc + sizeof(int64_t) * runs +
             sizeof(float) * threads * block));
  auto* run_pair = reinterpret_cast<int64_t*>(dyp + runs * half_w * oc);
  auto* acc = reinterpret_cast<float*>(run_pair + runs);
  std::memset(x_even + x_pairs * c, 0, sizeof(uint32_t) * half_pw * c);  // past the last line
  std::memset(x_odd + x_pairs * c, 0, sizeof(uint32_t) * half_pw * c);
#pragma omp parallel
  {
#pragma omp for schedule(static) nowait
    for (int64_t line = 0; line < lines; ++line) {  // padded line (i, z, y): w + 2 columns
      const int64_t i = line / (pd * ph), z = (line / ph) % pd, y = line % ph;
      const bool inside = z >= 1 && z <= d && y >= 1 && y <= h;
      const uint16_t* src = inside ? x + (((i * d + z - 1) * h + y - 1) * w) * c : nullptr;
      auto col = [&](int64_t k) {  // padded column k: x's column k - 1, zero at both ends
        return src != nullptr && k >= 1 && k <= w ? src + (k - 1) * c : nullptr;
      };
      uint32_t* ev = x_even + line * half_pw * c;
      uint32_t* od = x_odd + line * half_pw * c;
      for (int64_t j = 0; j < half_pw; ++j) {
        PackPair(col(2 * j), col(2 * j + 1), ev + j * c, c);
        PackPair(col(2 * j + 1), col(2 * j + 2), od + j * c, c);  // column w + 2: the next
      }                                                           // line's zero column
    }
#pragma omp for schedule(static) nowait
    for (int64_t r = 0; r < runs; ++r) {
      const int64_t i = r / (d * h), z = (r / h) % d, y = r % h;
      run_pair[r] = ((i * pd + z) * ph + y) * half_pw;  // output (z, y, 0)'s padded corner
      for (int64_t j = 0; j < half_w; ++j)
        PackPair(dy + (r * w + 2 * j) * oc, dy + (r * w + 2 * j + 1) * oc,
                 dyp + (r * half_w + j) * oc, oc);
    }
  }
  std::memset(acc, 0, sizeof(float) * threads * block);
  // a chunk of x-lines whose packed dy is ~64 kB, so that it stays in cache over the 27 taps
  const int64_t per_chunk = std::max<int64_t>(1, 16384 / (oc * half_w));
  const int64_t chunks = (runs + per_chunk - 1) / per_chunk;
#pragma omp parallel
  {
    float* a = acc + omp_get_thread_num() * block;
#pragma omp for schedule(static)
    for (int64_t ch = 0; ch < chunks; ++ch) {
      const int64_t r0 = ch * per_chunk, nr = std::min(per_chunk, runs - r0);
      const uint32_t* dyc = dyp + r0 * half_w * oc;
      const int64_t* rp = run_pair + r0;
      if (oc % 64 == 0)
        AllTaps<4, 4>(x_even, x_odd, dyc, rp, nr, half_w, ph, pw, c, oc, a);
      else if (oc % 32 == 0)
        AllTaps<8, 2>(x_even, x_odd, dyc, rp, nr, half_w, ph, pw, c, oc, a);
      else if (c % 16 == 0)
        AllTaps<16, 1>(x_even, x_odd, dyc, rp, nr, half_w, ph, pw, c, oc, a);
      else
        AllTaps<8, 1>(x_even, x_odd, dyc, rp, nr, half_w, ph, pw, c, oc, a);
      BiasTile(dyc, oc, nr * half_w, a + 27 * c * oc);
    }
  }
  for (int64_t j = 0; j < 27 * c * oc; ++j) {
    float v = 0.f;
    for (int t = 0; t < threads; ++t) v += acc[t * block + j];
    dw[j] = v;
  }
  for (int64_t j = 0; j < oc; ++j) {
    float v = 0.f;
    for (int t = 0; t < threads; ++t) v += acc[t * block + 27 * c * oc + j];
    db[j] = v;
  }
}

#else
void MsjaxTapBf16Weights(const uint16_t*, const uint16_t*, float*, float*, int64_t, int64_t,
                         int64_t, int64_t, int64_t, int64_t) {}
#endif
