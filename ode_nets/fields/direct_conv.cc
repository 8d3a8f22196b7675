// 3x3 'SAME' cross-correlation (stride 1, zero padding 1; eq 72 of Ruseckas 2019) computed directly on XLA's
// channels-first buffers, exposed as three XLA FFI handlers on the CPU: forward, backward-data (input gradient)
// and backward-weights (kernel gradient). Images (B, C, H, W), kernels (O, C, 3, 3), float32.
//
// Why not a library: oneDNN's CPU kernels vectorise over channels, in blocks of 8 (AVX2) or 16 (AVX-512), so the
// 10 channels of the MNIST model fill 39 % of the AVX2 lanes (docs/performance.md). Here the vectors run along
// the image width instead: each output row is 28 pixels = 4 vectors of 8 or 2 of 16 (87.5 % of the lanes useful),
// every kernel entry is broadcast, and a block of output channels x row vectors stays in registers while the loop
// runs over input channels and the 9 taps. The vector `vec` is the GCC vector type of kLanes floats: 16 where the
// compiler targets AVX-512, else 8 (compiled on first use with -march=native by ode_nets/fields/direct_conv.py).
// Images are split over OpenMP threads; each thread pads its image into a zero-bordered scratch copy, so no tap
// needs a bounds check.

#include <omp.h>
#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <new>
#include <string>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

#ifndef ODE_NETS_LANES  // -DODE_NETS_LANES=8 forces 8 on an AVX-512 CPU (ODE_NETS_DIRECT_LANES=8, direct_conv.py)
#ifdef __AVX512F__
#define ODE_NETS_LANES 16
#else
#define ODE_NETS_LANES 8
#endif
#endif
static_assert(ODE_NETS_LANES == 8 || ODE_NETS_LANES == 16, "ODE_NETS_LANES must be 8 or 16");
constexpr int kLanes = ODE_NETS_LANES;  // floats per vector
typedef float vec __attribute__((vector_size(4 * ODE_NETS_LANES)));
inline vec load(const float* p) { vec v; std::memcpy(&v, p, sizeof v); return v; }
inline void store(float* p, vec v) { std::memcpy(p, &v, sizeof v); }
// A broadcast, spelled out lane by lane: GCC turns this into one broadcast load, but vec{} + s into an add of
// zero and a register broadcast (on the vector unit's shuffle port), and a loop into one masked load per lane.
#if ODE_NETS_LANES == 16
inline vec splat(float s) { return vec{s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s}; }
#else
inline vec splat(float s) { return vec{s, s, s, s, s, s, s, s}; }
#endif

// The first n (1 <= n <= kLanes) floats at p, the other lanes zero, and the store of only the first n lanes of v: a
// row's tail (28 = 16 + 12 pixels) by masked vector loads and stores where the CPU has them, never touching memory
// past the row; a memcpy of a run-time length here was a libc call per row, ~10 % of a call's time (perf).
#if ODE_NETS_LANES == 16 && defined(__AVX512F__)
inline vec load_first(const float* p, int n) { return (vec)_mm512_maskz_loadu_ps((__mmask16)((1u << n) - 1), p); }
inline void store_first(float* p, vec v, int n) { _mm512_mask_storeu_ps(p, (__mmask16)((1u << n) - 1), (__m512)v); }
#elif ODE_NETS_LANES == 8 && defined(__AVX2__)
inline __m256i first_lanes(int n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
inline vec load_first(const float* p, int n) { return (vec)_mm256_maskload_ps(p, first_lanes(n)); }
inline void store_first(float* p, vec v, int n) { _mm256_maskstore_ps(p, first_lanes(n), (__m256)v); }
#else
inline vec load_first(const float* p, int n) {
  vec v = splat(0.f);
  for (int i = 0; i < n; ++i) v[i] = p[i];
  return v;
}
inline void store_first(float* p, vec v, int n) {
  for (int i = 0; i < n; ++i) p[i] = v[i];
}
#endif

// dst[0 .. whole vectors) = src[0 .. n) followed by zeros up to the next whole vector.
inline void copy_row(float* dst, const float* src, int64_t n) {
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) store(dst + i, load(src + i));
  if (i < n) store(dst + i, load_first(src + i, static_cast<int>(n - i)));
}

