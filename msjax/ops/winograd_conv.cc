// Winograd F(2³, 3³) forward convolution: float32, 3³ kernel, stride 1, padding 1, activations
// NDHWC, kernel DHWIO, for CPUs with AVX2 + FMA. `onednn_conv.cc` runs it instead of oneDNN's
// direct kernel where oneDNN would run an AVX2 one (see there).
//
// Why: held to AVX2, oneDNN's direct forward (`brgconv:avx2`) already runs near the CPU's float32
// FMA rate, so only fewer multiplications make the forward pass faster. Winograd's minimal
// filtering (Lavin & Gray 2016, "Fast Algorithms for Convolutional Neural Networks") computes each
// 2x2x2 block of outputs from a 4x4x4 block of inputs with 64 multiplications per channel pair
// where the direct convolution takes 8 x 27 = 216: the input block and the kernel are each
// transformed (B^T d B and G g G^T along the three axes), multiplied point by point and summed
// over input channels (64 small GEMMs, one per point of the 4x4x4 transform domain), and the
// result transformed back (A^T m A). The transforms are additions (and halvings for the kernel,
// done once per call); F(2, 3)'s are small enough that float32 keeps the direct result's accuracy
// (relative error 2-6e-7 against XLA's convolution on the network's layer shapes; oneDNN's direct
// kernel 0.2-2.6e-6).
//
// Tiles are processed in blocks of kTiles so that a block's transformed inputs and products stay
// in cache between the three stages; blocks go to OpenMP threads.
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <new>

void* MsjaxThreadBuffer(int slot, size_t bytes);  // onednn_conv.cc

