// 3D convolution forward, backward-data and backward-weights through oneDNN, as three XLA FFI
// custom calls (CPU).
//
// Layouts are msjax's: activations NDHWC, kernels DHWIO (k, k, k, C_in, C_out), bias (C_out).
// Activations are float32 or bfloat16 (oneDNN accumulates bf16 in f32); kernel and bias are
// always the float32 parameters: the weight reorder into oneDNN's own layout converts the kernel
// to the activation type, and both gradients come back in float32, so no bf16 rounding touches
// the parameters or their gradients. The bias is added by the forward primitive and its gradient
// computed by the backward-weights primitive: no separate pass over the activations for either.
// Padding is k/2 on both sides (PyTorch-style; "same" at stride 1, exact halving at stride 2).
// Primitive descriptors are cached by shape and type; each calling thread keeps one scratchpad
// buffer, grown as needed and reused (concurrent calls run on different threads, so they never
// share one; a fresh several-MB buffer per call cost page faults and zeroing in every call: the
// bf16 weight gradients' scratchpads are up to 13 MB on AMX). `MsjaxConvImpl` reports the kernels
// oneDNN picked for a shape, so that Python can refuse oneDNN's slow reference implementation and
// fall back instead.
//
// One weight gradient is msjax's own: oneDNN 3.2 has no direct float32 backward-weights kernel for
// NDHWC on AVX2 (nor on AVX-512) and runs it as im2col + GEMM (`gemm:jit`), at 2-3x a forward's
// time. For 3³ stride-1 convolutions over a large enough volume `TapGemmWeights` computes it as
// 27 GEMMs instead, one per kernel tap, on the zero-padded volume (see there): 1.7-2.6x faster at
// 32³ on a Zen 4, AVX2 and AVX-512 alike, slower on small volumes (so only there).
//
// One forward is msjax's own too: where oneDNN would run an AVX2 kernel in float32 (an AVX2-only
// CPU, or one held to AVX2), 3³ stride-1 convolutions of 8k channels run as Winograd F(2³, 3³)
// (winograd_conv.cc, see `UseWinograd`), and so do their input gradients: oneDNN's direct kernel
// already runs near the FMA rate there, and Winograd needs 64 multiplications per 8 outputs and
// channel pair instead of 216. In bf16 the same holds where oneDNN runs its AVX-512 BF16 kernels
// (a Zen 4): there the forward and input gradient of 3³ stride-1 convolutions of 16k channels run
// as msjax's bf16 Winograd (winograd_bf16.cc, see `UseWinogradBf16`).
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <omp.h>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

// winograd_conv.cc
bool MsjaxWinogradSupported();
void MsjaxWinogradForward(const float* x, const float* w, const float* bias, float* y, int64_t n,
                          int64_t d, int64_t h, int64_t w_, int64_t c, int64_t oc, bool flipped);
// winograd_bf16.cc
bool MsjaxWinogradBf16Supported();
void MsjaxWinogradBf16Forward(const uint16_t* x, const float* w, const float* bias, uint16_t* y,
                              int64_t n, int64_t d, int64_t h, int64_t w_, int64_t c,
                              int64_t oc, bool flipped);

namespace ffi = xla::ffi;
using dnnl::memory;
using tag = dnnl::memory::format_tag;
using dt = dnnl::memory::data_type;