constexpr int kOutBlock = 5;  // output channels per register block (with kVecBlock: 10 accumulators)
constexpr int kWeightBlock = kLanes == 16 ? 5 : 4;  // at most this many output channels per kernel-gradient block
constexpr int kVecBlock = 2;  // row vectors of kLanes pixels per register block

// A zeroed scratch buffer of floats aligned to a cache line, so that the loads of whole vectors at the start of a
// padded row (whose length is a whole number of vectors) never straddle two lines.
class AlignedFloats {
 public:
  explicit AlignedFloats(size_t n)
      : size_((n * sizeof(float) + 63) / 64 * 64), data_(static_cast<float*>(std::aligned_alloc(64, size_))) {
    if (data_ == nullptr) throw std::bad_alloc();
    std::memset(data_, 0, size_);
  }
  ~AlignedFloats() { std::free(data_); }
  AlignedFloats(const AlignedFloats&) = delete;
  AlignedFloats& operator=(const AlignedFloats&) = delete;
  float* data() const { return data_; }

 private:
  size_t size_;
  float* data_;
};

// Sizes of one call and of the padded per-image scratch rows.
struct Geometry {
  int64_t batch, in, out, height, width;
  int vectors() const { return static_cast<int>((width + kLanes - 1) / kLanes); }  // vectors per row
  int padded_width() const { return (vectors() + 1) * kLanes; }  // room for the taps dx = 0, 1, 2 of the last vector
  int64_t image(int64_t channels) const { return channels * height * width; }
};

// x (C, H, W) -> xp (C, H + 2, padded_width) with x[c][h][w] at xp[c][h + 1][w + 1]. Only ever writes zeros to the
// border (rows 0 and H + 1, column 0, the columns past the width), so a scratch zeroed once when it is allocated
// (AlignedFloats) holds each image zero-bordered without clearing it per image.
void pad_image(const float* x, int64_t channels, const Geometry& g, float* xp) {
  const int pw = g.padded_width();
  for (int64_t c = 0; c < channels; ++c)
    for (int64_t h = 0; h < g.height; ++h)
      copy_row(xp + (c * (g.height + 2) + h + 1) * pw + 1, x + (c * g.height + h) * g.width, g.width);
}

// Output channels o0 .. o0 + OB - 1, row h, vectors j0 .. j0 + NV - 1 of y = k * x for one padded image.
template <int OB, int NV>
void forward_block(const float* xp, const float* k, float* y, const Geometry& g, int64_t o0, int64_t h, int j0) {
  const int pw = g.padded_width();
  vec acc[OB][NV];
  for (int ob = 0; ob < OB; ++ob)
    for (int v = 0; v < NV; ++v) acc[ob][v] = splat(0.f);
  for (int64_t c = 0; c < g.in; ++c)
    for (int dy = 0; dy < 3; ++dy) {
      const float* row = xp + (c * (g.height + 2) + h + dy) * pw + j0 * kLanes;
      for (int dx = 0; dx < 3; ++dx) {
        vec xv[NV];
        for (int v = 0; v < NV; ++v) xv[v] = load(row + v * kLanes + dx);
        for (int ob = 0; ob < OB; ++ob) {
          const vec kv = splat(k[((o0 + ob) * g.in + c) * 9 + dy * 3 + dx]);
          for (int v = 0; v < NV; ++v) acc[ob][v] += kv * xv[v];
        }
      }
    }
  for (int ob = 0; ob < OB; ++ob)
    for (int v = 0; v < NV; ++v) {
      const int64_t w = (j0 + v) * kLanes;
      float* dst = y + ((o0 + ob) * g.height + h) * g.width + w;
      if (w + kLanes <= g.width) store(dst, acc[ob][v]);
      else store_first(dst, acc[ob][v], static_cast<int>(g.width - w));
    }
}

