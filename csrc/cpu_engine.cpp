// CPU copy engine: the same protocol as CUDA with a worker thread standing in for the copy
// streams. One FIFO worker executes both directions in issue order, so "latest copy of a slot done"
// implies every earlier copy is done, exactly as on a CUDA stream.
//
// A copy of at most kInlineCopyBytes issued while no copy is in flight runs on the calling thread
// instead: waking the worker (and, for a fetch, waiting to be woken back) costs more CPU than the
// memcpy itself, and on a loaded machine each hand-off can deschedule the caller for a
// scheduler slice. It is still FIFO (nothing earlier is pending) and completes like any copy
// (its ticket is done on return); the copy delay of tests always takes the worker.
//
// Stores (device -> host) write the host slot with non-temporal stores where the CPU has them
// (SSE2: every x86-64): a stored feature is not read again until a later step, and writing it
// through the cache would evict the producer's working set instead (on the Wan proxy, whose weights
// and activations fit the L3, cached copies slowed every op of the run by ~3 %). Fetches
// (host -> device) use memcpy: their destination is read right away.
#include <chrono>
#include <cstdint>
#include <cstring>
#include <deque>
#include <thread>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "ring.h"

namespace lightcache {
namespace {

constexpr std::size_t kInlineCopyBytes = std::size_t(1) << 20;
// Below this a streaming copy gains nothing (the few lines it spares the cache) and its fence costs.
constexpr std::size_t kStreamCopyBytes = std::size_t(4) << 10;

// memcpy(dst, src, n), writing dst around the cache where the CPU can (non-temporal stores, then a
// store fence, so the bytes are globally visible before the copy is marked complete).
void copy_streaming(void* dst, const void* src, std::size_t n) {
#if defined(__SSE2__)
  if (n >= kStreamCopyBytes) {
    auto* d = static_cast<unsigned char*>(dst);
    auto* s = static_cast<const unsigned char*>(src);
    std::size_t head = (16 - (reinterpret_cast<std::uintptr_t>(d) & 15)) & 15;  // to a 16-byte boundary
    std::memcpy(d, s, head);
    d += head;
    s += head;
    n -= head;
    std::size_t blocks = n / 64;
    for (std::size_t i = 0; i < blocks; ++i, d += 64, s += 64) {
      __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s));
      __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + 16));
      __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + 32));
      __m128i e = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + 48));
      _mm_stream_si128(reinterpret_cast<__m128i*>(d), a);
      _mm_stream_si128(reinterpret_cast<__m128i*>(d + 16), b);
      _mm_stream_si128(reinterpret_cast<__m128i*>(d + 32), c);
      _mm_stream_si128(reinterpret_cast<__m128i*>(d + 48), e);
    }
    std::memcpy(d, s, n - blocks * 64);
    _mm_sfence();
    return;
  }
#endif
  std::memcpy(dst, src, n);
}

class CpuEngine final : public CopyEngine {
 public:
  explicit CpuEngine(unsigned delay_us) : delay_us_(delay_us), worker_([this] { run(); }) {}

  ~CpuEngine() override {
    {
      std::lock_guard<std::mutex> lk(mu_);
      stop_ = true;
    }
    work_.notify_all();
    worker_.join();  // drains the queue first: queued copies still target live memory
  }

  const char* device_type() const override { return "cpu"; }
  int device_index() const override { return -1; }
  HostSlab alloc_host(std::size_t bytes, PinnedMode mode) override { return alloc_host_mlock(bytes, mode); }
  void free_host(HostSlab& slab) override { free_host_mlock(slab); }

  void init_slots(int num_slots) override {
    std::lock_guard<std::mutex> lk(mu_);
    out_.assign(static_cast<std::size_t>(num_slots), 0);
    in_.assign(static_cast<std::size_t>(num_slots), 0);
  }

