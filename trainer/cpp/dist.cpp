// The distributed half of the trainer's C++ bridge: PyTorch's own c10d engine, as DDP drives it.
// A TCPStore rendezvous, a ProcessGroupGloo (CPU) or ProcessGroupNCCL (CUDA) backend inside a
// c10d::ProcessGroup, c10d's broadcast_coalesced for the initial state, and c10d's Reducer for the
// gradients (bucketed all-reduce overlapped with the backward pass). Rust side: trainer/src/dist.rs.
// Same conventions as bridge.cpp (guard.h): every function catches C++ exceptions into a message.
//
// Built with USE_C10D_GLOO (Gloo's headers from Debian's libgloo-dev; Gloo itself is inside
// libtorch_cpu) and, when CUDA and NCCL headers are found, USE_C10D_NCCL (trainer/build.rs).

#include <c10/core/GradMode.h>
#include <c10/util/Logging.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#ifdef USE_C10D_GLOO
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#endif
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/csrc/distributed/c10d/comm.hpp>
#include <torch/csrc/distributed/c10d/reducer.hpp>
#ifdef USE_C10D_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <stdexcept>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "guard.h"

// A process group and the store it met its peers through.
struct imgtrain_dist {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::ProcessGroup> pg;
  c10::DeviceType device_type;
  int8_t cuda_device;
};

// c10d's Reducer over a process group, as DDP builds it.
struct imgtrain_reducer {
  std::unique_ptr<c10d::Reducer> reducer;
};

namespace {

// The backend codes of imgtrain_dist_new; part of the ABI (dist.rs: Backend).
enum BackendCode : int32_t {
  kGloo = 0,
  kNccl = 1,
};

std::chrono::milliseconds millis(int64_t ms) {
  if (ms <= 0) {
    throw std::invalid_argument("the timeout must be positive");
  }
  return std::chrono::milliseconds(ms);
}

// Every rank writes the world size it was started with; each then compares its own with rank 0's, so
// that a rank started with another --world-size fails at once, naming both values, instead of waiting
// for peers that never come.
void check_world_size(c10d::Store& store, int rank, int world) {
  const std::string mine = std::to_string(world);
  store.set("imgtrain/world_size/" + std::to_string(rank),
            std::vector<uint8_t>(mine.begin(), mine.end()));
  const auto theirs = store.get("imgtrain/world_size/0");
  const std::string zero(theirs.begin(), theirs.end());
  if (zero != mine) {
    throw std::runtime_error("this rank (" + std::to_string(rank) + ") was started with world size " +
                             mine + ", rank 0 with world size " + zero +
                             ": every rank must be given the same --world-size");
  }
}

#ifdef USE_C10D_GLOO
// Gloo's network device as torch.distributed picks it: the interface named by GLOO_SOCKET_IFNAME, else
// the address the host name resolves to (falling back to loopback).
std::shared_ptr<::gloo::transport::Device> gloo_device() {
  const char* ifname = std::getenv("GLOO_SOCKET_IFNAME");
  if (ifname != nullptr && ifname[0] != '\0') {
    return c10d::ProcessGroupGloo::createDeviceForInterface(ifname);
  }
  return c10d::ProcessGroupGloo::createDefaultDevice();
}
#endif

// While it lives, c10d's own log lines (the store's connection retries and time-outs, each with a C++
// backtrace) are held back: the failure comes back as one error instead. TORCH_CPP_LOG_LEVEL, when set,
// is left to decide.
class QuietLogs {
 public:
  QuietLogs() : active_(std::getenv("TORCH_CPP_LOG_LEVEL") == nullptr) {
    if (active_) {
      saved_ = FLAGS_caffe2_log_level;
      FLAGS_caffe2_log_level = 3; // FATAL only
    }
  }
  ~QuietLogs() {
    if (active_) {
      FLAGS_caffe2_log_level = saved_;
    }
  }
  QuietLogs(const QuietLogs&) = delete;
  QuietLogs& operator=(const QuietLogs&) = delete;

 private:
  bool active_;
  int saved_ = 0;
};

} // namespace