template <int OB>
void forward_channels(const float* xp, const float* k, float* y, const Geometry& g, int64_t o0) {
  for (int64_t h = 0; h < g.height; ++h)
    for (int j0 = 0; j0 < g.vectors(); j0 += kVecBlock) {
      if (g.vectors() - j0 >= kVecBlock) forward_block<OB, kVecBlock>(xp, k, y, g, o0, h, j0);
      else forward_block<OB, 1>(xp, k, y, g, o0, h, j0);
    }
}

// yn (O, H, W) = k (O, C, 3, 3) * one padded image xp.
void forward_image(const float* xp, const float* k, float* yn, const Geometry& g) {
  int64_t o0 = 0;
  for (; o0 + kOutBlock <= g.out; o0 += kOutBlock) forward_channels<kOutBlock>(xp, k, yn, g, o0);
  for (; o0 + 2 <= g.out; o0 += 2) forward_channels<2>(xp, k, yn, g, o0);
  for (; o0 < g.out; ++o0) forward_channels<1>(xp, k, yn, g, o0);
}

// y (B, O, H, W) = k (O, C, 3, 3) * x (B, C, H, W).
void forward(const float* x, const float* k, float* y, const Geometry& g) {
#pragma omp parallel
  {
    AlignedFloats xp(g.in * (g.height + 2) * g.padded_width());
#pragma omp for schedule(static)
    for (int64_t n = 0; n < g.batch; ++n) {
      pad_image(x + n * g.image(g.in), g.in, g, xp.data());
      forward_image(xp.data(), k, y + n * g.image(g.out), g);
    }
  }
}

// The kernel of the transposed cross-correlation: kt[c][o][2 - dy][2 - dx] = k[o][c][dy][dx].
std::vector<float> transposed(const float* k, int64_t out, int64_t in) {
  std::vector<float> kt(out * in * 9);
  for (int64_t o = 0; o < out; ++o)
    for (int64_t c = 0; c < in; ++c)
      for (int t = 0; t < 9; ++t) kt[(c * out + o) * 9 + 8 - t] = k[(o * in + c) * 9 + t];
  return kt;
}

// Sum of the kLanes lanes in double.
double lane_sum(vec v) {
  float lanes[kLanes];
  store(lanes, v);
  double sum = 0.0;
  for (float lane : lanes) sum += lane;
  return sum;
}

typedef double vecd __attribute__((vector_size(8 * ODE_NETS_LANES)));

// sums[0 .. kLanes) += the lanes of v, in double: the kernel gradient's per-lane partial sums, reduced across lanes
// once per call (lane_sums) instead of once per image, which at 16 lanes cost about as much as the products.
inline void add_lanes(double* sums, vec v) {
  vecd total;
  std::memcpy(&total, sums, sizeof total);
  total += __builtin_convertvector(v, vecd);
  std::memcpy(sums, &total, sizeof total);
}

// out[i] += the sum of lanes[i * kLanes .. (i + 1) * kLanes) for i < n.
void lane_sums(const std::vector<double>& lanes, size_t n, double* out) {
  for (size_t i = 0; i < n; ++i)
    for (int l = 0; l < kLanes; ++l) out[i] += lanes[i * kLanes + l];
}

// dk[o][c][dy][dx][:] += per lane, the sum over h, w of g[o][h][w] xp[c][h + dy][w + dx] for o0 .. o0 + OB - 1
// (one image; dk holds kLanes partial sums per kernel entry). gp holds g's rows zero-padded to whole vectors, so
// the pixels past the width add nothing.
template <int OB>
void weights_block(const float* xp, const float* gp, double* dk, const Geometry& g, int64_t o0, int64_t c, int dy) {
  const int pw = g.padded_width(), gw = g.vectors() * kLanes;
  vec acc[OB][3];
  for (int ob = 0; ob < OB; ++ob)
    for (int dx = 0; dx < 3; ++dx) acc[ob][dx] = splat(0.f);
  for (int64_t h = 0; h < g.height; ++h) {
    const float* row = xp + (c * (g.height + 2) + h + dy) * pw;
    for (int j = 0; j < g.vectors(); ++j) {
      const vec x0 = load(row + j * kLanes), x1 = load(row + j * kLanes + 1), x2 = load(row + j * kLanes + 2);
      for (int ob = 0; ob < OB; ++ob) {
        const vec gv = load(gp + ((o0 + ob) * g.height + h) * gw + j * kLanes);
        acc[ob][0] += gv * x0;
        acc[ob][1] += gv * x1;
        acc[ob][2] += gv * x2;
      }
    }
  }
  for (int ob = 0; ob < OB; ++ob)
    for (int dx = 0; dx < 3; ++dx) add_lanes(dk + (((o0 + ob) * g.in + c) * 9 + dy * 3 + dx) * kLanes, acc[ob][dx]);
}

