// The trainer's C++ bridge to libtorch: what tch does not expose, compiled by trainer/build.rs against
// the headers of the libtorch tch links. Rust side and contracts: trainer/src/bridge.rs.
//
// Conventions, for every function here:
// - it is `extern "C"`, catches every C++ exception and returns it as a malloc'd message (NULL on
//   success), which the caller frees with imgtrain_bridge_free_error; results go through out-pointers;
// - `at::Tensor` arguments are tch's `C_tensor` pointers (tch's tensors are `at::Tensor*` underneath);
// - it includes only the ATen headers it needs: ATen/ATen.h would triple the compile time.

#include <ATen/core/Tensor.h>
#include <ATen/ops/_foreach_add.h>
#include <ATen/ops/_foreach_mul.h>
#include <ATen/ops/_fused_sgd.h>
#include <ATen/ops/zeros_like.h>
#include <c10/core/Event.h>
#include <c10/core/GradMode.h>
#include <c10/core/Stream.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <c10/util/Exception.h>

#include "guard.h"
#ifdef IMGTRAIN_BRIDGE_CUDA
// Only for libtorch's sync debug mode (imgtrain_cuda_sync_count_start); needs cuda_runtime_api.h.
#include <c10/cuda/CUDAFunctions.h>
#endif

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

// libtorch's autocast controls, declared as in ATen/autocast_mode.h of libtorch 2.11 (exported by
// libtorch_cpu). That header pulls in all of ATen's operators (324k preprocessed lines against 135k for
// ATen/core/Tensor.h), so the seven declarations are repeated here; a changed parameter list would fail
// to link, the mangled names carry it.
namespace at::autocast {
TORCH_API bool is_autocast_enabled(at::DeviceType device_type);
TORCH_API void set_autocast_enabled(at::DeviceType device_type, bool enabled);
TORCH_API at::ScalarType get_autocast_dtype(at::DeviceType device_type);
TORCH_API void set_autocast_dtype(at::DeviceType device_type, at::ScalarType dtype);
TORCH_API void clear_cache();
TORCH_API int increment_nesting();
TORCH_API int decrement_nesting();
} // namespace at::autocast

namespace {

// The device types autocast keeps state for and this bridge lets through: the tables in
// autocast_mode.cpp are indexed by device type without a bounds check.
c10::DeviceType autocast_device(int8_t device_type) {
  const auto t = static_cast<c10::DeviceType>(device_type);
  if (t != c10::DeviceType::CPU && t != c10::DeviceType::CUDA) {
    throw std::invalid_argument(
        "autocast: unsupported device type code " + std::to_string(device_type));
  }
  return t;
}

c10::ScalarType autocast_dtype(int8_t dtype) {
  const auto t = static_cast<c10::ScalarType>(dtype);
  if (t != c10::ScalarType::Half && t != c10::ScalarType::BFloat16 &&
      t != c10::ScalarType::Float) {
    throw std::invalid_argument("autocast: unsupported dtype code " + std::to_string(dtype));
  }
  return t;
}

} // namespace

// A c10::Stream in a form C and Rust can hold: c10::Stream::pack3's fields.
struct imgtrain_stream {
  int64_t id;
  int8_t device_index;
  int8_t device_type;
};

namespace {

c10::Stream unpack(const imgtrain_stream* s) {
  return c10::Stream::unpack3(
      s->id, static_cast<c10::DeviceIndex>(s->device_index),
      static_cast<c10::DeviceType>(s->device_type));
}

void pack(const c10::Stream& s, imgtrain_stream* out) {
  const auto d = s.pack3();
  out->id = d.stream_id;
  out->device_index = static_cast<int8_t>(d.device_index);
  out->device_type = static_cast<int8_t>(d.device_type);
}

// The CUDA backend's guard implementation (registered by libc10_cuda, which libtorch_cuda loads), or an
// error a user can read. Going through c10's device-generic interface keeps this file free of CUDA
// headers and of any direct reference to libcudart, whose soname the binary could not find on a GPU
// machine through the libtorch rpath alone.
const c10::impl::DeviceGuardImplInterface* cuda_impl() {
  if (!c10::impl::hasDeviceGuardImpl(c10::DeviceType::CUDA)) {
    throw std::runtime_error("CUDA not available: this libtorch has no CUDA backend loaded");
  }
  const auto* impl = c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA);
  if (impl->deviceCount() <= 0) {
    throw std::runtime_error("CUDA not available: no CUDA device is visible");
  }
  return impl;
}