namespace {

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

struct Conv {
  memory::desc src, wei_user, bias, dst;
  dnnl::convolution_forward::primitive_desc fwd_pd;
  dnnl::convolution_backward_data::primitive_desc bwd_data_pd;
  dnnl::convolution_backward_weights::primitive_desc bwd_weights_pd;
  dnnl::convolution_forward fwd;
  dnnl::convolution_backward_data bwd_data;
  dnnl::convolution_backward_weights bwd_weights;
  bool bwd_weights_zero_scratch = false;  // its kernel is jit_bf16 (see BackwardWeights)
  bool tap_gemm = false;                  // the weight gradient is TapGemmWeights'
  bool winograd = false;                  // the forward is MsjaxWinogradForward
  bool winograd_data = false;             // and so is the input gradient (see BackwardData)
  bool winograd_bf16 = false;             // the forward is MsjaxWinogradBf16Forward
  bool winograd_bf16_data = false;        // and so is the input gradient
};

// The smallest volume per sample (voxels) at which TapGemmWeights replaces oneDNN's GEMM-based
// weight gradient: measured per 12-patch batch on a Zen 4 (ms, oneDNN -> taps, AVX2 / AVX-512):
// 32³ 16->16 89 -> 41 / 81 -> 46, 32->16 175 -> 71 / 133 -> 86; 16³ 32->32 25 -> 21 / 21 -> 18
// (even); 8³ and below the taps lose (11 -> 13, 6 -> 23 ms: few rows, a padded volume 2-3x the
// real one). MSJAX_TAP_GEMM=0 turns the taps off, =1 uses them for every float32 3³ stride-1
// convolution, whatever oneDNN would pick (tests, timings).
constexpr int64_t kTapGemmMinVoxels = 20 * 20 * 20;

// An override from the environment: '0' -> 0 (off), '1' -> 1 (on), else -1 (msjax decides)
int Forced(const char* name) {
  const char* env = std::getenv(name);
  return env != nullptr && (env[0] == '0' || env[0] == '1') ? env[0] - '0' : -1;
}

bool UseTapGemm(int64_t d, int64_t h, int64_t w, int64_t k, int64_t s, dt type,
                const char* onednn_impl) {
  if (type != dt::f32 || k != 3 || s != 1) return false;
  if (const int forced = Forced("MSJAX_TAP_GEMM"); forced >= 0) return forced == 1;
  return std::string(onednn_impl).find("gemm") != std::string::npos &&
         d * h * w >= kTapGemmMinVoxels;
}

// The forward pass is msjax's Winograd F(2³, 3³) (winograd_conv.cc) for float32 3³ stride-1
// convolutions whose channel counts are multiples of 8, where oneDNN would run an AVX2 kernel
// (AVX2-only CPUs, or any CPU held to AVX2): there oneDNN's direct kernel already runs near the
// float32 FMA rate and only fewer multiplications are faster. The network's layers, one 12-patch
// batch held to AVX2 on a Zen 4 (median ms, oneDNN -> Winograd): 32³ 16->16 33.3 -> 23.3,
// 32->16 59.0 -> 41.1, 32->32 129.0 -> 73.4; 16³ 32->32 12.5 -> 7.2, 64->64 47.9 -> 22.9; 8³
// 64->64 6.0 -> 3.4, 128->128 23.6 -> 12.3; 4³ 128->128 2.8 -> 4.6, 256->256 10.0 -> 21.5 (few
// tiles, and the kernel's transform as large as the volume), so only from 8³ voxels up. Not where
// oneDNN has AVX-512 or AMX kernels: a Zen 4's 512-bit FMAs are two 256-bit halves, and there
// Winograd in AVX2 still won (32³ 32->32 120 -> 89 ms; 16->16 even), but on CPUs with two
// full-width AVX-512 FMA units oneDNN's direct kernel has twice the rate (not measured).
// The input gradient of the same convolutions is Winograd too (BackwardData: at stride 1 it is
// the forward convolution of dy by the flipped kernel), dy -> dx, one 12-patch
// batch held to AVX2, ms: 32³ 16->16 34.2 -> 21.9, 32->16 82.2 -> 44.3; 16³ 32->32
// 16.1 -> 7.7; 8³ 64->64 8.4 -> 3.4. MSJAX_WINOGRAD=0 turns both off, =1 uses them for every
// eligible shape whatever oneDNN would pick or the volume (tests, timings).
constexpr int64_t kWinogradMinVoxels = 8 * 8 * 8;

bool UseWinograd(int64_t d, int64_t h, int64_t w, int64_t c, int64_t oc, int64_t k, int64_t s,
                 dt type, const char* onednn_impl) {
  if (type != dt::f32 || k != 3 || s != 1 || c <= 0 || oc <= 0 || c % 8 != 0 || oc % 8 != 0)
    return false;
  if (!MsjaxWinogradSupported()) return false;
  if (const int forced = Forced("MSJAX_WINOGRAD"); forced >= 0) return forced == 1;
  const std::string impl(onednn_impl);
  return impl.find("avx2") != std::string::npos && impl.find("avx512") == std::string::npos &&
         d * h * w >= kWinogradMinVoxels;
}

// In bf16, 3³ stride-1 convolutions of 16k channels over an even-sized volume of 8³ or more run
// as msjax's bf16 Winograd F(2³, 3³) (winograd_bf16.cc), forward and input gradient, where oneDNN
// would run its AVX-512 BF16 direct kernel (a CPU with avx512_bf16 and no AMX, e.g. a Zen 4):
// there oneDNN's and PyTorch's direct kernels both run at the CPU's dot-product rate, so only
// fewer multiplications are faster. One 12-patch batch on a Zen 4, ms, oneDNN -> Winograd: see
// docs/benchmark.md. MSJAX_WINOGRAD_BF16=0 turns it off, =1 uses it for every eligible shape.
constexpr int64_t kWinogradBf16MinVoxels = 8 * 8 * 8;

bool UseWinogradBf16(int64_t d, int64_t h, int64_t w, int64_t c, int64_t oc, int64_t k,
                     int64_t s, dt type, const char* onednn_impl) {
  if (type != dt::bf16 || k != 3 || s != 1 || c % 16 != 0 || oc % 16 != 0 || d % 2 != 0 ||
      h % 2 != 0 || w % 2 != 0)
    return false;
  if (!MsjaxWinogradBf16Supported()) return false;
  if (const int forced = Forced("MSJAX_WINOGRAD_BF16"); forced >= 0) return forced == 1;
  const std::string impl(onednn_impl);
  return impl.find("avx512_core_bf16") != std::string::npos &&
         impl.find("amx") == std::string::npos && d * h * w >= kWinogradBf16MinVoxels;
}

// n, c, d, h, w (input), oc, k, stride, activation type -> the primitives of that convolution
std::shared_ptr<Conv> GetConv(int64_t n, int64_t c, int64_t d, int64_t h, int64_t w, int64_t oc,
                              int64_t k, int64_t s, dt type) {
  static std::mutex mu;
  static std::map<std::vector<int64_t>, std::shared_ptr<Conv>> cache;
  std::vector<int64_t> key{n, c, d, h, w, oc, k, s, static_cast<int64_t>(type)};
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  const int64_t p = k / 2;
  auto out = [&](int64_t i) { return (i + 2 * p - k) / s + 1; };
  memory::dims strides{s, s, s}, pad{p, p, p};
  auto conv = std::make_shared<Conv>();
  conv->src = memory::desc({n, c, d, h, w}, type, tag::ndhwc);
  conv->dst = memory::desc({n, oc, out(d), out(h), out(w)}, type, tag::ndhwc);
  conv->wei_user = memory::desc({oc, c, k, k, k}, dt::f32, tag::dhwio);
  conv->bias = memory::desc({oc}, dt::f32, tag::a);
  memory::desc wei_any({oc, c, k, k, k}, type, tag::any);
  memory::desc diff_wei_any({oc, c, k, k, k}, dt::f32, tag::any);
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  auto& eng = Engine();
  conv->fwd_pd = dnnl::convolution_forward::primitive_desc(
      eng, dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct, conv->src,
      wei_any, conv->bias, conv->dst, strides, pad, pad, attr);
  conv->bwd_data_pd = dnnl::convolution_backward_data::primitive_desc(
      eng, dnnl::algorithm::convolution_direct, conv->src, wei_any, conv->dst, strides, pad, pad,
      conv->fwd_pd, attr);
  conv->bwd_weights_pd = dnnl::convolution_backward_weights::primitive_desc(
      eng, dnnl::algorithm::convolution_direct, conv->src, diff_wei_any, conv->bias, conv->dst,
      strides, pad, pad, conv->fwd_pd, attr);
  conv->fwd = dnnl::convolution_forward(conv->fwd_pd);
  conv->bwd_data = dnnl::convolution_backward_data(conv->bwd_data_pd);
  conv->bwd_weights = dnnl::convolution_backward_weights(conv->bwd_weights_pd);
  conv->bwd_weights_zero_scratch =
      std::string(conv->bwd_weights_pd.impl_info_str()).rfind("jit_bf16", 0) == 0;
  conv->tap_gemm = UseTapGemm(d, h, w, k, s, type, conv->bwd_weights_pd.impl_info_str());
  conv->winograd = UseWinograd(d, h, w, c, oc, k, s, type, conv->fwd_pd.impl_info_str());
  conv->winograd_data =
      UseWinograd(d, h, w, oc, c, k, s, type, conv->bwd_data_pd.impl_info_str());
  conv->winograd_bf16 = UseWinogradBf16(d, h, w, c, oc, k, s, type, conv->fwd_pd.impl_info_str());
  conv->winograd_bf16_data =
      UseWinogradBf16(d, h, w, oc, c, k, s, type, conv->bwd_data_pd.impl_info_str());
  cache.emplace(key, conv);
  return conv;
}

// one of this thread's reusable buffers (0: scratchpads, 1: reordered weights, 2 and 3: the
// padded volumes of TapGemmWeights, 4-7: winograd_conv.cc's or winograd_bf16.cc's, never both in
// one call), at least `bytes` long,
// 64-byte aligned
void* ThreadBuffer(int slot, size_t bytes) {
  struct Buffer {
    void* data = nullptr;
    size_t size = 0;
    ~Buffer() { std::free(data); }
  };
  thread_local Buffer buffers[8];
  Buffer& b = buffers[slot];
  const size_t want = (bytes + 63) / 64 * 64;
  if (want > b.size) {
    std::free(b.data);
    b.data = std::aligned_alloc(64, want);
    b.size = b.data == nullptr ? 0 : want;
    if (b.data == nullptr) throw std::bad_alloc();
  }
  return b.data;
}

memory Scratchpad(const memory::desc& desc) {
  return memory(desc, Engine(), ThreadBuffer(0, desc.get_size()));
}

// weights in the user layout -> the layout and type a primitive wants (a reorder only when they
// differ; a reorder also converts f32 to bf16)
memory WeightsFor(const memory::desc& want, const memory& user, dnnl::stream& strm) {
  if (want == user.get_desc()) return user;
  memory m(want, Engine(), ThreadBuffer(1, want.get_size()));
  dnnl::reorder(user, m).execute(strm, const_cast<memory&>(user), m);
  return m;
}

bool ToDnnl(ffi::DataType t, dt* out) {
  if (t == ffi::DataType::F32) { *out = dt::f32; return true; }
  if (t == ffi::DataType::BF16) { *out = dt::bf16; return true; }
  return false;
}

// dims of the input (NDHWC) and kernel (DHWIO) -> n, d, h, w, c, oc, k; the activation type
ffi::Error CheckShapes(ffi::Span<const int64_t> xd, ffi::Span<const int64_t> wd,
                       ffi::DataType x_type, int64_t* dims, dt* type) {
  if (xd.size() != 5 || wd.size() != 5)
    return ffi::Error::InvalidArgument("msjax_conv3d: expected NDHWC input and DHWIO kernel");
  if (wd[0] != wd[1] || wd[0] != wd[2] || wd[3] != xd[4])
    return ffi::Error::InvalidArgument("msjax_conv3d: kernel shape does not match the input");
  if (!ToDnnl(x_type, type))
    return ffi::Error::InvalidArgument("msjax_conv3d: activations must be float32 or bfloat16");
  for (int i = 0; i < 5; ++i) dims[i] = xd[i];
  dims[5] = wd[4];
  dims[6] = wd[0];
  return ffi::Error::Success();
}

ffi::Error SameType(const ffi::AnyBuffer& a, ffi::Result<ffi::AnyBuffer>& b) {
  if (a.element_type() != b->element_type())
    return ffi::Error::InvalidArgument("msjax_conv3d: output type differs from the input's");
  return ffi::Error::Success();
}

ffi::Error Forward(ffi::AnyBuffer x, ffi::Buffer<ffi::F32> w, ffi::Buffer<ffi::F32> b,
                   ffi::Result<ffi::AnyBuffer> y, int64_t stride) {
  int64_t d[7];
  dt type;
  if (auto e = CheckShapes(x.dimensions(), w.dimensions(), x.element_type(), d, &type);
      e.failure())
    return e;
  if (auto e = SameType(x, y); e.failure()) return e;
  try {
    auto conv = GetConv(d[0], d[4], d[1], d[2], d[3], d[5], d[6], stride, type);
    if (conv->winograd) {
      MsjaxWinogradForward(static_cast<const float*>(x.untyped_data()), w.typed_data(),
                           b.typed_data(), static_cast<float*>(y->untyped_data()), d[0], d[1],
                           d[2], d[3], d[4], d[5], /*flipped=*/false);
      return ffi::Error::Success();
    }
    if (conv->winograd_bf16) {
      MsjaxWinogradBf16Forward(static_cast<const uint16_t*>(x.untyped_data()), w.typed_data(),
                               b.typed_data(), static_cast<uint16_t*>(y->untyped_data()), d[0],
                               d[1], d[2], d[3], d[4], d[5], /*flipped=*/false);
      return ffi::Error::Success();
    }
    dnnl::stream strm(Engine());
    memory src(conv->src, Engine(), x.untyped_data());
    memory wei_user(conv->wei_user, Engine(), w.typed_data());
    memory bias(conv->bias, Engine(), b.typed_data());
    memory dst(conv->dst, Engine(), y->untyped_data());
    memory wei = WeightsFor(conv->fwd_pd.weights_desc(), wei_user, strm);
    memory scratch = Scratchpad(conv->fwd_pd.scratchpad_desc());
    conv->fwd.execute(strm, {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, wei}, {DNNL_ARG_BIAS, bias},
                             {DNNL_ARG_DST, dst}, {DNNL_ARG_SCRATCHPAD, scratch}});
    strm.wait();
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("oneDNN forward: ") + e.what());
  } catch (const std::bad_alloc&) {
    return ffi::Error::Internal("convolution forward: out of memory for its buffers");
  }
  return ffi::Error::Success();
}