// local (O, C, 3, 3, kLanes) += the kernel gradient of one image, per lane: xp its padded input, gn (O, H, W) its
// output cotangent, gp scratch for gn's rows zero-padded to whole vectors (so the pixels past the width add nothing).
void weights_image(const float* xp, const float* gn, float* gp, double* local, const Geometry& g) {
  const int gw = g.vectors() * kLanes;
  for (int64_t r = 0; r < g.out * g.height; ++r) copy_row(gp + r * gw, gn + r * g.width, g.width);
  // Output channels in the fewest blocks of at most kWeightBlock (3 kWeightBlock accumulators: 12 of the 16 AVX2
  // registers, 15 of the 32 AVX-512 ones), of nearly equal sizes (10 = 4 + 3 + 3 or 5 + 5): a 1-channel block would
  // load three x vectors for three products (measured: 4 + 4 + 1 + 1 is 1.3x slower than 4 + 4 + 2; 5 + 5 about 5 %
  // faster than 4 + 4 + 2 at 16 lanes). The block is the outer loop, so its cotangent rows (5 x 28 x 32 floats) stay
  // in L1 while the loop runs over the input channels and rows dy.
  const int64_t blocks = (g.out + kWeightBlock - 1) / kWeightBlock;
  int64_t o0 = 0;
  for (int64_t i = 0; i < blocks; ++i) {
    const int ob = static_cast<int>(g.out / blocks + (i < g.out % blocks ? 1 : 0));
    for (int64_t c = 0; c < g.in; ++c)
      for (int dy = 0; dy < 3; ++dy) {
        if (ob == 5) weights_block<5>(xp, gp, local, g, o0, c, dy);
        else if (ob == 4) weights_block<4>(xp, gp, local, g, o0, c, dy);
        else if (ob == 3) weights_block<3>(xp, gp, local, g, o0, c, dy);
        else if (ob == 2) weights_block<2>(xp, gp, local, g, o0, c, dy);
        else weights_block<1>(xp, gp, local, g, o0, c, dy);
      }
    o0 += ob;
  }
}

// Per-thread scratch: padded input and cotangent images, padded cotangent rows, double partial sums (the kernel
// gradient's per lane).
struct Scratch {
  AlignedFloats xp, ap, gp;
  std::vector<double> dk, db;
  double dgamma = 0.0;
  explicit Scratch(const Geometry& g)
      : xp(g.in * (g.height + 2) * g.padded_width()), ap(g.out * (g.height + 2) * g.padded_width()),
        gp(g.out * g.height * g.vectors() * kLanes), dk(g.out * g.in * 9 * kLanes, 0.0), db(g.out, 0.0) {}
};

// dk (O, C, 3, 3) = sum over images and pixels of g (B, O, H, W) times the shifted x (B, C, H, W); the images'
// partial sums are added in double precision, per thread and then across threads.
void backward_weights(const float* x, const float* gr, float* dk, const Geometry& g) {
  std::vector<double> total(g.out * g.in * 9, 0.0);
#pragma omp parallel
  {
    Scratch s(g);
#pragma omp for schedule(static)
    for (int64_t n = 0; n < g.batch; ++n) {
      pad_image(x + n * g.image(g.in), g.in, g, s.xp.data());
      weights_image(s.xp.data(), gr + n * g.image(g.out), s.gp.data(), s.dk.data(), g);
    }
#pragma omp critical
    lane_sums(s.dk, total.size(), total.data());
  }
  for (size_t i = 0; i < total.size(); ++i) dk[i] = static_cast<float>(total[i]);
}

// image, or where the call writes its output over this input (in_place), the image copied to scratch first.
const float* own_image(const float* image, int64_t size, bool in_place, float* scratch) {
  if (!in_place) return image;
  std::memcpy(scratch, image, sizeof(float) * size);
  return scratch;
}

