// Winograd F(2³, 3³) forward convolution in bf16 with AVX-512 BF16 dot products: 3³ kernel,
// stride 1, padding 1, activations NDHWC bf16, kernel DHWIO float32, float32 accumulation.
// `onednn_conv.cc` runs it instead of oneDNN's direct bf16 kernel where oneDNN would run its
// AVX-512 BF16 one (a CPU with avx512_bf16 and no AMX, e.g. a Zen 4; see there).
//
// Why: there oneDNN's direct kernels already run at the CPU's dot-product rate (one 512-bit
// `vdpbf16ps` a cycle a core, studies/dot_rate.c; docs/benchmark.md), and so do PyTorch's, so
// only fewer multiplications make the forward pass faster. As winograd_conv.cc (the float32 AVX2
// version, whose comments give the method): each 2x2x2 block of outputs comes from the 4x4x4 block
// of inputs around it, 64 products per channel pair instead of 216. Here the input transform (B^T
// d B, additions) runs in float32 on the bf16 inputs and is rounded to bf16 once; the kernel's
// transform (G g G^T) in float32, rounded to bf16 once per call; the 64 small GEMMs are
// `vdpbf16ps` over pairs of input channels into float32; the output transform (A^T m A) and the
// bias in float32, rounded to bf16 once, as the direct kernel's output is. The extra roundings
// leave it within bf16's tolerance of the float32 convolution (tests/ops/test_conv.py).
//
// Tiles go in blocks of kTiles so that a block's transformed inputs and products stay in cache
// between the three stages; blocks go to OpenMP threads. Needs even d, h, w (whole tiles), c and
// oc multiples of 16.
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

// a compiler that knows AVX-512 BF16 (GCC 10, clang 9 on): with an older one this file builds as a
// stub that reports no support, so the rest of the extension still builds
#if defined(__x86_64__) && ((defined(__clang__) && __clang_major__ >= 9) || \
                            (!defined(__clang__) && defined(__GNUC__) && __GNUC__ >= 10))
#define MSJAX_HAVE_AVX512BF16 1
#include <immintrin.h>
#endif

// onednn_conv.cc
void* MsjaxThreadBuffer(int slot, size_t bytes);
void MsjaxPadVolume(const void* x, void* xp, size_t bytes, int64_t n, int64_t d, int64_t h,
                    int64_t w, int64_t c);

bool MsjaxWinogradBf16Supported() {
#ifdef MSJAX_HAVE_AVX512BF16
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bf16");
#else
  return false;
#endif
}

#ifdef MSJAX_HAVE_AVX512BF16
#define MSJAX_BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16,avx2,fma")))

namespace {

constexpr int kTiles = 16;  // tiles (2x2x2 outputs each) per block

// bf16 (16 values) -> float32
MSJAX_BF16 inline __m512 Load16(const uint16_t* p) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(
      _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))), 16));
}

MSJAX_BF16 inline __m256i Round16(__m512 v) { return (__m256i)_mm512_cvtneps_pbh(v); }

// gr[0] a + gr[1] b + gr[2] d (a lambda would not carry the target attribute)
MSJAX_BF16 inline __m512 mix(const float* gr, __m512 a, __m512 b, __m512 d) {
  return _mm512_fmadd_ps(_mm512_set1_ps(gr[0]), a,
                         _mm512_fmadd_ps(_mm512_set1_ps(gr[1]), b,
                                         _mm512_mul_ps(_mm512_set1_ps(gr[2]), d)));
}