// Backward is two calls, so that XLA drops the one nobody reads: the input gradient of the first
// convolution (the image needs none) and of layers below the first trained one; the weight
// gradient of frozen layers.

// w, dy -> dx (the input gradient); the input's shape is the result's
ffi::Error BackwardData(ffi::Buffer<ffi::F32> w, ffi::AnyBuffer dy,
                        ffi::Result<ffi::AnyBuffer> dx, int64_t stride) {
  int64_t d[7];
  dt type;
  if (auto e = CheckShapes(dx->dimensions(), w.dimensions(), dx->element_type(), d, &type);
      e.failure())
    return e;
  if (dy.element_type() != dx->element_type())
    return ffi::Error::InvalidArgument("msjax_conv3d: gradient type differs from the input's");
  try {
    auto conv = GetConv(d[0], d[4], d[1], d[2], d[3], d[5], d[6], stride, type);
    if (conv->winograd_data) {
      // at stride 1 the input gradient is the forward convolution of dy by the kernel flipped
      // along all three axes with its channels swapped (w'[t][o][c] = w[26 - t][c][o], taken so
      // by the kernel's own transform), without a bias
      MsjaxWinogradForward(static_cast<const float*>(dy.untyped_data()), w.typed_data(),
                           /*bias=*/nullptr, static_cast<float*>(dx->untyped_data()), d[0], d[1],
                           d[2], d[3], d[5], d[4], /*flipped=*/true);
      return ffi::Error::Success();
    }
    if (conv->winograd_bf16_data) {  // the same, in bf16
      MsjaxWinogradBf16Forward(static_cast<const uint16_t*>(dy.untyped_data()), w.typed_data(),
                               /*bias=*/nullptr, static_cast<uint16_t*>(dx->untyped_data()), d[0],
                               d[1], d[2], d[3], d[5], d[4], /*flipped=*/true);
      return ffi::Error::Success();
    }
    dnnl::stream strm(Engine());
    memory diff_dst(conv->dst, Engine(), dy.untyped_data());
    memory wei_user(conv->wei_user, Engine(), w.typed_data());
    memory diff_src(conv->src, Engine(), dx->untyped_data());
    memory wei = WeightsFor(conv->bwd_data_pd.weights_desc(), wei_user, strm);
    memory scratch = Scratchpad(conv->bwd_data_pd.scratchpad_desc());
    conv->bwd_data.execute(strm, {{DNNL_ARG_DIFF_DST, diff_dst}, {DNNL_ARG_WEIGHTS, wei},
                                  {DNNL_ARG_DIFF_SRC, diff_src}, {DNNL_ARG_SCRATCHPAD, scratch}});
    strm.wait();
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("oneDNN backward data: ") + e.what());
  } catch (const std::bad_alloc&) {
    return ffi::Error::Internal("convolution backward data: out of memory for its buffers");
  }
  return ffi::Error::Success();
}

