// 3x3 'SAME' cross-correlation (stride 1, zero padding 1; eq 72 of Ruseckas 2019) through oneDNN, exposed as
// three XLA FFI handlers on the CPU: forward, backward-data (input gradient) and backward-weights (kernel
// gradient). XLA's buffers (images NHWC, kernels HWIO, float32) are read and written in place: the images in
// NHWC itself where oneDNN has direct kernels for it (`build`), otherwise, like the kernels, through cached
// reorders into the layouts oneDNN picks. Built once per shape and cached. Compiled on first use by
// ode_nets/fields/onednn_conv.py.

#include <omp.h>

#include <array>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using Shape = std::array<int64_t, 5>;  // batch, height, width, in channels, out channels

dnnl::engine& cpu_engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// One argument of a primitive: XLA's buffer (layout `user`, NHWC or HWIO) and the layout the primitive chose
// (`inner`, e.g. channel-blocked nChw16c). When they differ the data goes through `buffer` with cached reorders.
struct Operand {
  dnnl::memory::desc user, inner;
  dnnl::memory buffer;
  dnnl::reorder to_inner, to_user;

  Operand(const dnnl::memory::desc& user_desc, const dnnl::memory::desc& inner_desc)
      : user(user_desc), inner(inner_desc) {
    if (user == inner) return;
    auto& engine = cpu_engine();
    buffer = dnnl::memory(inner, engine);
    to_inner = dnnl::reorder(dnnl::reorder::primitive_desc(engine, user, engine, inner));
    to_user = dnnl::reorder(dnnl::reorder::primitive_desc(engine, inner, engine, user));
  }

  // The primitive's view of an input `data` (reordered into `buffer` if the layouts differ).
  dnnl::memory input(void* data, dnnl::stream& stream) {
    dnnl::memory wrapped(user, cpu_engine(), data);
    if (user == inner) return wrapped;
    to_inner.execute(stream, wrapped, buffer);
    return buffer;
  }

  // Where the primitive writes an output destined for `data`; `finish` copies it there if it went to `buffer`.
  dnnl::memory output(void* data) { return user == inner ? dnnl::memory(user, cpu_engine(), data) : buffer; }
  void finish(void* data, dnnl::stream& stream) {
    if (user == inner) return;
    dnnl::memory wrapped(user, cpu_engine(), data);
    to_user.execute(stream, buffer, wrapped);
  }
};

// OpenMP threads per call: OMP_NUM_THREADS if set, else every core. XLA's own thread pool runs beside the custom
// call, so OpenMP workers must not spin-wait between calls (10x slower calls measured on a loaded 2-core machine):
// onednn_conv.py sets OMP_WAIT_POLICY=passive before this library (and libgomp) is loaded.
// Set for the calling (XLA worker) thread only, before building and running the primitives.
int threads() {
  static const int count = std::getenv("OMP_NUM_THREADS") ? omp_get_max_threads() : omp_get_num_procs();
  return count;
}

// One convolution primitive with its two inputs, its output and its own scratchpad (user scratchpad mode).
struct Step {
  dnnl::primitive primitive;
  int arg_a, arg_b, arg_out;
  Operand a, b, out;
  dnnl::memory scratch;
  std::string impl;  // oneDNN's implementation name, e.g. "brgconv:avx512_core"

  void run(void* data_a, void* data_b, void* data_out) {
    dnnl::stream stream(cpu_engine());
    primitive.execute(stream, {{arg_a, a.input(data_a, stream)}, {arg_b, b.input(data_b, stream)},
                               {arg_out, out.output(data_out)}, {DNNL_ARG_SCRATCHPAD, scratch}});
    out.finish(data_out, stream);
    stream.wait();
  }
};

using Steps = std::array<std::unique_ptr<Step>, 3>;

// Forward, backward-data and backward-weights for one shape, images in layout `image_tag`, kernels left to
// oneDNN (format `any`; a kernel is ~1k floats, its reorder is free).
Steps build_with(const Shape& s, dnnl::memory::format_tag image_tag) {
  using tag = dnnl::memory::format_tag;
  using dt = dnnl::memory::data_type;
  const dnnl::memory::dims strides = {1, 1}, padding = {1, 1};
  const dnnl::memory::dims image = {s[0], s[3], s[1], s[2]}, kernel = {s[4], s[3], 3, 3}, out = {s[0], s[4], s[1], s[2]};
  const dnnl::memory::desc src(image, dt::f32, tag::nhwc), weights(kernel, dt::f32, tag::hwio),
      dst(out, dt::f32, tag::nhwc);
  // What the primitives are asked for (`any`: oneDNN picks); `src` / `weights` / `dst` are XLA's buffers.
  const dnnl::memory::desc asked_src(image, dt::f32, image_tag), asked_weights(kernel, dt::f32, tag::any),
      asked_dst(out, dt::f32, image_tag);
  auto& engine = cpu_engine();
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  auto algo = dnnl::algorithm::convolution_direct;
  auto fwd = dnnl::convolution_forward::primitive_desc(engine, dnnl::prop_kind::forward_training, algo, asked_src,
                                                       asked_weights, asked_dst, strides, padding, padding, attr);
  auto bwd_data = dnnl::convolution_backward_data::primitive_desc(engine, algo, asked_src, asked_weights, asked_dst,
                                                                  strides, padding, padding, fwd, attr);
  auto bwd_weights = dnnl::convolution_backward_weights::primitive_desc(engine, algo, asked_src, asked_weights,
                                                                        asked_dst, strides, padding, padding, fwd, attr);
  auto scratch = [&](const auto& pd) { return dnnl::memory(pd.scratchpad_desc(), engine); };
  return {std::unique_ptr<Step>(new Step{dnnl::convolution_forward(fwd), DNNL_ARG_SRC, DNNL_ARG_WEIGHTS, DNNL_ARG_DST,
                                         Operand(src, fwd.src_desc()), Operand(weights, fwd.weights_desc()),
                                         Operand(dst, fwd.dst_desc()), scratch(fwd), fwd.impl_info_str()}),
          std::unique_ptr<Step>(new Step{dnnl::convolution_backward_data(bwd_data), DNNL_ARG_DIFF_DST,
                                         DNNL_ARG_WEIGHTS, DNNL_ARG_DIFF_SRC,
                                         Operand(dst, bwd_data.diff_dst_desc()),
                                         Operand(weights, bwd_data.weights_desc()),
                                         Operand(src, bwd_data.diff_src_desc()), scratch(bwd_data),
                                         bwd_data.impl_info_str()}),
          std::unique_ptr<Step>(new Step{dnnl::convolution_backward_weights(bwd_weights), DNNL_ARG_SRC,
                                         DNNL_ARG_DIFF_DST, DNNL_ARG_DIFF_WEIGHTS,
                                         Operand(src, bwd_weights.src_desc()),
                                         Operand(dst, bwd_weights.diff_dst_desc()),
                                         Operand(weights, bwd_weights.diff_weights_desc()), scratch(bwd_weights),
                                         bwd_weights.impl_info_str()})};
}

