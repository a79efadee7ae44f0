// CUDA copy engine: D2H on one non-blocking side stream, H2D on another, ordered with events.
// Only the CUDA runtime API is used (linked statically), never libtorch: streams arrive as the
// integer handles torch exposes (torch.cuda.Stream.cuda_stream), which are driver stream handles
// shared by every runtime in the process.
#include <cuda_runtime.h>
#include <sys/mman.h>

#include <string>
#include <vector>

#include "ring.h"

namespace lightcache {
namespace {

[[noreturn]] void throw_cuda(cudaError_t e, const char* what) {
  cudaGetLastError();  // clear a non-sticky error so later calls are not poisoned
  throw RingError(std::string("lightcache._C: CUDA error in ") + what + ": " + cudaGetErrorString(e));
}

#define LC_CUDA(expr)                          \
  do {                                         \
    cudaError_t e_ = (expr);                   \
    if (e_ != cudaSuccess) throw_cuda(e_, #expr); \
  } while (0)

inline cudaStream_t as_stream(std::uintptr_t h) { return reinterpret_cast<cudaStream_t>(h); }

// Makes `device` current for this runtime only when it is not already (the caller normally runs
// under torch.cuda.device(...)), and restores the previous device afterwards.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    LC_CUDA(cudaGetDevice(&prev_));
    if (prev_ != device) {
      LC_CUDA(cudaSetDevice(device));
      switched_ = true;
    }
  }
  ~DeviceGuard() {
    if (switched_) cudaSetDevice(prev_);
  }

 private:
  int prev_ = 0;
  bool switched_ = false;
};

class CudaEngine final : public CopyEngine {
 public:
  explicit CudaEngine(int device) : device_(device) {
    auto [count, err] = cuda_device_count();
    if (!err.empty()) throw CudaUnavailableError("lightcache._C: no CUDA device (cudaGetDeviceCount: " + err + ")");
    if (count == 0) throw CudaUnavailableError("lightcache._C: no CUDA device (cudaGetDeviceCount: 0 devices)");
    if (device < 0 || device >= count)
      throw std::invalid_argument("device index " + std::to_string(device) + " is out of range (" +
                                  std::to_string(count) + " CUDA devices)");
    DeviceGuard g(device_);
    LC_CUDA(cudaStreamCreateWithFlags(&d2h_, cudaStreamNonBlocking));
    LC_CUDA(cudaStreamCreateWithFlags(&h2d_, cudaStreamNonBlocking));
    LC_CUDA(cudaEventCreateWithFlags(&mark_, cudaEventDisableTiming));
  }

  ~CudaEngine() override {
    // Errors are ignored: at interpreter exit the runtime may already be shutting down.
    int prev = device_;
    if (cudaGetDevice(&prev) == cudaSuccess && prev != device_) cudaSetDevice(device_);
    if (d2h_) cudaStreamSynchronize(d2h_);
    if (h2d_) cudaStreamSynchronize(h2d_);
    for (cudaEvent_t e : out_) cudaEventDestroy(e);
    for (cudaEvent_t e : in_) cudaEventDestroy(e);
    if (mark_) cudaEventDestroy(mark_);
    if (d2h_) cudaStreamDestroy(d2h_);
    if (h2d_) cudaStreamDestroy(h2d_);
    if (prev != device_) cudaSetDevice(prev);
    cudaGetLastError();
  }

  const char* device_type() const override { return "cuda"; }
  int device_index() const override { return device_; }

  HostSlab alloc_host(std::size_t bytes, PinnedMode mode) override {
    if (mode == PinnedMode::Off) return alloc_host_mlock(bytes, mode);
    DeviceGuard g(device_);
    HostSlab slab;
    slab.bytes = bytes;
    // Portable: the pages are pinned for every context, like torch's pinned allocator.
    cudaError_t e = cudaHostAlloc(&slab.ptr, bytes, cudaHostAllocPortable);
    if (e == cudaSuccess) {
      slab.pinned = true;
      slab.cuda_host_alloc = true;
      return slab;
    }
    cudaGetLastError();
    std::string why = std::string("cudaHostAlloc of ") + std::to_string(bytes) + " bytes failed: " +
                      cudaGetErrorString(e);
    if (mode == PinnedMode::Require)
      throw PinnedMemoryError("lightcache._C: " + why +
                              ". Use a smaller ring, or pass pinned='prefer' to fall back to pageable memory");
    HostSlab pageable = alloc_host_mlock(bytes, PinnedMode::Off);
    pageable.note = why + "; using pageable memory (copies are no longer asynchronous)";
    return pageable;
  }