// kernel (3, 3, 3, c, oc) float32 -> u (64, c / 2, oc) as pairs of bf16 (input channel 2j in the
// low half, 2j + 1 in the high): G g G^T along each axis, G = [1 0 0; .5 .5 .5; .5 -.5 .5;
// 0 0 1], 16 output channels a vector. k: the kernel with its taps as given (see Forward)
MSJAX_BF16 void TransformWeights(const float* k, uint32_t* u, int64_t c, int64_t oc) {
  const float g[4][3] = {{1.f, 0.f, 0.f}, {.5f, .5f, .5f}, {.5f, -.5f, .5f}, {0.f, 0.f, 1.f}};
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t cp = 0; cp < c / 2; ++cp)
    for (int64_t o = 0; o < oc; o += 16) {
      __m512 t[2][64];
      for (int half = 0; half < 2; ++half) {
        const int64_t ci = 2 * cp + half;
        __m512 kk[27], t1[4][9], t2[16][3];
        for (int i = 0; i < 27; ++i) kk[i] = _mm512_loadu_ps(k + (i * c + ci) * oc + o);
        for (int a = 0; a < 4; ++a)
          for (int j = 0; j < 9; ++j) t1[a][j] = mix(g[a], kk[j], kk[9 + j], kk[18 + j]);
        for (int a = 0; a < 4; ++a)
          for (int b = 0; b < 4; ++b)
            for (int x = 0; x < 3; ++x)
              t2[a * 4 + b][x] = mix(g[b], t1[a][x], t1[a][3 + x], t1[a][6 + x]);
        for (int ab = 0; ab < 16; ++ab)
          for (int e = 0; e < 4; ++e)
            t[half][ab * 4 + e] = mix(g[e], t2[ab][0], t2[ab][1], t2[ab][2]);
      }
      for (int q = 0; q < 64; ++q) {
        const __m512i lo = _mm512_cvtepu16_epi32(Round16(t[0][q]));
        const __m512i hi = _mm512_cvtepu16_epi32(Round16(t[1][q]));
        _mm512_storeu_si512(u + (q * (c / 2) + cp) * oc + o,
                            _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
      }
    }
}

// B^T along one axis of four rows
MSJAX_BF16 inline void InputRow(__m512& d0, __m512& d1, __m512& d2, __m512& d3) {
  const __m512 v0 = _mm512_sub_ps(d0, d2), v1 = _mm512_add_ps(d1, d2);
  const __m512 v2 = _mm512_sub_ps(d2, d1), v3 = _mm512_sub_ps(d1, d3);
  d0 = v0;
  d1 = v1;
  d2 = v2;
  d3 = v3;
}

// m[q][t][o..] = v[q][t][:] . u[q][:][o..] for the 64 points q and the block's kTiles tiles, COB
// vectors of 16 output channels at a time, TB tiles per register block
template <int TB, int COB>
MSJAX_BF16 void BlockGemm(const uint32_t* v, const uint32_t* u, float* m, int64_t c, int64_t oc) {
  const int64_t pairs = c / 2;
  for (int q = 0; q < 64; ++q) {
    const uint32_t* vq = v + q * kTiles * pairs;
    const uint32_t* uq = u + q * pairs * oc;
    float* mq = m + q * kTiles * oc;
    for (int t = 0; t < kTiles; t += TB)
      for (int64_t o = 0; o < oc; o += 16 * COB) {
        __m512 acc[TB][COB];
        for (int r = 0; r < TB; ++r)
          for (int s = 0; s < COB; ++s) acc[r][s] = _mm512_setzero_ps();
        for (int64_t j = 0; j < pairs; ++j) {
          __m512i uv[COB];
          for (int s = 0; s < COB; ++s) uv[s] = _mm512_loadu_si512(uq + j * oc + o + 16 * s);
#pragma GCC unroll 16
          for (int r = 0; r < TB; ++r) {
            const __m512i a = _mm512_set1_epi32(static_cast<int>(vq[(t + r) * pairs + j]));
#pragma GCC unroll 2
            for (int s = 0; s < COB; ++s)
              acc[r][s] = _mm512_dpbf16_ps(acc[r][s], (__m512bh)a, (__m512bh)uv[s]);
          }
        }
        for (int r = 0; r < TB; ++r)
          for (int s = 0; s < COB; ++s)
            _mm512_storeu_ps(mq + (t + r) * oc + o + 16 * s, acc[r][s]);
      }
  }
}

// tile `id` of the volume (tiles of 2x2x2 outputs, td x th x tw per sample): its sample and
// corner in tiles
struct Tile {
  int64_t i, z, y, x;
  Tile(int64_t id, int64_t td, int64_t th, int64_t tw)
      : i(id / (tw * th * td)), z((id / (tw * th)) % td), y((id / tw) % th), x(id % tw) {}
};