extern "C" {

// Joins the process group of `world` ranks as `rank`: rank 0 serves the TCPStore at host:port, the
// others connect to it (each side gives up after `timeout_ms`, which also bounds every collective).
// `backend`: kGloo (CPU tensors) or kNccl (CUDA tensors on `cuda_device`).
char* imgtrain_dist_new(const char* host, uint16_t port, int32_t rank, int32_t world,
                        int64_t timeout_ms, int32_t backend, int8_t cuda_device,
                        imgtrain_dist** out) {
  return imgtrain::guarded([&] {
    *out = nullptr;
    if (world < 1 || rank < 0 || rank >= world) {
      throw std::invalid_argument("rank " + std::to_string(rank) + " of world size " +
                                  std::to_string(world) + " is not a rank of that world");
    }
    const auto timeout = millis(timeout_ms);
    QuietLogs quiet;
    c10d::TCPStoreOptions opts;
    opts.port = port;
    opts.isServer = rank == 0;
    opts.numWorkers = static_cast<size_t>(world);
    opts.waitWorkers = true;
    opts.timeout = timeout;
    auto tcp = c10::make_intrusive<c10d::TCPStore>(std::string(host), opts);
    check_world_size(*tcp, rank, world);
    c10::intrusive_ptr<c10d::Store> store =
        c10::make_intrusive<c10d::PrefixStore>("imgtrain/default_pg/", tcp);
    auto pg = c10::make_intrusive<c10d::ProcessGroup>(store, rank, world);
    auto result = std::make_unique<imgtrain_dist>();
    if (backend == kGloo) {
#ifdef USE_C10D_GLOO
      auto gloo_opts = c10d::ProcessGroupGloo::Options::create(timeout);
      gloo_opts->devices.push_back(gloo_device());
      auto gloo = c10::make_intrusive<c10d::ProcessGroupGloo>(
          c10::make_intrusive<c10d::PrefixStore>("gloo/", store), rank, world, gloo_opts);
      pg->setDefaultBackend(c10d::ProcessGroup::BackendType::GLOO);
      pg->setBackend(c10::DeviceType::CPU, c10d::ProcessGroup::BackendType::GLOO, gloo);
      // Gloo also reduces CUDA tensors (through host memory), as torch.distributed lets it.
      pg->setBackend(c10::DeviceType::CUDA, c10d::ProcessGroup::BackendType::GLOO, gloo);
      result->device_type = c10::DeviceType::CPU;
#else
      throw std::runtime_error(
          "this imgtrain was built without Gloo (Debian's libgloo-dev was missing at build time); "
          "install it and rebuild");
#endif
    } else if (backend == kNccl) {
#ifdef USE_C10D_NCCL
      if (cuda_device < 0) {
        throw std::invalid_argument("the NCCL backend needs a CUDA device");
      }
      auto nccl_opts = c10d::ProcessGroupNCCL::Options::create();
      nccl_opts->timeout = timeout;
      auto nccl = c10::make_intrusive<c10d::ProcessGroupNCCL>(
          c10::make_intrusive<c10d::PrefixStore>("nccl/", store), rank, world, nccl_opts);
      nccl->setBoundDeviceId(c10::Device(c10::DeviceType::CUDA, cuda_device));
      pg->setDefaultBackend(c10d::ProcessGroup::BackendType::NCCL);
      pg->setBackend(c10::DeviceType::CUDA, c10d::ProcessGroup::BackendType::NCCL, nccl);
#ifdef USE_C10D_GLOO
      // Host tensors (the agreement to stop, small counts) through Gloo, as torch.distributed's default
      // "cpu:gloo,cuda:nccl" group: no device work, no host-device sync.
      auto host_opts = c10d::ProcessGroupGloo::Options::create(timeout);
      host_opts->devices.push_back(gloo_device());
      pg->setBackend(c10::DeviceType::CPU, c10d::ProcessGroup::BackendType::GLOO,
                     c10::make_intrusive<c10d::ProcessGroupGloo>(
                         c10::make_intrusive<c10d::PrefixStore>("gloo/", store), rank, world,
                         host_opts));
#endif
      result->device_type = c10::DeviceType::CUDA;
#else
      (void)cuda_device;
      throw std::runtime_error(
          "this imgtrain was built without NCCL (no CUDA/NCCL headers at build time); rebuild "
          "after `. scripts/libtorch-env.sh`, or use --dist-backend gloo");
#endif
    } else {
      throw std::invalid_argument("unknown backend code " + std::to_string(backend));
    }
    result->cuda_device = cuda_device;
    result->store = tcp;
    result->pg = pg;
    *out = result.release();
  });
}

// Leaves the process group. NCCL's communicators are shut down first, as destroy_process_group does.
void imgtrain_dist_free(imgtrain_dist* d) {
  if (d == nullptr) {
    return;
  }
  (void)imgtrain::guarded([&] {
    if (d->device_type == c10::DeviceType::CUDA) {
      d->pg->shutdown();
    }
  });
  (void)imgtrain::guarded([&] { delete d; });
}

// Copies `n` tensors of rank `root` into every rank's, in buckets of at most 250 MiB (DDP's
// _sync_module_states); returns when done.
char* imgtrain_dist_broadcast(imgtrain_dist* d, const at::Tensor* const* tensors, size_t n,
                              int32_t root) {
  return imgtrain::guarded([&] {
    // The copies into parameters (leaves that require grad) are not part of any graph.
    c10::NoGradGuard no_grad;
    std::vector<at::Tensor> list;
    list.reserve(n);
    for (size_t i = 0; i < n; ++i) {
      list.push_back(*tensors[i]);
    }
    if (!list.empty()) {
      c10d::broadcast_coalesced(d->pg, list, 250 * 1024 * 1024, root);
    }
  });
}

// `t` (in place) becomes the sum (op 0), minimum (1) or maximum (2) over the ranks; returns when done.
char* imgtrain_dist_allreduce(imgtrain_dist* d, const at::Tensor* t, int32_t op) {
  return imgtrain::guarded([&] {
    c10d::AllreduceOptions opts;
    switch (op) {
      case 0: opts.reduceOp = c10d::ReduceOp::SUM; break;
      case 1: opts.reduceOp = c10d::ReduceOp::MIN; break;
      case 2: opts.reduceOp = c10d::ReduceOp::MAX; break;
      default: throw std::invalid_argument("unknown reduce op code " + std::to_string(op));
    }
    std::vector<at::Tensor> list{*t};
    d->pg->allreduce(list, opts)->wait();
  });
}

// Waits until every rank has called it.
char* imgtrain_dist_barrier(imgtrain_dist* d) {
  return imgtrain::guarded([&] {
    c10d::BarrierOptions opts;
    if (d->device_type == c10::DeviceType::CUDA) {
      opts.device = c10::Device(c10::DeviceType::CUDA, d->cuda_device);
    }
    d->pg->barrier(opts)->wait();
  });
}

// A Reducer for the `n` parameters (leaves that require grad), built as DistributedDataParallel
// builds it by default: one bucket for the first iteration, then rebuilt in the order gradients
// became ready, capped at `bucket_cap_bytes` (DDP's bucket_cap_mb) with a 1 MiB first bucket.
char* imgtrain_reducer_new(imgtrain_dist* d, const at::Tensor* const* params, size_t n,
                           int64_t bucket_cap_bytes, imgtrain_reducer** out) {
  return imgtrain::guarded([&] {
    *out = nullptr;
    std::vector<at::Tensor> list;
    list.reserve(n);
    for (size_t i = 0; i < n; ++i) {
      list.push_back(*params[i]);
    }
    const std::vector<bool> sparse(n, false);
    // DDP without find_unused_parameters: a single bucket of every parameter at first.
    const std::vector<size_t> limits{static_cast<size_t>(INT64_MAX)};
    auto assigned = c10d::compute_bucket_assignment_by_size(list, limits, sparse);
    auto buckets = std::get<0>(assigned);
    std::vector<int64_t> caps;
    for (size_t s : std::get<1>(assigned)) {
      caps.push_back(static_cast<int64_t>(s));
    }
    std::reverse(buckets.begin(), buckets.end());
    std::reverse(caps.begin(), caps.end());
    auto result = std::make_unique<imgtrain_reducer>();
    result->reducer = std::make_unique<c10d::Reducer>(
        list, buckets, d->pg, sparse, bucket_cap_bytes, /*find_unused_parameters=*/false,
        /*gradient_as_bucket_view=*/false, std::unordered_map<size_t, std::string>{},
        static_cast<int64_t>(c10d::kDefaultFirstBucketBytes),
        /*skip_all_reduce_unused_params=*/false, /*use_python_reducer=*/false, caps);
    *out = result.release();
  });
}

// Before a training forward pass, as DDP's forward does: counts the iteration and, after the first,
// rebuilds the buckets once (a collective: every rank calls it at the same step).
char* imgtrain_reducer_before_forward(imgtrain_reducer* r) {
  return imgtrain::guarded([&] {
    r->reducer->prepare_for_forward();
    r->reducer->rebuild_buckets();
  });
}

// Between the forward and the backward pass: arms the gradient hooks. When backward returns, every
// parameter's .grad() holds the mean over the ranks.
char* imgtrain_reducer_before_backward(imgtrain_reducer* r) {
  return imgtrain::guarded([&] { r->reducer->prepare_for_backward({}); });
}

void imgtrain_reducer_free(imgtrain_reducer* r) {
  (void)imgtrain::guarded([&] { delete r; });
}

} // extern "C"