  void copy_out(int slot, void* host, const void* src, std::size_t n, std::uintptr_t) override {
    enqueue(out_, slot, host, src, n, /*streaming=*/true);
  }
  void copy_in(int slot, void* dst, const void* host, std::size_t n, std::uintptr_t) override {
    enqueue(in_, slot, dst, host, n, /*streaming=*/false);
  }
  bool out_done(int slot) override { return is_done(ticket(out_, slot)); }
  bool in_done(int slot) override { return is_done(ticket(in_, slot)); }
  void wait_out(int slot) override { wait(ticket(out_, slot)); }
  void wait_in(int slot) override { wait(ticket(in_, slot)); }
  // CPU consumers/producers run synchronously on the host: "the stream waits" = the host waits.
  void stream_wait_out(int slot, std::uintptr_t) override { wait_out(slot); }
  void stream_wait_in(int slot, std::uintptr_t) override { wait_in(slot); }

  void synchronize() override {
    std::uint64_t t;
    {
      std::lock_guard<std::mutex> lk(mu_);
      t = issued_;
    }
    wait(t);
  }

 private:
  struct Task {
    void* dst;
    const void* src;
    std::size_t n;
    std::uint64_t ticket;
    bool streaming;
  };

  static void copy(const Task& t) {
    if (!t.n) return;
    if (t.streaming) {
      copy_streaming(t.dst, t.src, t.n);
    } else {
      std::memcpy(t.dst, t.src, t.n);
    }
  }

  std::uint64_t ticket(const std::vector<std::uint64_t>& v, int slot) {
    std::lock_guard<std::mutex> lk(mu_);
    return v[static_cast<std::size_t>(slot)];
  }

  void enqueue(std::vector<std::uint64_t>& latest, int slot, void* dst, const void* src, std::size_t n,
               bool streaming) {
    {
      std::lock_guard<std::mutex> lk(mu_);
      std::uint64_t t = ++issued_;
      latest[static_cast<std::size_t>(slot)] = t;
      Task task{dst, src, n, t, streaming};
      if (delay_us_ == 0 && n <= kInlineCopyBytes && completed_ + 1 == t) {
        // Nothing in flight: copy here, under the lock, so a copy issued meanwhile queues behind it.
        copy(task);
        completed_ = t;
        return;  // nobody can be waiting for a ticket issued just now: no notify
      }
      queue_.push_back(task);
    }
    work_.notify_one();
  }

  bool is_done(std::uint64_t t) {
    std::lock_guard<std::mutex> lk(mu_);
    return completed_ >= t;
  }

  void wait(std::uint64_t t) {
    std::unique_lock<std::mutex> lk(mu_);
    done_.wait(lk, [&] { return completed_ >= t; });
  }

  void run() {
    for (;;) {
      Task task;
      {
        std::unique_lock<std::mutex> lk(mu_);
        work_.wait(lk, [&] { return stop_ || !queue_.empty(); });
        if (queue_.empty()) return;  // stop requested and nothing left
        task = queue_.front();
        queue_.pop_front();
      }
      if (delay_us_) std::this_thread::sleep_for(std::chrono::microseconds(delay_us_));
      copy(task);
      {
        std::lock_guard<std::mutex> lk(mu_);
        completed_ = task.ticket;
      }
      done_.notify_all();
    }
  }

  unsigned delay_us_;
  std::mutex mu_;
  std::condition_variable work_, done_;
  std::deque<Task> queue_;
  std::vector<std::uint64_t> out_, in_;  // latest ticket per slot and direction
  std::uint64_t issued_ = 0, completed_ = 0;
  bool stop_ = false;
  std::thread worker_;  // last member: starts after everything it uses exists
};

}  // namespace

std::unique_ptr<CopyEngine> make_cpu_engine(unsigned copy_delay_us) {
  return std::unique_ptr<CopyEngine>(new CpuEngine(copy_delay_us));
}

bool cuda_compiled() {
#ifdef LIGHTCACHE_WITH_CUDA
  return true;
#else
  return false;
#endif
}

}  // namespace lightcache
