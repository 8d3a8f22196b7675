// 3x3 'SAME' cross-correlation (stride 1, zero padding 1; eq 72 of Ruseckas 2019) through oneDNN, exposed as
// three XLA FFI handlers on the CPU: forward, backward-data (input gradient) and backward-weights (kernel
// gradient). Layouts: images NHWC, kernels HWIO, float32; the buffers XLA passes are used in place (no copy).
// Primitives are built once per shape and cached. Compiled on first use by ode_nets/fields/onednn_conv.py.

#include <array>
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

// The primitives of one shape, each with its own scratchpad (user scratchpad mode: the buffers live here, used
// under `cache_mutex`, not in oneDNN's per-thread global scratchpad).
struct Primitives {
  dnnl::memory::desc src, weights, dst;
  dnnl::convolution_forward forward;
  dnnl::convolution_backward_data backward_data;
  dnnl::convolution_backward_weights backward_weights;
  dnnl::memory forward_scratch, data_scratch, weights_scratch;
};

dnnl::engine& cpu_engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// The three primitives for one shape; forward's descriptor is the hint both backward ones require.
std::unique_ptr<Primitives> build(const Shape& s) {
  using tag = dnnl::memory::format_tag;
  using dt = dnnl::memory::data_type;
  const dnnl::memory::dims strides = {1, 1}, padding = {1, 1};
  auto p = std::make_unique<Primitives>();
  p->src = dnnl::memory::desc({s[0], s[3], s[1], s[2]}, dt::f32, tag::nhwc);
  p->weights = dnnl::memory::desc({s[4], s[3], 3, 3}, dt::f32, tag::hwio);
  p->dst = dnnl::memory::desc({s[0], s[4], s[1], s[2]}, dt::f32, tag::nhwc);
  auto& engine = cpu_engine();
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  auto fwd = dnnl::convolution_forward::primitive_desc(
      engine, dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct, p->src, p->weights, p->dst,
      strides, padding, padding, attr);
  auto bwd_data = dnnl::convolution_backward_data::primitive_desc(
      engine, dnnl::algorithm::convolution_direct, p->src, p->weights, p->dst, strides, padding, padding, fwd, attr);
  auto bwd_weights = dnnl::convolution_backward_weights::primitive_desc(
      engine, dnnl::algorithm::convolution_direct, p->src, p->weights, p->dst, strides, padding, padding, fwd, attr);
  p->forward = dnnl::convolution_forward(fwd);
  p->backward_data = dnnl::convolution_backward_data(bwd_data);
  p->backward_weights = dnnl::convolution_backward_weights(bwd_weights);
  p->forward_scratch = dnnl::memory(fwd.scratchpad_desc(), engine);
  p->data_scratch = dnnl::memory(bwd_data.scratchpad_desc(), engine);
  p->weights_scratch = dnnl::memory(bwd_weights.scratchpad_desc(), engine);
  return p;
}

std::mutex cache_mutex;

// Cached primitives for `s` (built on the first call with that shape); callers hold `cache_mutex`.
Primitives& primitives(const Shape& s) {
  static std::map<Shape, std::unique_ptr<Primitives>> cache;
  auto& entry = cache[s];
  if (!entry) entry = build(s);
  return *entry;
}

dnnl::memory wrap(const dnnl::memory::desc& desc, void* data) { return dnnl::memory(desc, cpu_engine(), data); }

// Checks rank and the 3x3 kernel, returns (B, H, W, C, O) from an NHWC image and an HWIO kernel.
ffi::ErrorOr<Shape> conv_shape(ffi::Span<const int64_t> image, ffi::Span<const int64_t> kernel, int64_t channels) {
  if (image.size() != 4 || kernel.size() != 4 || kernel[0] != 3 || kernel[1] != 3 || kernel[2] != channels) {
    return ffi::Unexpected<ffi::Error>(
        ffi::Error::InvalidArgument("onednn_conv: expected an NHWC image and a (3, 3, C, O) kernel"));
  }
  return Shape{image[0], image[1], image[2], kernel[2], kernel[3]};
}

// Runs `kind` (0 forward, 1 backward data, 2 backward weights) on the cached primitive; errors become ffi errors.
ffi::Error run(const Shape& s, int kind, void* a, void* b, void* out) {
  try {
    std::lock_guard<std::mutex> lock(cache_mutex);
    Primitives& p = primitives(s);
    dnnl::stream stream(cpu_engine());
    if (kind == 0) {
      p.forward.execute(stream, {{DNNL_ARG_SRC, wrap(p.src, a)}, {DNNL_ARG_WEIGHTS, wrap(p.weights, b)},
                                 {DNNL_ARG_DST, wrap(p.dst, out)}, {DNNL_ARG_SCRATCHPAD, p.forward_scratch}});
    } else if (kind == 1) {
      p.backward_data.execute(stream, {{DNNL_ARG_DIFF_DST, wrap(p.dst, a)}, {DNNL_ARG_WEIGHTS, wrap(p.weights, b)},
                                       {DNNL_ARG_DIFF_SRC, wrap(p.src, out)}, {DNNL_ARG_SCRATCHPAD, p.data_scratch}});
    } else {
      p.backward_weights.execute(stream, {{DNNL_ARG_SRC, wrap(p.src, a)}, {DNNL_ARG_DIFF_DST, wrap(p.dst, b)},
                                          {DNNL_ARG_DIFF_WEIGHTS, wrap(p.weights, out)},
                                          {DNNL_ARG_SCRATCHPAD, p.weights_scratch}});
    }
    stream.wait();
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("onednn_conv: ") + e.what());
  }
  return ffi::Error::Success();
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
