// XLA FFI handler: a bfloat16 matrix product computed by oneDNN's matmul primitive.
//
// x: bf16 [M, K], w: bf16 [K, N] (row major) -> out: bf16 or f32 [M, N], accumulated
// in float32 by oneDNN. Built by `python -m lr_common.cpu_matmul.build`; the Python side
// (lr_common/cpu_matmul/matmul.py) flattens leading dimensions before calling it.
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using Dims = dnnl::memory::dims;
using Tag = dnnl::memory::format_tag;
using Type = dnnl::memory::data_type;

// One primitive per problem shape: creating it is far costlier than running it.
struct Problem {
  int64_t m, k, n;
  bool f32_out;
  bool operator<(const Problem& o) const {
    return std::tie(m, k, n, f32_out) < std::tie(o.m, o.k, o.n, o.f32_out);
  }
};

struct Kernel {
  dnnl::matmul primitive;
  dnnl::memory::desc x, w, out, scratch;
};

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

std::shared_ptr<Kernel> KernelFor(const Problem& p) {
  static std::mutex mutex;
  static std::map<Problem, std::shared_ptr<Kernel>> cache;
  std::lock_guard<std::mutex> lock(mutex);
  auto found = cache.find(p);
  if (found != cache.end()) return found->second;
  auto kernel = std::make_shared<Kernel>();
  kernel->x = dnnl::memory::desc(Dims{p.m, p.k}, Type::bf16, Tag::ab);
  kernel->w = dnnl::memory::desc(Dims{p.k, p.n}, Type::bf16, Tag::ab);
  kernel->out = dnnl::memory::desc(Dims{p.m, p.n}, p.f32_out ? Type::f32 : Type::bf16,
                                   Tag::ab);
  // XLA may run independent products at once: each call brings its own scratch space.
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
#if DNNL_VERSION_MAJOR >= 3
  dnnl::matmul::primitive_desc pd(Engine(), kernel->x, kernel->w, kernel->out, attr);
#else
  dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(kernel->x, kernel->w, kernel->out),
                                  attr, Engine());
#endif
  kernel->scratch = pd.scratchpad_desc();
  kernel->primitive = dnnl::matmul(pd);
  cache.emplace(p, kernel);
  return kernel;
}

ffi::Error Bf16Matmul(ffi::Buffer<ffi::BF16> x, ffi::Buffer<ffi::BF16> w,
                      ffi::Result<ffi::AnyBuffer> out) {
  auto xd = x.dimensions();
  auto wd = w.dimensions();
  auto od = out->dimensions();
  if (xd.size() != 2 || wd.size() != 2 || od.size() != 2 || xd[1] != wd[0] ||
      od[0] != xd[0] || od[1] != wd[1]) {
    return ffi::Error::InvalidArgument(
        "lr_onednn_bf16_matmul expects x [M, K], w [K, N] and out [M, N]");
  }
  const bool f32_out = out->element_type() == ffi::DataType::F32;
  if (!f32_out && out->element_type() != ffi::DataType::BF16) {
    return ffi::Error::InvalidArgument("lr_onednn_bf16_matmul writes bf16 or f32 only");
  }
  if (xd[0] == 0 || wd[1] == 0) return ffi::Error::Success();
  try {
    auto kernel = KernelFor(Problem{xd[0], xd[1], wd[1], f32_out});
    dnnl::engine& engine = Engine();
    dnnl::memory xm(kernel->x, engine, const_cast<uint16_t*>(x.typed_data()));
    dnnl::memory wm(kernel->w, engine, const_cast<uint16_t*>(w.typed_data()));
    dnnl::memory om(kernel->out, engine, out->untyped_data());
    thread_local std::vector<uint8_t> scratch_bytes;
    scratch_bytes.resize(kernel->scratch.get_size());
    dnnl::memory sm(kernel->scratch, engine, scratch_bytes.data());
    dnnl::stream stream(engine);
    kernel->primitive.execute(stream, {{DNNL_ARG_SRC, xm}, {DNNL_ARG_WEIGHTS, wm},
                                       {DNNL_ARG_DST, om}, {DNNL_ARG_SCRATCHPAD, sm}});
    stream.wait();
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("oneDNN matmul failed: ") + e.what());
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(LrOnednnBf16Matmul, Bf16Matmul,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::BF16>>()
                                  .Arg<ffi::Buffer<ffi::BF16>>()
                                  .Ret<ffi::AnyBuffer>());

// The oneDNN version this library was built against, for the log line.
extern "C" int lr_onednn_version() {
  const dnnl_version_t* v = dnnl_version();
  return v->major * 10000 + v->minor * 100 + v->patch;
}

// Whether oneDNN finds bf16 matrix instructions (avx512_bf16 or AMX) on this CPU.
//
// oneDNN's cpu_isa values are bit masks: each ISA holds the bits of every ISA it
// extends (2.6: avx512_core_bf16 = 0xe7, avx512_core_amx = 0x3e7 = 0xe7 | 0x300,
// avx2_vnni = 0x407), so "at least avx512_core_bf16" is "has all of its bits", which
// also holds for the ISAs newer oneDNN versions add above it (AMX with fp16, ...).
extern "C" int lr_onednn_cpu_has_bf16() {
  const unsigned found = static_cast<unsigned>(dnnl::get_effective_cpu_isa());
  auto at_least = [found](dnnl::cpu_isa isa) {
    const unsigned needed = static_cast<unsigned>(isa);
    return (found & needed) == needed;
  };
  return at_least(dnnl::cpu_isa::avx512_core_bf16) ||
         at_least(dnnl::cpu_isa::avx512_core_amx);
}