// The cubic field's epilogue on one image (eq 75 with eq 110, in the scaled parameters; C == O), with f (C, H, W)
// holding k * x: the field f += b_c - gamma x^3, or with kStep one forward-Euler step (eq 109) of `scale` layers,
// f = x + scale (f + b_c - gamma x^3), x being the image the convolution read.
template <bool kStep>
void cubic_epilogue(const float* x, const float* b, float gamma, float scale, float* f, const Geometry& g) {
  const int64_t pixels = g.height * g.width, whole = pixels / kLanes * kLanes;
  const vec gv = splat(gamma), sv = splat(scale);
  for (int64_t c = 0; c < g.out; ++c) {
    const float* xc = x + c * pixels;
    float* fc = f + c * pixels;
    const vec bv = splat(b[c]);
    for (int64_t i = 0; i < whole; i += kLanes) {
      const vec xv = load(xc + i), fv = load(fc + i) + bv - gv * xv * xv * xv;
      store(fc + i, kStep ? xv + sv * fv : fv);
    }
    for (int64_t i = whole; i < pixels; ++i) {
      const float fv = fc[i] + b[c] - gamma * xc[i] * xc[i] * xc[i];
      fc[i] = kStep ? xc[i] + scale * fv : fv;
    }
  }
}

// The cubic field's backward epilogue on one image, at cotangent a (C, H, W), with dx holding k^T * a:
// dx -= 3 gamma x^2 a (eq 76), or with kStep (the Euler step's reverse mode, eq 112) dx = a + scale (dx - 3 gamma
// x^2 a); db_c += sum a_c (eq 78), dgamma -= sum a x^3 (eq 71), the sums per lane in float and then in double
// (unscaled: the caller scales the totals).
template <bool kStep>
void cubic_backward_epilogue(const float* x, const float* a, float gamma, float scale, float* dx, Scratch& s,
                             const Geometry& g) {
  const int64_t pixels = g.height * g.width, whole = pixels / kLanes * kLanes;
  const vec three_gamma = splat(3.f * gamma), sv = splat(scale);
  vec cubes = splat(0.f);
  for (int64_t c = 0; c < g.out; ++c) {
    const float *xc = x + c * pixels, *ac = a + c * pixels;
    float* dc = dx + c * pixels;
    vec bias = splat(0.f);
    for (int64_t i = 0; i < whole; i += kLanes) {
      const vec xv = load(xc + i), av = load(ac + i), xa = xv * av;
      const vec dv = load(dc + i) - three_gamma * xv * xa;
      store(dc + i, kStep ? av + sv * dv : dv);
      bias += av;
      cubes += xa * xv * xv;
    }
    double tail_bias = 0.0, tail_cubes = 0.0;
    for (int64_t i = whole; i < pixels; ++i) {
      const float dv = dc[i] - 3.f * gamma * xc[i] * xc[i] * ac[i];
      dc[i] = kStep ? ac[i] + scale * dv : dv;
      tail_bias += ac[i];
      tail_cubes += static_cast<double>(ac[i]) * xc[i] * xc[i] * xc[i];
    }
    s.db[c] += lane_sum(bias) + tail_bias;
    s.dgamma -= tail_cubes;
  }
  s.dgamma -= lane_sum(cubes);
}

// f = k * x + b - gamma x^3 (B, C, H, W): the cubic field of eq 75 times dt, in one pass per image; with kStep the
// forward-Euler step f = x + scale (k * x + b - gamma x^3) instead (eq 109; scale = the step over the layer's dt).
template <bool kStep>
void cubic_forward(const float* x, const float* k, const float* b, float gamma, float scale, float* f,
                   const Geometry& g) {
#pragma omp parallel
  {
    AlignedFloats xp(g.in * (g.height + 2) * g.padded_width());
#pragma omp for schedule(static)
    for (int64_t n = 0; n < g.batch; ++n) {
      const float* xn = x + n * g.image(g.in);
      float* fn = f + n * g.image(g.out);
      pad_image(xn, g.in, g, xp.data());
      forward_image(xp.data(), k, fn, g);
      cubic_epilogue<kStep>(xn, b, gamma, scale, fn, g);
    }
  }
}