// x, dy -> (dw, db): the parameter gradients, float32; the kernel's shape is dw's
// x (n, d, h, w, c) of `bytes`-byte values -> xp (n, d + 2, h + 2, w + 2, c), zero-padded by one
// voxel on every side: the padded volumes of TapGemmWeights and of winograd_bf16.cc
void PadVolume(const void* x, void* xp, size_t bytes, int64_t n, int64_t d, int64_t h, int64_t w,
               int64_t c) {
  const int64_t pd = d + 2, ph = h + 2, pw = w + 2, row = bytes * c;  // one voxel's bytes
  const auto* src = static_cast<const char*>(x);
  auto* dst = static_cast<char*>(xp);
#pragma omp parallel for collapse(3) schedule(static)
  for (int64_t i = 0; i < n; ++i)
    for (int64_t z = 0; z < pd; ++z)
      for (int64_t y = 0; y < ph; ++y) {
        char* line = dst + ((i * pd + z) * ph + y) * pw * row;
        if (z == 0 || z == pd - 1 || y == 0 || y == ph - 1) {
          std::memset(line, 0, pw * row);
        } else {
          std::memset(line, 0, row);
          std::memcpy(line + row, src + ((i * d + z - 1) * h + y - 1) * w * row, w * row);
          std::memset(line + (pw - 1) * row, 0, row);
        }
      }
}