  void free_host(HostSlab& slab) override {
    if (!slab.ptr) return;
    if (slab.cuda_host_alloc) {
      cudaFreeHost(slab.ptr);
      cudaGetLastError();
      slab.ptr = nullptr;
    } else {
      free_host_mlock(slab);
    }
  }

  void init_slots(int num_slots) override {
    DeviceGuard g(device_);
    out_.assign(static_cast<std::size_t>(num_slots), nullptr);
    in_.assign(static_cast<std::size_t>(num_slots), nullptr);
    for (int i = 0; i < num_slots; ++i) {
      LC_CUDA(cudaEventCreateWithFlags(&out_[static_cast<std::size_t>(i)], cudaEventDisableTiming));
      LC_CUDA(cudaEventCreateWithFlags(&in_[static_cast<std::size_t>(i)], cudaEventDisableTiming));
    }
  }

  void copy_out(int slot, void* host, const void* src, std::size_t n, std::uintptr_t producer) override {
    DeviceGuard g(device_);
    const auto i = static_cast<std::size_t>(slot);
    // Wait on the GPU, not the host: the producer's kernels, then old prefetches reading this slot
    // (a never-recorded event counts as complete).
    LC_CUDA(cudaEventRecord(mark_, as_stream(producer)));
    LC_CUDA(cudaStreamWaitEvent(d2h_, mark_, 0));
    LC_CUDA(cudaStreamWaitEvent(d2h_, in_[i], 0));
    if (n) LC_CUDA(cudaMemcpyAsync(host, src, n, cudaMemcpyDeviceToHost, d2h_));
    LC_CUDA(cudaEventRecord(out_[i], d2h_));
  }

  void copy_in(int slot, void* dst, const void* host, std::size_t n, std::uintptr_t consumer) override {
    DeviceGuard g(device_);
    const auto i = static_cast<std::size_t>(slot);
    LC_CUDA(cudaEventRecord(mark_, as_stream(consumer)));  // dst is free once queued work finishes
    LC_CUDA(cudaStreamWaitEvent(h2d_, mark_, 0));
    LC_CUDA(cudaStreamWaitEvent(h2d_, out_[i], 0));  // the slot holds the data
    if (n) LC_CUDA(cudaMemcpyAsync(dst, host, n, cudaMemcpyHostToDevice, h2d_));
    LC_CUDA(cudaEventRecord(in_[i], h2d_));
  }

  bool out_done(int slot) override { return query(out_[static_cast<std::size_t>(slot)]); }
  bool in_done(int slot) override { return query(in_[static_cast<std::size_t>(slot)]); }
  void wait_out(int slot) override { LC_CUDA(cudaEventSynchronize(out_[static_cast<std::size_t>(slot)])); }
  void wait_in(int slot) override { LC_CUDA(cudaEventSynchronize(in_[static_cast<std::size_t>(slot)])); }

  void stream_wait_out(int slot, std::uintptr_t stream) override {
    DeviceGuard g(device_);
    LC_CUDA(cudaStreamWaitEvent(as_stream(stream), out_[static_cast<std::size_t>(slot)], 0));
  }
  void stream_wait_in(int slot, std::uintptr_t stream) override {
    DeviceGuard g(device_);
    LC_CUDA(cudaStreamWaitEvent(as_stream(stream), in_[static_cast<std::size_t>(slot)], 0));
  }

  void synchronize() override {
    DeviceGuard g(device_);
    LC_CUDA(cudaStreamSynchronize(d2h_));
    LC_CUDA(cudaStreamSynchronize(h2d_));
  }

 private:
  static bool query(cudaEvent_t e) {
    cudaError_t r = cudaEventQuery(e);
    if (r == cudaSuccess) return true;
    if (r == cudaErrorNotReady) return false;
    throw_cuda(r, "cudaEventQuery");
  }

  int device_;
  cudaStream_t d2h_ = nullptr, h2d_ = nullptr;
  cudaEvent_t mark_ = nullptr;  // scratch: marks the producer/consumer stream's queued work
  std::vector<cudaEvent_t> out_, in_;
};

}  // namespace

std::pair<int, std::string> cuda_device_count() {
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    cudaGetLastError();
    return {0, std::string(cudaGetErrorString(e))};
  }
  return {n, std::string()};
}

int cuda_runtime_version() {
  int v = 0;
  cudaRuntimeGetVersion(&v);
  return v;
}

int cuda_driver_version() {
  int v = 0;
  if (cudaDriverGetVersion(&v) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return v;
}

std::unique_ptr<CopyEngine> make_cuda_engine(int device) {
  return std::unique_ptr<CopyEngine>(new CudaEngine(device));
}

}  // namespace lightcache