// The reverse mode of cubic_forward at cotangent a (B, C, H, W), per image while it is in cache:
// dx = k^T * a - 3 gamma x^2 a (eq 76), dk = sum a (x) shifted x (eq 77), db = sum a (eq 78),
// dgamma = -sum a x^3 (eq 71); sums over images in double precision. With kStep, that of the Euler step (eq 112):
// dx = a + scale (k^T * a - 3 gamma x^2 a) and the three sums times scale.
// dx may be a itself (the step's reverse mode is called with input_output_aliases {a: dx}, so that XLA need not
// copy the adjoint state, 4 MB a layer at batch 128): each cotangent image is then copied to per-thread scratch
// before its dx is written, an in-cache copy.
template <bool kStep>
void cubic_backward(const float* x, const float* a, const float* k, float gamma, float scale, float* dx, float* dk,
                    float* db, float* dgamma, const Geometry& g) {
  const bool in_place = a == dx;
  const std::vector<float> kt = transposed(k, g.out, g.in);
  const Geometry gt{g.batch, g.out, g.in, g.height, g.width};
  const size_t kernel = g.out * g.in * 9;
  std::vector<double> total(kernel + g.out + 1, 0.0);
#pragma omp parallel
  {
    Scratch s(g);
    AlignedFloats copy(g.image(g.out));
#pragma omp for schedule(static)
    for (int64_t n = 0; n < g.batch; ++n) {
      const float* xn = x + n * g.image(g.in);
      const float* an = own_image(a + n * g.image(g.out), g.image(g.out), in_place, copy.data());
      float* dxn = dx + n * g.image(g.in);
      pad_image(an, g.out, g, s.ap.data());
      forward_image(s.ap.data(), kt.data(), dxn, gt);
      cubic_backward_epilogue<kStep>(xn, an, gamma, scale, dxn, s, g);
      pad_image(xn, g.in, g, s.xp.data());
      weights_image(s.xp.data(), an, s.gp.data(), s.dk.data(), g);
    }
#pragma omp critical
    {
      lane_sums(s.dk, kernel, total.data());
      for (size_t i = 0; i < s.db.size(); ++i) total[kernel + i] += s.db[i];
      total.back() += s.dgamma;
    }
  }
  const double factor = kStep ? scale : 1.0;
  for (size_t i = 0; i < kernel; ++i) dk[i] = static_cast<float>(factor * total[i]);
  for (int64_t c = 0; c < g.out; ++c) db[c] = static_cast<float>(factor * total[kernel + c]);
  *dgamma = static_cast<float>(factor * total.back());
}

ffi::Error bad(const char* what) { return ffi::Error::InvalidArgument(std::string("direct_conv: ") + what); }

// (B, C, H, W) image and (O, C, 3, 3) kernel -> Geometry, or why not.
ffi::ErrorOr<Geometry> geometry(ffi::Span<const int64_t> image, ffi::Span<const int64_t> kernel) {
  if (image.size() != 4 || kernel.size() != 4 || kernel[1] != image[1] || kernel[2] != 3 || kernel[3] != 3)
    return ffi::Unexpected<ffi::Error>(bad("expected a (B, C, H, W) image and an (O, C, 3, 3) kernel"));
  return Geometry{image[0], image[1], kernel[0], image[2], image[3]};
}

// y = k * x: x (B, C, H, W), k (O, C, 3, 3), y (B, O, H, W).
ffi::Error Forward(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> k, ffi::ResultBuffer<ffi::F32> y) {
  auto g = geometry(x.dimensions(), k.dimensions());
  if (g.has_error()) return g.error();
  forward(x.typed_data(), k.typed_data(), y->typed_data(), *g);
  return ffi::Error::Success();
}

