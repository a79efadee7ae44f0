// CUDA engine tests. Without a device they check the clear "no CUDA device" error; with one they
// round-trip bytes through device memory on a side stream and check the consumer-side ordering.
#include <cuda_runtime.h>

#include <vector>

#include "ring.h"
#include "test_util.h"

using namespace lightcache;

LC_TEST(cuda_device_or_clear_error) {
  auto [count, err] = cuda_device_count();
  if (count == 0) {
    LC_CHECK_THROWS(make_cuda_engine(0), CudaUnavailableError, "lightcache._C: no CUDA device (cudaGetDeviceCount: ");
    std::printf("  (no CUDA device: %s)\n", err.empty() ? "0 devices" : err.c_str());
    return;
  }
  LC_CHECK_THROWS(make_cuda_engine(count), std::invalid_argument, "out of range");
}

LC_TEST(cuda_roundtrip) {
  if (cuda_device_count().first == 0) {
    std::printf("  (skipped: no CUDA device)\n");
    return;
  }
  const std::size_t n = 1 << 20;
  RingCore r(make_cuda_engine(0), n, 4, FullPolicy::EvictOldest, 1.0, PinnedMode::Prefer, false);
  cudaStream_t compute;
  LC_CHECK(cudaStreamCreateWithFlags(&compute, cudaStreamNonBlocking) == cudaSuccess);
  unsigned char *src = nullptr, *dst = nullptr;
  LC_CHECK(cudaMalloc(&src, n) == cudaSuccess && cudaMalloc(&dst, n) == cudaSuccess);
  std::vector<unsigned char> host(n), back(n);
  for (int round = 0; round < 20; ++round) {
    for (std::size_t i = 0; i < n; ++i) host[i] = static_cast<unsigned char>(i * 7 + round);
    LC_CHECK(cudaMemcpyAsync(src, host.data(), n, cudaMemcpyHostToDevice, compute) == cudaSuccess);
    auto s = r.store(src, n, reinterpret_cast<std::uintptr_t>(compute));
    // No host sync between the steps: each copy is ordered after the compute stream's queued work.
    r.prefetch(s.slot, s.generation, dst, n, reinterpret_cast<std::uintptr_t>(compute));
    r.fetch(s.slot, s.generation, dst, n, reinterpret_cast<std::uintptr_t>(compute), true);
    LC_CHECK(cudaMemcpyAsync(back.data(), dst, n, cudaMemcpyDeviceToHost, compute) == cudaSuccess);
    LC_CHECK(cudaStreamSynchronize(compute) == cudaSuccess);
    LC_CHECK(back == host);
    r.release(s.slot, s.generation);
  }
  r.synchronize();
  cudaFree(src);
  cudaFree(dst);
  cudaStreamDestroy(compute);
}

int main(int argc, char** argv) { return lctest::run_all(argc, argv); }