// The weight and bias gradients of a 3³ stride-1 convolution with padding 1, float32, NDHWC:
//   dw[kd, kh, kw, ci, co] = sum over n, z, y, x of
//                            xpad[n, z+kd, y+kh, x+kw, ci] * dy[n, z, y, x, co].
// With x zero-padded to (d+2, h+2, w+2) and dy written onto the same padded grid (zeros past its
// end in each dimension), a tap is a constant offset o = (kd (h+2) + kh) (w+2) + kw between the
// rows of the two flattened volumes, so its gradient is one GEMM over all rows at once:
// xpad[o:o+K]^T dypad[0:K] (c x oc). A row of dy past a sample's end is zero, so rows never mix
// samples. The rows are cut into chunks; each thread runs the 27 GEMMs of its chunks (oneDNN's
// sgemm, single-threaded inside the parallel region) into its own accumulator: one chunk of dy
// serves all 27 taps while it is in cache, which is what oneDNN's im2col + GEMM does not do.
void TapGemmWeights(const float* x, const float* dy, float* dw, float* db, int64_t n, int64_t d,
                    int64_t h, int64_t w, int64_t c, int64_t oc) {
  const int64_t pd = d + 2, ph = h + 2, pw = w + 2, rows = n * pd * ph * pw;
  const int64_t taps = 27, block = c * oc;
  const int threads = omp_get_max_threads();
  float* xp = static_cast<float*>(ThreadBuffer(2, sizeof(float) * rows * c));
  float* dyp = static_cast<float*>(
      ThreadBuffer(3, sizeof(float) * (rows * oc + threads * (taps * block + oc))));
  float* acc = dyp + rows * oc;  // per thread: 27 c x oc, then oc for the bias
  PadVolume(x, xp, sizeof(float), n, d, h, w, c);
#pragma omp parallel for collapse(3) schedule(static)
  for (int64_t i = 0; i < n; ++i)
    for (int64_t z = 0; z < pd; ++z)
      for (int64_t y = 0; y < ph; ++y) {
        float* dr = dyp + ((i * pd + z) * ph + y) * pw * oc;
        if (z < d && y < h) {
          std::memcpy(dr, dy + ((i * d + z) * h + y) * w * oc, sizeof(float) * w * oc);
          std::memset(dr + w * oc, 0, sizeof(float) * 2 * oc);
        } else {
          std::memset(dr, 0, sizeof(float) * pw * oc);
        }
      }
  const int64_t last = (2 * ph + 2) * pw + 2;  // the largest tap offset
  const int64_t k_rows = rows - last, chunk = 2048, chunks = (k_rows + chunk - 1) / chunk;
  std::memset(acc, 0, sizeof(float) * threads * (taps * block + oc));
  std::atomic<int> failed{dnnl_success};  // any thread's sgemm error
#pragma omp parallel
  {
    float* a = acc + omp_get_thread_num() * (taps * block + oc);
#pragma omp for schedule(static)
    for (int64_t ch = 0; ch < chunks; ++ch) {
      const int64_t q0 = ch * chunk, r = std::min(chunk, k_rows - q0);
      const float* dyc = dyp + q0 * oc;
      for (int64_t kd = 0; kd < 3; ++kd)
        for (int64_t kh = 0; kh < 3; ++kh)
          for (int64_t kw = 0; kw < 3; ++kw) {
            const int64_t o = (kd * ph + kh) * pw + kw, t = (kd * 3 + kh) * 3 + kw;
            dnnl_status_t st = dnnl_sgemm('T', 'N', c, oc, r, 1.f, xp + (q0 + o) * c, c, dyc, oc,
                                          1.f, a + t * block, oc);
            if (st != dnnl_success) failed.store(st);
          }
      for (int64_t row = 0; row < r; ++row)  // the bias gradient: padded rows are zero
        for (int64_t j = 0; j < oc; ++j) a[taps * block + j] += dyc[row * oc + j];
    }
  }
  if (failed.load() != dnnl_success)
    throw dnnl::error(static_cast<dnnl_status_t>(failed.load()), "sgemm of a weight-gradient tap");
  for (int64_t j = 0; j < taps * block; ++j) {
    float v = 0.f;
    for (int t = 0; t < threads; ++t) v += acc[t * (taps * block + oc) + j];
    dw[j] = v;
  }
  for (int64_t j = 0; j < oc; ++j) {
    float v = 0.f;
    for (int t = 0; t < threads; ++t) v += acc[t * (taps * block + oc) + taps * block + j];
    db[j] = v;
  }
}