// dx = k^T * g (input gradient, the cross-correlation with the flipped, transposed kernel):
// g (B, O, H, W), k (O, C, 3, 3), dx (B, C, H, W).
ffi::Error BackwardData(ffi::Buffer<ffi::F32> gr, ffi::Buffer<ffi::F32> k, ffi::ResultBuffer<ffi::F32> dx) {
  auto g = geometry(dx->dimensions(), k.dimensions());
  if (g.has_error()) return g.error();
  auto dims = gr.dimensions();
  if (dims.size() != 4 || dims[1] != g->out) return bad("g must be (B, O, H, W)");
  const std::vector<float> kt = transposed(k.typed_data(), g->out, g->in);
  forward(gr.typed_data(), kt.data(), dx->typed_data(), Geometry{g->batch, g->out, g->in, g->height, g->width});
  return ffi::Error::Success();
}

// dk = sum over pixels of g times the shifted x (kernel gradient): x (B, C, H, W), g (B, O, H, W), dk (O, C, 3, 3).
ffi::Error BackwardWeights(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> gr, ffi::ResultBuffer<ffi::F32> dk) {
  auto g = geometry(x.dimensions(), dk->dimensions());
  if (g.has_error()) return g.error();
  backward_weights(x.typed_data(), gr.typed_data(), dk->typed_data(), *g);
  return ffi::Error::Success();
}

// Checks shared by the cubic handlers: a (C, C, 3, 3) kernel; `count` elements, where a (C) bias (`bias`) or a
// cotangent of x's shape is wanted; scalar gamma (and scale).
ffi::ErrorOr<Geometry> cubic_geometry(ffi::Span<const int64_t> image, ffi::Span<const int64_t> kernel, size_t count,
                                      bool bias, std::initializer_list<size_t> scalars) {
  auto g = geometry(image, kernel);
  if (g.has_error()) return g;
  bool scalar = true;
  for (size_t n : scalars) scalar = scalar && n == 1;
  const int64_t expected = bias ? g->out : g->batch * g->image(g->in);
  if (g->out != g->in || static_cast<int64_t>(count) != expected || !scalar)
    return ffi::Unexpected<ffi::Error>(bad("the cubic field needs a (C, C, 3, 3) kernel, a (C) bias or a cotangent "
                                           "of x's shape, and scalar gamma and scale"));
  return g;
}

// The cubic field: f = k * x + b - gamma x^3: x (B, C, H, W), k (C, C, 3, 3), b (C), gamma (), f (B, C, H, W).
ffi::Error CubicForward(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> k, ffi::Buffer<ffi::F32> b,
                        ffi::Buffer<ffi::F32> gamma, ffi::ResultBuffer<ffi::F32> f) {
  auto g = cubic_geometry(x.dimensions(), k.dimensions(), b.element_count(), true,
                          {gamma.element_count()});
  if (g.has_error()) return g.error();
  cubic_forward<false>(x.typed_data(), k.typed_data(), b.typed_data(), *gamma.typed_data(), 1.f, f->typed_data(), *g);
  return ffi::Error::Success();
}

// Its reverse mode at cotangent a (B, C, H, W): dx (B, C, H, W), dk (C, C, 3, 3), db (C), dgamma ().
ffi::Error CubicBackward(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> k,
                         ffi::Buffer<ffi::F32> gamma, ffi::ResultBuffer<ffi::F32> dx, ffi::ResultBuffer<ffi::F32> dk,
                         ffi::ResultBuffer<ffi::F32> db, ffi::ResultBuffer<ffi::F32> dgamma) {
  auto g = cubic_geometry(x.dimensions(), k.dimensions(), a.element_count(), false,
                          {gamma.element_count()});
  if (g.has_error()) return g.error();
  cubic_backward<false>(x.typed_data(), a.typed_data(), k.typed_data(), *gamma.typed_data(), 1.f, dx->typed_data(),
                        dk->typed_data(), db->typed_data(), dgamma->typed_data(), *g);
  return ffi::Error::Success();
}

// One forward-Euler step of the cubic field (eq 109): y = x + scale (k * x + b - gamma x^3), scale ().
ffi::Error CubicStep(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> k, ffi::Buffer<ffi::F32> b,
                     ffi::Buffer<ffi::F32> gamma, ffi::Buffer<ffi::F32> scale, ffi::ResultBuffer<ffi::F32> y) {
  auto g = cubic_geometry(x.dimensions(), k.dimensions(), b.element_count(), true,
                          {gamma.element_count(), scale.element_count()});
  if (g.has_error()) return g.error();
  cubic_forward<true>(x.typed_data(), k.typed_data(), b.typed_data(), *gamma.typed_data(), *scale.typed_data(),
                      y->typed_data(), *g);
  return ffi::Error::Success();
}