// the block of tiles [t0, t0 + nt) of the padded input xp -> v (64, kTiles, c / 2): B^T d B along
// the three axes, 16 channels at a time, rounded to bf16 pairs; missing tiles of a last block are
// zeros, so that the GEMM reads defined values
MSJAX_BF16 void InputBlock(const uint16_t* xp, uint32_t* v, int64_t t0, int64_t nt, int64_t td,
                           int64_t th, int64_t tw, int64_t ph, int64_t pd, int64_t pw, int64_t c) {
  const int64_t pairs = c / 2;
  for (int64_t t = 0; t < kTiles; ++t) {
    if (t >= nt) {  // a last block's missing tiles: zeros, so the GEMM reads defined values
      for (int q = 0; q < 64; ++q) std::memset(v + (q * kTiles + t) * pairs, 0, 4 * pairs);
      continue;
    }
    const Tile at(t0 + t, td, th, tw);
    const uint16_t* base = xp + (((at.i * pd + 2 * at.z) * ph + 2 * at.y) * pw + 2 * at.x) * c;
    for (int64_t cc = 0; cc < c; cc += 16) {
      __m512 r[64];
      for (int a = 0; a < 4; ++a)
        for (int bb = 0; bb < 4; ++bb)
          for (int e = 0; e < 4; ++e)
            r[(a * 4 + bb) * 4 + e] = Load16(base + ((a * ph + bb) * pw + e) * c + cc);
      for (int a = 0; a < 4; ++a)  // along x
        for (int bb = 0; bb < 4; ++bb) {
          __m512* p = r + (a * 4 + bb) * 4;
          InputRow(p[0], p[1], p[2], p[3]);
        }
      for (int a = 0; a < 4; ++a)  // along y
        for (int e = 0; e < 4; ++e)
          InputRow(r[(a * 4 + 0) * 4 + e], r[(a * 4 + 1) * 4 + e], r[(a * 4 + 2) * 4 + e],
                   r[(a * 4 + 3) * 4 + e]);
      for (int bb = 0; bb < 4; ++bb)  // along z
        for (int e = 0; e < 4; ++e)
          InputRow(r[(0 * 4 + bb) * 4 + e], r[(1 * 4 + bb) * 4 + e], r[(2 * 4 + bb) * 4 + e],
                   r[(3 * 4 + bb) * 4 + e]);
      for (int q = 0; q < 64; ++q)  // 16 channels = 8 pairs, in order: (2j low, 2j + 1 high)
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(v + (q * kTiles + t) * pairs + cc / 2),
                            Round16(r[q]));
    }
  }
}

// products m (64, kTiles, oc) of the block's first nt tiles -> y: A^T m A along the three axes,
// A^T = [1 1 1 0; 0 1 -1 -1], plus the bias, rounded to bf16
MSJAX_BF16 void OutputBlock(const float* m, const float* bias, uint16_t* y, int64_t t0, int64_t nt,
                            int64_t td, int64_t th, int64_t tw, int64_t d, int64_t h, int64_t w_,
                            int64_t oc) {
  for (int64_t t = 0; t < nt; ++t) {
    const Tile at(t0 + t, td, th, tw);
    for (int64_t o = 0; o < oc; o += 16) {
      __m512 s1[16][2];  // along x: (z, y) rows of 4 -> 2
      for (int ab = 0; ab < 16; ++ab) {
        const float* mp = m + ((ab * 4) * kTiles + t) * oc + o;
        const __m512 m0 = _mm512_loadu_ps(mp), m1 = _mm512_loadu_ps(mp + kTiles * oc),
                     m2 = _mm512_loadu_ps(mp + 2 * kTiles * oc),
                     m3 = _mm512_loadu_ps(mp + 3 * kTiles * oc);
        s1[ab][0] = _mm512_add_ps(_mm512_add_ps(m0, m1), m2);
        s1[ab][1] = _mm512_sub_ps(_mm512_sub_ps(m1, m2), m3);
      }
      __m512 s2[4][2][2];  // along y
      for (int a = 0; a < 4; ++a)
        for (int e = 0; e < 2; ++e) {
          const __m512 r0 = s1[a * 4 + 0][e], r1 = s1[a * 4 + 1][e], r2 = s1[a * 4 + 2][e],
                       r3 = s1[a * 4 + 3][e];
          s2[a][0][e] = _mm512_add_ps(_mm512_add_ps(r0, r1), r2);
          s2[a][1][e] = _mm512_sub_ps(_mm512_sub_ps(r1, r2), r3);
        }
      const __m512 bv = bias != nullptr ? _mm512_loadu_ps(bias + o) : _mm512_setzero_ps();
      for (int bb = 0; bb < 2; ++bb)  // along z, into y
        for (int e = 0; e < 2; ++e) {
          const __m512 z0 = _mm512_add_ps(
              _mm512_add_ps(_mm512_add_ps(s2[0][bb][e], s2[1][bb][e]), s2[2][bb][e]), bv);
          const __m512 z1 = _mm512_add_ps(
              _mm512_sub_ps(_mm512_sub_ps(s2[1][bb][e], s2[2][bb][e]), s2[3][bb][e]), bv);
          uint16_t* y0 =
              y + (((at.i * d + 2 * at.z) * h + 2 * at.y + bb) * w_ + 2 * at.x + e) * oc + o;
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(y0), Round16(z0));
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(y0 + h * w_ * oc), Round16(z1));
        }
    }
  }
}

}  // namespace