namespace {

constexpr int kTiles = 32;  // tiles (2x2x2 outputs each) per block: a multiple of 4

// one of this thread's reusable buffers (onednn_conv.cc's; this file's are slots 4-7), at least
// `floats` long, 64-byte aligned
float* Buffer(int slot, size_t floats) {
  return static_cast<float*>(MsjaxThreadBuffer(4 + slot, floats * sizeof(float)));
}

// kernel (3, 3, 3, c, oc) -> u (64, c, oc): G g G^T along each axis, G = [1 0 0; .5 .5 .5;
// .5 -.5 .5; 0 0 1]. flipped: w is (3, 3, 3, oc, c) and its taps are taken mirrored on all three
// axes, channels swapped (the kernel of an input gradient, see MsjaxWinogradForward)
void TransformWeights(const float* w, float* u, int64_t c, int64_t oc, bool flipped) {
  const float g[4][3] = {{1.f, 0.f, 0.f}, {.5f, .5f, .5f}, {.5f, -.5f, .5f}, {0.f, 0.f, 1.f}};
  const int64_t co = c * oc;
#pragma omp parallel for schedule(static)
  for (int64_t p = 0; p < co; ++p) {
    float k[27], t1[4][3][3], t2[4][4][3];
    const int64_t ci = p / oc, o = p % oc;
    for (int i = 0; i < 27; ++i)
      k[i] = flipped ? w[((26 - i) * oc + o) * c + ci] : w[i * co + p];
    for (int a = 0; a < 4; ++a)
      for (int y = 0; y < 3; ++y)
        for (int x = 0; x < 3; ++x)
          t1[a][y][x] = g[a][0] * k[(0 * 3 + y) * 3 + x] + g[a][1] * k[(1 * 3 + y) * 3 + x] +
                        g[a][2] * k[(2 * 3 + y) * 3 + x];
    for (int a = 0; a < 4; ++a)
      for (int b = 0; b < 4; ++b)
        for (int x = 0; x < 3; ++x)
          t2[a][b][x] = g[b][0] * t1[a][0][x] + g[b][1] * t1[a][1][x] + g[b][2] * t1[a][2][x];
    for (int a = 0; a < 4; ++a)
      for (int b = 0; b < 4; ++b)
        for (int e = 0; e < 4; ++e)
          u[((a * 4 + b) * 4 + e) * co + p] =
              g[e][0] * t2[a][b][0] + g[e][1] * t2[a][b][1] + g[e][2] * t2[a][b][2];
  }
}

// B^T along one axis of a 4-point row, for `c` channels (a multiple of 8): v0 = d0 - d2,
// v1 = d1 + d2, v2 = d2 - d1, v3 = d1 - d3, from rows p0..p3 into rows o0..o3
__attribute__((target("avx2,fma"))) inline void InputRow(const float* p0, const float* p1,
                                                         const float* p2, const float* p3,
                                                         float* o0, float* o1, float* o2,
                                                         float* o3, int64_t c) {
  for (int64_t j = 0; j < c; j += 8) {
    const __m256 d0 = _mm256_loadu_ps(p0 + j), d1 = _mm256_loadu_ps(p1 + j),
                 d2 = _mm256_loadu_ps(p2 + j), d3 = _mm256_loadu_ps(p3 + j);
    _mm256_storeu_ps(o0 + j, _mm256_sub_ps(d0, d2));
    _mm256_storeu_ps(o1 + j, _mm256_add_ps(d1, d2));
    _mm256_storeu_ps(o2 + j, _mm256_sub_ps(d2, d1));
    _mm256_storeu_ps(o3 + j, _mm256_sub_ps(d1, d3));
  }
}

// the 4x4x4 input block at (z0, y0, x0) (zero outside the volume: read from `zeros`, c zero
// floats) -> its transform, 64 points of c channels, written to v[point * stride + j]; p: room for
// 64 x c floats
__attribute__((target("avx2,fma"))) void InputTile(const float* x, int64_t d, int64_t h,
                                                   int64_t w, int64_t c, int64_t z0, int64_t y0,
                                                   int64_t x0, const float* zeros, float* p,
                                                   float* v, int64_t stride) {
  const bool inside = z0 >= 0 && y0 >= 0 && x0 >= 0 && z0 + 4 <= d && y0 + 4 <= h && x0 + 4 <= w;
  auto src = [&](int a, int b, int e) -> const float* {
    const int64_t z = z0 + a, y = y0 + b, xx = x0 + e;
    if (!inside && (z < 0 || z >= d || y < 0 || y >= h || xx < 0 || xx >= w)) return zeros;
    return x + ((z * h + y) * w + xx) * c;
  };
  auto at = [&](int a, int b, int e) { return p + ((a * 4 + b) * 4 + e) * c; };
  for (int a = 0; a < 4; ++a)  // along x, straight from the volume
    for (int b = 0; b < 4; ++b)
      InputRow(src(a, b, 0), src(a, b, 1), src(a, b, 2), src(a, b, 3), at(a, b, 0), at(a, b, 1),
               at(a, b, 2), at(a, b, 3), c);
  for (int a = 0; a < 4; ++a)
    for (int e = 0; e < 4; ++e)
      InputRow(at(a, 0, e), at(a, 1, e), at(a, 2, e), at(a, 3, e), at(a, 0, e), at(a, 1, e),
               at(a, 2, e), at(a, 3, e), c);
  // along z, into v
  auto out = [&](int a, int b, int e) { return v + ((a * 4 + b) * 4 + e) * stride; };
  for (int b = 0; b < 4; ++b)
    for (int e = 0; e < 4; ++e)
      InputRow(at(0, b, e), at(1, b, e), at(2, b, e), at(3, b, e), out(0, b, e), out(1, b, e),
               out(2, b, e), out(3, b, e), c);
}

// m[q][t][:] = v[q][t][:] @ u[q] for the 64 points q and kTiles tiles: (kTiles x c) x (c x oc),
// 4 tiles x 16 (or 8) output channels per register block
template <int kOut>
__attribute__((target("avx2,fma"))) void BlockGemm(const float* v, const float* u, float* m,
                                                   int64_t c, int64_t oc) {
  for (int q = 0; q < 64; ++q) {
    const float* vq = v + q * kTiles * c;
    const float* uq = u + q * c * oc;
    float* mq = m + q * kTiles * oc;
    for (int t = 0; t < kTiles; t += 4) {
      const float* v0 = vq + t * c;
      for (int64_t o = 0; o < oc; o += kOut) {
        __m256 acc[4][kOut / 8];
        for (int r = 0; r < 4; ++r)
          for (int s = 0; s < kOut / 8; ++s) acc[r][s] = _mm256_setzero_ps();
        for (int64_t j = 0; j < c; ++j) {
          __m256 uv[kOut / 8];
          for (int s = 0; s < kOut / 8; ++s) uv[s] = _mm256_loadu_ps(uq + j * oc + o + 8 * s);
          for (int r = 0; r < 4; ++r) {
            const __m256 b = _mm256_broadcast_ss(v0 + r * c + j);
            for (int s = 0; s < kOut / 8; ++s) acc[r][s] = _mm256_fmadd_ps(b, uv[s], acc[r][s]);
          }
        }
        for (int r = 0; r < 4; ++r)
          for (int s = 0; s < kOut / 8; ++s)
            _mm256_storeu_ps(mq + (t + r) * oc + o + 8 * s, acc[r][s]);
      }
    }
  }
}

// A^T along one axis, 4 points -> 2: y0 = m0 + m1 + m2, y1 = m1 - m2 - m3 (oc a multiple of 8)
__attribute__((target("avx2,fma"))) inline void OutputRow(const float* m0, const float* m1,
                                                          const float* m2, const float* m3,
                                                          float* y0, float* y1, int64_t oc) {
  for (int64_t j = 0; j < oc; j += 8) {
    const __m256 a = _mm256_loadu_ps(m0 + j), b = _mm256_loadu_ps(m1 + j),
                 c = _mm256_loadu_ps(m2 + j), d = _mm256_loadu_ps(m3 + j);
    _mm256_storeu_ps(y0 + j, _mm256_add_ps(_mm256_add_ps(a, b), c));
    _mm256_storeu_ps(y1 + j, _mm256_sub_ps(_mm256_sub_ps(b, c), d));
  }
}

// the 64 products of one tile (m[q * stride + j]) -> its 2x2x2 outputs (+ bias, if any) at
// (z0, y0, x0), those inside the volume; p: room for 48 x oc floats
__attribute__((target("avx2,fma"))) void OutputTile(const float* m, int64_t stride,
                                                    const float* bias, float* y, int64_t d,
                                                    int64_t h, int64_t w, int64_t oc, int64_t z0,
                                                    int64_t y0, int64_t x0, float* p) {
  float* s1 = p;            // [4][4][2][oc]
  float* s2 = p + 32 * oc;  // [4][2][2][oc]
  auto q = [&](int a, int b, int e) { return m + ((a * 4 + b) * 4 + e) * stride; };
  for (int a = 0; a < 4; ++a)
    for (int b = 0; b < 4; ++b)
      OutputRow(q(a, b, 0), q(a, b, 1), q(a, b, 2), q(a, b, 3), s1 + ((a * 4 + b) * 2) * oc,
                s1 + ((a * 4 + b) * 2 + 1) * oc, oc);
  auto r1 = [&](int a, int b, int e) { return s1 + ((a * 4 + b) * 2 + e) * oc; };
  for (int a = 0; a < 4; ++a)
    for (int e = 0; e < 2; ++e)
      OutputRow(r1(a, 0, e), r1(a, 1, e), r1(a, 2, e), r1(a, 3, e), s2 + ((a * 2 + 0) * 2 + e) * oc,
                s2 + ((a * 2 + 1) * 2 + e) * oc, oc);
  auto r2 = [&](int a, int b, int e) { return s2 + ((a * 2 + b) * 2 + e) * oc; };
  for (int b = 0; b < 2; ++b)
    for (int e = 0; e < 2; ++e) {
      const int64_t yy = y0 + b, xx = x0 + e;
      if (yy >= h || xx >= w) continue;
      float* out0 = y + ((z0 * h + yy) * w + xx) * oc;
      float* out1 = out0 + h * w * oc;
      const bool second = z0 + 1 < d;
      for (int64_t j = 0; j < oc; j += 8) {  // along z, + bias, into y
        const __m256 a = _mm256_loadu_ps(r2(0, b, e) + j), bb = _mm256_loadu_ps(r2(1, b, e) + j),
                     c = _mm256_loadu_ps(r2(2, b, e) + j), dd = _mm256_loadu_ps(r2(3, b, e) + j),
                     bi = bias ? _mm256_loadu_ps(bias + j) : _mm256_setzero_ps();
        _mm256_storeu_ps(out0 + j, _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a, bb), c), bi));
        if (second)
          _mm256_storeu_ps(out1 + j, _mm256_add_ps(_mm256_sub_ps(_mm256_sub_ps(bb, c), dd), bi));
      }
    }
}