// Images in XLA's own NHWC when oneDNN has direct (jit/brgemm) kernels for it: no reorder of the images at all
// (on AVX-512 for 10 channels: 0.70 + 0.71 + 1.05 ms per layer, against 0.61 + 0.93 + 2.03 ms plus ~0.5 ms of
// reorders per call in its channel-blocked layouts; docs/performance.md). Where NHWC would fall back to a
// gemm-based or reference kernel (80-270x slower on an AVX2 machine), the layouts are left to oneDNN.
Steps build(const Shape& s) {
  auto steps = build_with(s, dnnl::memory::format_tag::nhwc);
  for (const auto& step : steps) {
    if (step->impl.find("gemm") != std::string::npos || step->impl.find("ref") != std::string::npos) {
      return build_with(s, dnnl::memory::format_tag::any);
    }
  }
  return steps;
}

std::mutex cache_mutex;

// Runs step `kind` (0 forward, 1 backward data, 2 backward weights) of the primitives of shape `s`, built on
// the first call with that shape and cached; one call at a time (the cached buffers are shared).
ffi::Error run(const Shape& s, int kind, void* a, void* b, void* out) {
  static std::map<Shape, Steps> cache;
  try {
    std::lock_guard<std::mutex> lock(cache_mutex);
    omp_set_num_threads(threads());  // before `build`: oneDNN fixes a primitive's thread count when it builds it
    auto& steps = cache[s];
    if (!steps[0]) steps = build(s);
    steps[kind]->run(a, b, out);
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("onednn_conv: ") + e.what());
  }
  return ffi::Error::Success();
}

// Checks rank and the 3x3 kernel, returns (B, H, W, C, O) from an NHWC image and an HWIO kernel.
ffi::ErrorOr<Shape> conv_shape(ffi::Span<const int64_t> image, ffi::Span<const int64_t> kernel, int64_t channels) {
  if (image.size() != 4 || kernel.size() != 4 || kernel[0] != 3 || kernel[1] != 3 || kernel[2] != channels) {
    return ffi::Unexpected<ffi::Error>(
        ffi::Error::InvalidArgument("onednn_conv: expected an NHWC image and a (3, 3, C, O) kernel"));
  }
  return Shape{image[0], image[1], image[2], kernel[2], kernel[3]};
}

// y = x * w: x (B, H, W, C), w (3, 3, C, O), y (B, H, W, O).
ffi::Error Forward(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w, ffi::ResultBuffer<ffi::F32> y) {
  auto s = conv_shape(x.dimensions(), w.dimensions(), x.dimensions().back());
  if (s.has_error()) return s.error();
  return run(*s, 0, x.untyped_data(), w.untyped_data(), y->untyped_data());
}

// dx = g *^T w (input gradient): g (B, H, W, O), w (3, 3, C, O), dx (B, H, W, C).
ffi::Error BackwardData(ffi::Buffer<ffi::F32> g, ffi::Buffer<ffi::F32> w, ffi::ResultBuffer<ffi::F32> dx) {
  auto dims = g.dimensions();
  auto s = conv_shape(dx->dimensions(), w.dimensions(), dx->dimensions().back());
  if (s.has_error()) return s.error();
  if (dims.size() != 4 || dims[3] != (*s)[4]) return ffi::Error::InvalidArgument("onednn_conv: bad g shape");
  return run(*s, 1, g.untyped_data(), w.untyped_data(), dx->untyped_data());
}

// dw = sum over pixels of patches(x)^T g (kernel gradient): x (B, H, W, C), g (B, H, W, O), dw (3, 3, C, O).
ffi::Error BackwardWeights(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> g, ffi::ResultBuffer<ffi::F32> dw) {
  auto s = conv_shape(x.dimensions(), dw->dimensions(), x.dimensions().back());
  if (s.has_error()) return s.error();
  return run(*s, 2, x.untyped_data(), g.untyped_data(), dw->untyped_data());
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(OdeNetsOnednnConvForward, Forward,
                              ffi::Ffi::Bind().Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(OdeNetsOnednnConvBackwardData, BackwardData,
                              ffi::Ffi::Bind().Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(OdeNetsOnednnConvBackwardWeights, BackwardWeights,
                              ffi::Ffi::Bind().Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