// y = conv(x, w) + bias, x (n, d, h, w, c) and y (n, d, h, w, oc) bf16 as uint16, w (3, 3, 3, c,
// oc) float32, bias (oc) float32 or nullptr (zero). flipped: w is (3, 3, 3, oc, c) and its taps are
// taken mirrored on all three axes, its channels swapped: the input gradient's kernel (at stride 1
// the input gradient is the forward convolution of dy by it).
void MsjaxWinogradBf16Forward(const uint16_t* x, const float* w, const float* bias, uint16_t* y,
                              int64_t n, int64_t d, int64_t h, int64_t w_, int64_t c,
                              int64_t oc, bool flipped) {
  const int64_t pd = d + 2, ph = h + 2, pw = w_ + 2;
  const int64_t td = d / 2, th = h / 2, tw = w_ / 2, tiles = n * td * th * tw;
  const int64_t blocks = (tiles + kTiles - 1) / kTiles;
  // this thread's buffers: the zero-padded input, the transformed kernel, a flipped kernel
  auto* xp = static_cast<uint16_t*>(
      MsjaxThreadBuffer(4, sizeof(uint16_t) * n * pd * ph * pw * c));
  auto* u = static_cast<uint32_t*>(MsjaxThreadBuffer(5, sizeof(uint32_t) * 64 * (c / 2) * oc));
  const float* k = w;
  if (flipped) {  // k[t][ci][o] = w[26 - t][o][ci]
    auto* kf = static_cast<float*>(MsjaxThreadBuffer(6, sizeof(float) * 27 * c * oc));
    for (int64_t t = 0; t < 27; ++t)
      for (int64_t ci = 0; ci < c; ++ci)
        for (int64_t o = 0; o < oc; ++o) kf[(t * c + ci) * oc + o] = w[((26 - t) * oc + o) * c + ci];
    k = kf;
  }
  TransformWeights(k, u, c, oc);
  MsjaxPadVolume(x, xp, sizeof(uint16_t), n, d, h, w_, c);
  const int64_t pairs = c / 2;
#pragma omp parallel
  {
    // per thread: transformed inputs v (64, kTiles, c / 2) and products m (64, kTiles, oc)
    auto* v = static_cast<uint32_t*>(MsjaxThreadBuffer(7,
                                                       sizeof(uint32_t) * 64 * kTiles * pairs +
                                                           sizeof(float) * 64 * kTiles * oc));
    float* m = reinterpret_cast<float*>(v + 64 * kTiles * pairs);
#pragma omp for schedule(static)
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t t0 = b * kTiles, nt = std::min<int64_t>(kTiles, tiles - t0);
      InputBlock(xp, v, t0, nt, td, th, tw, ph, pd, pw, c);
      if (oc % 32 == 0)
        BlockGemm<8, 2>(v, u, m, c, oc);
      else
        BlockGemm<16, 1>(v, u, m, c, oc);
      OutputBlock(m, bias, y, t0, nt, td, th, tw, d, h, w_, oc);
    }
  }
}

#else
void MsjaxWinogradBf16Forward(const uint16_t*, const float*, const float*, uint16_t*, int64_t,
                              int64_t, int64_t, int64_t, int64_t, int64_t, bool) {}
#endif