c10::Device cuda_device(int8_t index) {
  if (index < -1) {
    throw std::invalid_argument("invalid CUDA device index " + std::to_string(index));
  }
  return c10::Device(c10::DeviceType::CUDA, static_cast<c10::DeviceIndex>(index));
}

void check_cuda_stream(const imgtrain_stream* s) {
  if (static_cast<c10::DeviceType>(s->device_type) != c10::DeviceType::CUDA) {
    throw std::invalid_argument("not a CUDA stream");
  }
}

} // namespace

extern "C" {

void imgtrain_bridge_free_error(char* message) {
  imgtrain::free_message(message);
}

// ---- autocast ----------------------------------------------------------------------------------------

char* imgtrain_autocast_set_dtype(int8_t device_type, int8_t dtype) {
  return imgtrain::guarded([&] {
    at::autocast::set_autocast_dtype(autocast_device(device_type), autocast_dtype(dtype));
  });
}

char* imgtrain_autocast_get_dtype(int8_t device_type, int8_t* out) {
  return imgtrain::guarded([&] {
    *out = static_cast<int8_t>(at::autocast::get_autocast_dtype(autocast_device(device_type)));
  });
}

char* imgtrain_autocast_set_enabled(int8_t device_type, bool enabled) {
  return imgtrain::guarded(
      [&] { at::autocast::set_autocast_enabled(autocast_device(device_type), enabled); });
}

char* imgtrain_autocast_is_enabled(int8_t device_type, bool* out) {
  return imgtrain::guarded([&] { *out = at::autocast::is_autocast_enabled(autocast_device(device_type)); });
}

char* imgtrain_autocast_increment_nesting(int32_t* out) {
  return imgtrain::guarded([&] { *out = at::autocast::increment_nesting(); });
}

char* imgtrain_autocast_decrement_nesting(int32_t* out) {
  return imgtrain::guarded([&] { *out = at::autocast::decrement_nesting(); });
}

char* imgtrain_autocast_clear_cache() {
  return imgtrain::guarded([] { at::autocast::clear_cache(); });
}

// ---- SGD -----------------------------------------------------------------------------------------------

// How imgtrain_sgd_step updates; the numbers are part of the ABI (bridge.rs: SgdKernel).
enum SgdKernel : int32_t {
  // torch.optim.SGD(foreach=False): the same ATen calls in the same order, one parameter at a time.
  kPerParameter = 0,
  // torch.optim.SGD(foreach=True): _foreach_ ops over every parameter with a gradient.
  kForeach = 1,
  // torch.optim.SGD(fused=True): at::_fused_sgd_, one kernel per group.
  kFused = 2,
};

// One SGD step over `n` parameters. `bufs[i]` is the momentum buffer of `params[i]`, undefined before
// its first step; this sets it then (a copy of the decayed gradient, as torch does). Parameters whose
// gradient is undefined are skipped and keep their buffer. `grad_scale` and `found_inf` (NULL or
// one-element float tensors on the parameters' device) are only accepted by the fused kernel: it divides
// the gradients by `grad_scale` and does nothing where `found_inf` is nonzero, without a host sync.
char* imgtrain_sgd_step(
    const at::Tensor* const* params,
    at::Tensor* const* bufs,
    size_t n,
    double lr,
    double momentum,
    double dampening,
    double weight_decay,
    bool nesterov,
    int32_t kernel,
    const at::Tensor* grad_scale,
    const at::Tensor* found_inf) {
  return imgtrain::guarded([&] {
    c10::NoGradGuard no_grad;
    if ((grad_scale != nullptr || found_inf != nullptr) && kernel != kFused) {
      throw std::invalid_argument("grad_scale/found_inf need the fused SGD kernel");
    }
    if (kernel == kPerParameter) {
      for (size_t i = 0; i < n; ++i) {
        const at::Tensor& p = *params[i];
        at::Tensor grad = p.grad();
        if (!grad.defined()) {
          continue;
        }
        if (weight_decay != 0) {
          grad = grad.add(p, weight_decay);
        }
        if (momentum != 0) {
          at::Tensor& buf = *bufs[i];
          if (!buf.defined()) {
            buf = grad.clone();
          } else {
            buf.mul_(momentum).add_(grad, 1 - dampening);
          }
          if (nesterov) {
            grad = grad.add(buf, momentum);
          } else {
            grad = buf;
          }
        }
        p.add_(grad, -lr);
      }
      return;
    }
    // Parameters with a gradient, split by whether their momentum buffer exists yet.
    std::vector<at::Tensor> ps, gs, bs;
    std::vector<size_t> fresh; // indices (into params) of parameters without a buffer
    std::vector<at::Tensor> fresh_ps, fresh_gs;
    for (size_t i = 0; i < n; ++i) {
      at::Tensor g = params[i]->grad();
      if (!g.defined()) {
        continue;
      }
      if (momentum != 0 && !bufs[i]->defined()) {
        fresh.push_back(i);
        fresh_ps.push_back(*params[i]);
        fresh_gs.push_back(std::move(g));
      } else {
        ps.push_back(*params[i]);
        gs.push_back(std::move(g));
        if (momentum != 0) {
          bs.push_back(*bufs[i]);
        }
      }
    }
    if (kernel == kFused) {
      std::optional<at::Tensor> scale, inf;
      if (grad_scale != nullptr) {
        scale = *grad_scale;
      }
      if (found_inf != nullptr) {
        inf = *found_inf;
      }
      if (!ps.empty()) {
        at::_fused_sgd_(ps, gs, bs, weight_decay, momentum, lr, dampening, nesterov, false, false,
                        scale, inf);
      }
      if (!fresh.empty()) {
        // The kernel fills a first step's buffers itself (buf = decayed gradient). torch.optim.SGD hands
        // it empty_like buffers, which stay uninitialised if found_inf skips that step and are then
        // used as momentum; zeros make a skipped first step harmless (momentum * 0 + d = d exactly).
        std::vector<at::Tensor> fresh_bs;
        fresh_bs.reserve(fresh.size());
        for (const auto& g : fresh_gs) {
          fresh_bs.push_back(at::zeros_like(g));
        }
        at::_fused_sgd_(fresh_ps, fresh_gs, fresh_bs, weight_decay, momentum, lr, dampening,
                        nesterov, false, true, scale, inf);
        for (size_t k = 0; k < fresh.size(); ++k) {
          *bufs[fresh[k]] = fresh_bs[k];
        }
      }
      return;
    }
    if (kernel != kForeach) {
      throw std::invalid_argument("unknown SGD kernel " + std::to_string(kernel));
    }
    // torch.optim.SGD's _multi_tensor_sgd, with the parameters whose buffers are new (torch's "not all
    // states have a momentum buffer" branch) handled one by one as it does.
    ps.insert(ps.end(), fresh_ps.begin(), fresh_ps.end());
    gs.insert(gs.end(), fresh_gs.begin(), fresh_gs.end());
    if (ps.empty()) {
      return;
    }
    if (weight_decay != 0) {
      gs = at::_foreach_add(gs, ps, weight_decay);
    }
    if (momentum != 0) {
      const size_t old = bs.size();
      if (fresh.empty()) {
        at::_foreach_mul_(bs, momentum);
        at::_foreach_add_(bs, gs, 1 - dampening);
      } else {
        for (size_t k = 0; k < old; ++k) {
          bs[k].mul_(momentum).add_(gs[k], 1 - dampening);
        }
        for (size_t k = 0; k < fresh.size(); ++k) {
          at::Tensor b = gs[old + k].clone();
          *bufs[fresh[k]] = b;
          bs.push_back(std::move(b));
        }
      }
      if (nesterov) {
        at::_foreach_add_(gs, bs, momentum);
      } else {
        gs = bs;
      }
    }
    at::_foreach_add_(ps, gs, -lr);
  });
}

// Makes the gradients of `params` undefined, like PyTorch's zero_grad(set_to_none=True): the next
// backward writes fresh gradients instead of adding into zeroed ones, and the optimizer skips a
// parameter the loss did not reach.
char* imgtrain_grads_set_to_none(const at::Tensor* const* params, size_t n) {
  return imgtrain::guarded([&] {
    for (size_t i = 0; i < n; ++i) {
      params[i]->mutable_grad().reset();
    }
  });
}

// Gives every 4-D tensor of `tensors` the channels_last memory layout, in place (the values and the
// autograd identity stay: `set_data` swaps the storage under the same variable), as PyTorch's
// `model.to(memory_format=torch.channels_last)` does. Other tensors are left as they are.
char* imgtrain_channels_last_(const at::Tensor* const* tensors, size_t n) {
  return imgtrain::guarded([&] {
    c10::AutoGradMode no_grad(false);
    for (size_t i = 0; i < n; ++i) {
      at::Tensor t = *tensors[i];
      if (t.dim() == 4 && !t.is_contiguous(at::MemoryFormat::ChannelsLast)) {
        t.set_data(t.contiguous(at::MemoryFormat::ChannelsLast));
      }
    }
  });
}

// ---- CUDA streams and events ------------------------------------------------------------------------

namespace {

// The message of libtorch's sync debug mode (c10/cuda/CUDAFunctions.cpp, warn_or_error_on_sync).
constexpr const char* kSyncWarning = "called a synchronizing CUDA operation";

// Counts the sync debug mode's warnings raised on its thread and passes every other warning on.
class SyncCounter final : public c10::WarningHandler {
 public:
  void process(const c10::Warning& warning) override {
    if (warning.msg() == kSyncWarning) {
      ++count;
    } else if (next != nullptr) {
      next->process(warning);
    }
  }
  c10::WarningHandler* next = nullptr;
  uint64_t count = 0;
  bool active = false;
};

// c10's warning handler is per thread, and so is this count: the thread that runs the steps.
thread_local SyncCounter tl_syncs;

void stop_counting() {
  if (tl_syncs.active) {
    c10::WarningUtils::set_warning_handler(tl_syncs.next);
    tl_syncs.active = false;
  }
}

} // namespace

// A stream from libtorch's pool on CUDA device `device_index` (-1: the current device).
char* imgtrain_cuda_stream_from_pool(int8_t device_index, bool high_priority, imgtrain_stream* out) {
  return imgtrain::guarded([&] {
    pack(cuda_impl()->getStreamFromGlobalPool(cuda_device(device_index), high_priority), out);
  });
}

// The calling thread's current stream on CUDA device `device_index` (-1: the current device).
char* imgtrain_cuda_current_stream(int8_t device_index, imgtrain_stream* out) {
  return imgtrain::guarded([&] {
    const auto* impl = cuda_impl();
    c10::Device d = cuda_device(device_index);
    if (d.index() < 0) {
      d = impl->getDevice();
    }
    pack(impl->getStream(d), out);
  });
}

// Makes `s` the calling thread's current stream on its device; `previous` receives the one it replaces.
char* imgtrain_cuda_exchange_stream(const imgtrain_stream* s, imgtrain_stream* previous) {
  return imgtrain::guarded([&] {
    check_cuda_stream(s);
    pack(cuda_impl()->exchangeStream(unpack(s)), previous);
  });
}

// Work queued on `waiter` from now on waits for the work queued on `other` so far (no host wait).
char* imgtrain_cuda_stream_wait_stream(const imgtrain_stream* waiter, const imgtrain_stream* other) {
  return imgtrain::guarded([&] {
    check_cuda_stream(waiter);
    check_cuda_stream(other);
    cuda_impl();
    c10::Event e(c10::DeviceType::CUDA);
    e.record(unpack(other));
    e.block(unpack(waiter));
  });
}

// Host waits for everything queued on `s`.
char* imgtrain_cuda_stream_synchronize(const imgtrain_stream* s) {
  return imgtrain::guarded([&] {
    check_cuda_stream(s);
    cuda_impl()->synchronizeStream(unpack(s));
  });
}

// A CUDA event (created on its first record), freed with imgtrain_cuda_event_free.
char* imgtrain_cuda_event_new(void** out) {
  return imgtrain::guarded([&] {
    cuda_impl();
    *out = new c10::Event(c10::DeviceType::CUDA);
  });
}

void imgtrain_cuda_event_free(void* event) {
  // c10::Event's destructor does not throw (it logs a failure to destroy the CUDA event).
  delete static_cast<c10::Event*>(event);
}

char* imgtrain_cuda_event_record(void* event, const imgtrain_stream* s) {
  return imgtrain::guarded([&] {
    check_cuda_stream(s);
    static_cast<c10::Event*>(event)->record(unpack(s));
  });
}

// Whether the work the event was recorded after has completed (true for a never-recorded event).
char* imgtrain_cuda_event_query(void* event, bool* done) {
  return imgtrain::guarded([&] { *done = static_cast<c10::Event*>(event)->query(); });
}

// Host waits for the work the event was recorded after. Counted as a synchronisation (c10 does not flag
// event waits in its sync debug mode).
char* imgtrain_cuda_event_synchronize(void* event) {
  return imgtrain::guarded([&] {
    static_cast<c10::Event*>(event)->synchronize();
    if (tl_syncs.active) {
      ++tl_syncs.count;
    }
  });
}

// Work queued on `s` from now on waits for the event (no host wait).
char* imgtrain_cuda_event_block(void* event, const imgtrain_stream* s) {
  return imgtrain::guarded([&] {
    check_cuda_stream(s);
    static_cast<c10::Event*>(event)->block(unpack(s));
  });
}

// Tells the caching allocator that `t`'s memory is in use on `s`, so that it is not handed out again
// before the work queued on `s` so far is done (a tensor made on a side stream, used on another).
char* imgtrain_tensor_record_stream(const at::Tensor* t, const imgtrain_stream* s) {
  return imgtrain::guarded([&] {
    check_cuda_stream(s);
    const auto* impl = cuda_impl();
    if (!t->is_cuda()) {
      throw std::invalid_argument("record_stream: the tensor is not on a CUDA device");
    }
    impl->recordDataPtrOnStream(t->storage().data_ptr(), unpack(s));
  });
}

// Whether the bridge was compiled with CUDA headers (needed for counting synchronisations only).
bool imgtrain_bridge_has_cuda_headers() {
#ifdef IMGTRAIN_BRIDGE_CUDA
  return true;
#else
  return false;
#endif
}

// Starts counting host-device synchronisations made on the calling thread: libtorch's own sync debug
// mode (torch.cuda.set_sync_debug_mode("warn")) flags every blocking device-to-host copy (.item(),
// .to(cpu) without non_blocking), stream and device synchronize; its warning is counted here instead of
// printed, and imgtrain_cuda_event_synchronize counts itself. The mode is process-wide: a sync on another
// thread prints libtorch's warning. Checks itself with one stream synchronize, not counted.
char* imgtrain_cuda_sync_count_start() {
  return imgtrain::guarded([] {
#ifndef IMGTRAIN_BRIDGE_CUDA
    throw std::runtime_error(
        "built without CUDA stream support for counting synchronisations: no cuda_runtime_api.h was "
        "found when the bridge was compiled (see trainer/build.rs)");
#else
    const auto* impl = cuda_impl();
    if (!tl_syncs.active) {
      tl_syncs.next = c10::WarningUtils::get_warning_handler();
      c10::WarningUtils::set_warning_handler(&tl_syncs);
      tl_syncs.active = true;
    }
    // warning_state() is an inline function with a static local: libc10_cuda and this object share it
    // only through the dynamic linker's unique-symbol binding. Check that they do.
    c10::cuda::warning_state().set_sync_debug_mode(c10::cuda::SyncDebugMode::L_WARN);
    const uint64_t before = tl_syncs.count;
    impl->synchronizeStream(impl->getStream(impl->getDevice()));
    if (tl_syncs.count != before + 1) {
      c10::cuda::warning_state().set_sync_debug_mode(c10::cuda::SyncDebugMode::L_DISABLED);
      stop_counting();
      throw std::runtime_error(
          "libtorch's sync debug mode did not report a stream synchronize; synchronisations cannot be "
          "counted in this build");
    }
    tl_syncs.count = before;
#endif
  });
}

// Checks, without a GPU, that the sync debug mode set here is the one libc10_cuda reads (see
// imgtrain_cuda_sync_count_start): raises libtorch's own sync flag once and reports how many this
// thread's counter saw (1 when the mode is shared).
char* imgtrain_cuda_sync_flag_selftest(uint64_t* counted) {
  return imgtrain::guarded([&] {
#ifndef IMGTRAIN_BRIDGE_CUDA
    throw std::runtime_error("built without CUDA stream support");
#else
    auto& state = c10::cuda::warning_state();
    const auto mode = state.get_sync_debug_mode();
    SyncCounter local;
    local.next = c10::WarningUtils::get_warning_handler();
    c10::WarningUtils::set_warning_handler(&local);
    state.set_sync_debug_mode(c10::cuda::SyncDebugMode::L_WARN);
    c10::cuda::warn_or_error_on_sync();
    state.set_sync_debug_mode(mode);
    c10::WarningUtils::set_warning_handler(local.next);
    *counted = local.count;
#endif
  });
}

// The synchronisations counted on the calling thread since the first imgtrain_cuda_sync_count_start.
char* imgtrain_cuda_sync_count(uint64_t* out) {
  return imgtrain::guarded([&] {
    if (!tl_syncs.active) {
      throw std::logic_error("synchronisations are not being counted on this thread");
    }
    *out = tl_syncs.count;
  });
}

// Stops counting on the calling thread and switches libtorch's sync debug mode off again.
char* imgtrain_cuda_sync_count_stop() {
  return imgtrain::guarded([] {
#ifdef IMGTRAIN_BRIDGE_CUDA
    c10::cuda::warning_state().set_sync_debug_mode(c10::cuda::SyncDebugMode::L_DISABLED);
#endif
    stop_counting();
  });
}

} // extern "C"