ffi::Error BackwardWeights(ffi::AnyBuffer x, ffi::AnyBuffer dy,
                           ffi::Result<ffi::Buffer<ffi::F32>> dw,
                           ffi::Result<ffi::Buffer<ffi::F32>> db, int64_t stride) {
  int64_t d[7];
  dt type;
  if (auto e = CheckShapes(x.dimensions(), dw->dimensions(), x.element_type(), d, &type);
      e.failure())
    return e;
  if (dy.element_type() != x.element_type())
    return ffi::Error::InvalidArgument("msjax_conv3d: gradient type differs from the input's");
  try {
    auto conv = GetConv(d[0], d[4], d[1], d[2], d[3], d[5], d[6], stride, type);
    if (conv->tap_gemm) {
      TapGemmWeights(static_cast<const float*>(x.untyped_data()),
                     static_cast<const float*>(dy.untyped_data()), dw->typed_data(),
                     db->typed_data(), d[0], d[1], d[2], d[3], d[4], d[5]);
      return ffi::Error::Success();
    }
    dnnl::stream strm(Engine());
    memory src(conv->src, Engine(), x.untyped_data());
    memory diff_dst(conv->dst, Engine(), dy.untyped_data());
    memory dw_user(conv->wei_user, Engine(), dw->typed_data());
    memory dw_mem = conv->bwd_weights_pd.diff_weights_desc() == conv->wei_user
                        ? dw_user
                        : memory(conv->bwd_weights_pd.diff_weights_desc(), Engine(),
                                 ThreadBuffer(1, conv->bwd_weights_pd.diff_weights_desc()
                                                     .get_size()));
    memory db_mem(conv->bias, Engine(), db->typed_data());
    memory scratch = Scratchpad(conv->bwd_weights_pd.scratchpad_desc());
    // oneDNN 3.2's jit_bf16 backward-weights kernel can read scratchpad it has not written (seen
    // at a 2-voxel extent, which Python keeps off the bf16 kernels: onednn.known_wrong). Zeroing
    // its scratchpad (a few kB) keeps any such read finite; the other kernels' (the AMX ones'
    // are MBs) are used as they are.
    if (conv->bwd_weights_zero_scratch)
      std::memset(scratch.get_data_handle(), 0, conv->bwd_weights_pd.scratchpad_desc().get_size());
    conv->bwd_weights.execute(strm, {{DNNL_ARG_SRC, src}, {DNNL_ARG_DIFF_DST, diff_dst},
                                     {DNNL_ARG_DIFF_WEIGHTS, dw_mem},
                                     {DNNL_ARG_DIFF_BIAS, db_mem},
                                     {DNNL_ARG_SCRATCHPAD, scratch}});
    if (dw_mem != dw_user) dnnl::reorder(dw_mem, dw_user).execute(strm, dw_mem, dw_user);
    strm.wait();
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("oneDNN backward weights: ") + e.what());
  }
  return ffi::Error::Success();
}

}  // namespace