// Its reverse mode at cotangent a (eq 112): dx = a + scale (k^T * a - 3 gamma x^2 a), and scale times dk, db, dgamma.
ffi::Error CubicStepBackward(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> k,
                             ffi::Buffer<ffi::F32> gamma, ffi::Buffer<ffi::F32> scale, ffi::ResultBuffer<ffi::F32> dx,
                             ffi::ResultBuffer<ffi::F32> dk, ffi::ResultBuffer<ffi::F32> db,
                             ffi::ResultBuffer<ffi::F32> dgamma) {
  auto g = cubic_geometry(x.dimensions(), k.dimensions(), a.element_count(), false,
                          {gamma.element_count(), scale.element_count()});
  if (g.has_error()) return g.error();
  cubic_backward<true>(x.typed_data(), a.typed_data(), k.typed_data(), *gamma.typed_data(), *scale.typed_data(),
                       dx->typed_data(), dk->typed_data(), db->typed_data(), dgamma->typed_data(), *g);
  return ffi::Error::Success();
}

// The same at the stored state x = xs[index] of a trajectory xs (N, B, C, H, W), read in place: the backward pass of
// eq 112 over the forward's stored states without XLA first copying xs[index] out (index: int32 scalar).
ffi::Error CubicStepBackwardAt(ffi::Buffer<ffi::F32> xs, ffi::Buffer<ffi::S32> index, ffi::Buffer<ffi::F32> a,
                               ffi::Buffer<ffi::F32> k, ffi::Buffer<ffi::F32> gamma, ffi::Buffer<ffi::F32> scale,
                               ffi::ResultBuffer<ffi::F32> dx, ffi::ResultBuffer<ffi::F32> dk,
                               ffi::ResultBuffer<ffi::F32> db, ffi::ResultBuffer<ffi::F32> dgamma) {
  auto g = cubic_geometry(a.dimensions(), k.dimensions(), a.element_count(), false,
                          {gamma.element_count(), scale.element_count()});
  if (g.has_error()) return g.error();
  auto stored = xs.dimensions();
  auto image = a.dimensions();
  if (stored.size() != 5 || index.element_count() != 1 || !std::equal(image.begin(), image.end(), stored.begin() + 1))
    return bad("expected stored states (N, B, C, H, W) around a (B, C, H, W) cotangent and a scalar index");
  const int64_t n = *index.typed_data();
  if (n < 0 || n >= stored[0]) return bad("the index of the stored state is out of range");
  cubic_backward<true>(xs.typed_data() + n * a.element_count(), a.typed_data(), k.typed_data(), *gamma.typed_data(),
                       *scale.typed_data(), dx->typed_data(), dk->typed_data(), db->typed_data(),
                       dgamma->typed_data(), *g);
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(OdeNetsDirectConvForward, Forward,
                              ffi::Ffi::Bind().Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(OdeNetsDirectConvBackwardData, BackwardData,
                              ffi::Ffi::Bind().Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(OdeNetsDirectConvBackwardWeights, BackwardWeights,
                              ffi::Ffi::Bind().Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(OdeNetsDirectCubicForward, CubicForward,
                              ffi::Ffi::Bind().Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(OdeNetsDirectCubicBackward, CubicBackward,
                              ffi::Ffi::Bind().Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>().Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>().Ret<ffi::Buffer<ffi::F32>>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(OdeNetsDirectCubicStep, CubicStep,
                              ffi::Ffi::Bind().Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>().Ret<ffi::Buffer<ffi::F32>>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(OdeNetsDirectCubicStepBackward, CubicStepBackward,
                              ffi::Ffi::Bind().Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>().Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>().Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(OdeNetsDirectCubicStepBackwardAt, CubicStepBackwardAt,
                              ffi::Ffi::Bind().Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>().Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>().Ret<ffi::Buffer<ffi::F32>>());