// tile `id` of n x td x th x tw (x fastest) -> its sample and tile coordinates
struct Tile {
  int64_t i, a, b, e;
  Tile(int64_t id, int64_t td, int64_t th, int64_t tw)
      : i(id / tw / th / td), a(id / tw / th % td), b(id / tw % th), e(id % tw) {}
};

}  // namespace

// Whether this CPU can run MsjaxWinogradForward (AVX2 and FMA).
bool MsjaxWinogradSupported() {
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

// y (n, d, h, w, oc) = conv(x (n, d, h, w, c), w (3, 3, 3, c, oc)) + bias (nullptr: none); c and
// oc multiples of 8. flipped: w is a (3, 3, 3, oc, c) kernel used mirrored on its three axes with
// its channels swapped: then y is that kernel's input gradient for the output gradient x (at
// stride 1 the forward convolution of dy by the flipped kernel). Throws std::bad_alloc when a
// buffer cannot be had.
void MsjaxWinogradForward(const float* x, const float* wei, const float* bias, float* y,
                          int64_t n, int64_t d, int64_t h, int64_t w, int64_t c, int64_t oc,
                          bool flipped) {
  float* u = Buffer(0, 64 * c * oc);
  TransformWeights(wei, u, c, oc, flipped);
  const int64_t td = (d + 1) / 2, th = (h + 1) / 2, tw = (w + 1) / 2;
  const int64_t tiles = n * td * th * tw, blocks = (tiles + kTiles - 1) / kTiles;
  bool failed = false;
#pragma omp parallel
  {
    float *v = nullptr, *m = nullptr, *p = nullptr, *zeros = nullptr;
    try {
      v = Buffer(1, 64 * kTiles * c);
      m = Buffer(2, 64 * kTiles * oc);
      p = Buffer(3, 64 * std::max(c, oc) + c);  // a tile's work, then c zeros
      zeros = p + 64 * std::max(c, oc);
      std::memset(zeros, 0, sizeof(float) * c);
    } catch (const std::bad_alloc&) {  // this thread does none of the blocks
      v = m = p = zeros = nullptr;
#pragma omp atomic write
      failed = true;
    }
#pragma omp for schedule(static)
    for (int64_t blk = 0; blk < blocks; ++blk) {
      if (v == nullptr) continue;
      const int64_t first = blk * kTiles, count = std::min<int64_t>(kTiles, tiles - first);
      for (int64_t t = 0; t < kTiles; ++t) {
        if (t >= count) {  // a last, partial block: zero tiles, their products never read
          for (int q = 0; q < 64; ++q) std::memset(v + (q * kTiles + t) * c, 0, sizeof(float) * c);
          continue;
        }
        const Tile k(first + t, td, th, tw);
        InputTile(x + k.i * d * h * w * c, d, h, w, c, 2 * k.a - 1, 2 * k.b - 1, 2 * k.e - 1,
                  zeros, p, v + t * c, kTiles * c);
      }
      if (oc % 16 == 0)
        BlockGemm<16>(v, u, m, c, oc);
      else
        BlockGemm<8>(v, u, m, c, oc);
      for (int64_t t = 0; t < count; ++t) {
        const Tile k(first + t, td, th, tw);
        OutputTile(m + t * oc, kTiles * oc, bias, y + k.i * d * h * w * oc, d, h, w, oc, 2 * k.a,
                   2 * k.b, 2 * k.e, p);
      }
    }
  }
  if (failed) throw std::bad_alloc();
}