void* MsjaxThreadBuffer(int slot, size_t bytes) { return ThreadBuffer(slot, bytes); }
void MsjaxPadVolume(const void* x, void* xp, size_t bytes, int64_t n, int64_t d, int64_t h,
                    int64_t w, int64_t c) {
  PadVolume(x, xp, bytes, n, d, h, w, c);
}

// The kernels oneDNN picks for one convolution, "forward|backward-data|backward-weights", into
// `out` (NUL-terminated). bf16 = 0: float32, 1: bfloat16. Returns 0, or -1 when oneDNN has no
// implementation at all (the message is in `out`).
extern "C" int MsjaxConvImpl(int64_t n, int64_t c, int64_t d, int64_t h, int64_t w, int64_t oc,
                             int64_t k, int64_t s, int bf16, char* out, int64_t len) {
  std::string text;
  int rc = 0;
  try {
    auto conv = GetConv(n, c, d, h, w, oc, k, s, bf16 ? dt::bf16 : dt::f32);
    // oneDNN's kernel, or msjax's own in its place: "msjax:<ours>(<oneDNN's>)"
    auto named = [](bool ours, const char* name, const char* onednn) {
      return ours ? std::string("msjax:") + name + "(" + onednn + ")" : std::string(onednn);
    };
    text = named(conv->winograd || conv->winograd_bf16,
                 conv->winograd ? "winograd" : "winograd_bf16", conv->fwd_pd.impl_info_str()) +
           "|" +
           named(conv->winograd_data || conv->winograd_bf16_data,
                 conv->winograd_data ? "winograd" : "winograd_bf16",
                 conv->bwd_data_pd.impl_info_str()) +
           "|" +
           named(conv->tap_gemm, "tap_gemm", conv->bwd_weights_pd.impl_info_str());
  } catch (const dnnl::error& e) {
    text = e.what();
    rc = -1;
  }
  std::strncpy(out, text.c_str(), static_cast<size_t>(len - 1));
  out[len - 1] = '\0';
  return rc;
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(MsjaxConv3dForward, Forward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<int64_t>("stride"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(MsjaxConv3dBackwardData, BackwardData,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<int64_t>("stride"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(MsjaxConv3dBackwardWeights, BackwardWeights,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("stride"));
