// lightcache ring buffer: one host slab split into fixed-size slots, filled by device->host
// copies (store) and read back by host->device copies (prefetch/fetch).
//
// No torch here: pointers and stream handles are plain integers, so the module builds without
// torch and loads under any torch version. The copy machinery is behind CopyEngine: the CPU
// engine (worker-thread memcpy, always built) and the CUDA engine (streams + events, built when
// nvcc is available) share the whole slot protocol implemented by RingCore.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

namespace lightcache {

// ---- errors (mapped to Python exception classes in bindings.cpp) ----------------------------
struct RingError : std::runtime_error {
  using std::runtime_error::runtime_error;
};
struct RingFullError : std::runtime_error {
  using std::runtime_error::runtime_error;
};
struct StaleHandleError : std::runtime_error {
  using std::runtime_error::runtime_error;
};
struct PinnedMemoryError : std::runtime_error {
  using std::runtime_error::runtime_error;
};
// A CUDA ring on a machine without a usable device/driver.
struct CudaUnavailableError : std::runtime_error {
  using std::runtime_error::runtime_error;
};
// Bad arguments throw std::invalid_argument (Python ValueError).

enum class FullPolicy { Error, EvictOldest, Block };
enum class PinnedMode { Require, Prefer, Off };
enum class SlotState { Free, CopyingOut, OnHost, CopyingIn };

FullPolicy parse_policy(const std::string& s);
PinnedMode parse_pinned(const std::string& s);
const char* policy_name(FullPolicy p);
const char* pinned_name(PinnedMode p);
const char* state_name(SlotState s);

// The host slab. `pinned` tells whether the memory is page-locked; `note` says why not.
struct HostSlab {
  void* ptr = nullptr;
  std::size_t bytes = 0;
  bool pinned = false;
  bool cuda_host_alloc = false;  // freed with cudaFreeHost, else munmap
  std::string note;
};

// Page-locked (mlock) or pageable anonymous memory. Require -> PinnedMemoryError on failure;
// Prefer -> pageable memory with `note` explaining the failure; Off -> pageable.
HostSlab alloc_host_mlock(std::size_t bytes, PinnedMode mode);
void free_host_mlock(HostSlab& slab);
// Soft RLIMIT_MEMLOCK in bytes, or -1 when unlimited.
long long memlock_limit_bytes();

// One direction of copies per call; every call concerns the *latest* copy issued for a slot.
// Engines execute each direction's copies in issue order (FIFO), which RingCore relies on for
// its completion watermarks.
class CopyEngine {
 public:
  virtual ~CopyEngine() = default;
  virtual const char* device_type() const = 0;  // "cpu" or "cuda"
  virtual int device_index() const = 0;
  virtual HostSlab alloc_host(std::size_t bytes, PinnedMode mode) = 0;
  virtual void free_host(HostSlab& slab) = 0;
  virtual void init_slots(int num_slots) = 0;
  // D2H into `host`, ordered after the work already queued on `producer` and after the slot's
  // previous H2D reads (the slot may be reused while an old prefetch is still in flight).
  virtual void copy_out(int slot, void* host, const void* src, std::size_t n, std::uintptr_t producer) = 0;
  // H2D from `host`, ordered after the slot's D2H and after the work queued on `consumer`
  // (so `dst` is no longer in use).
  virtual void copy_in(int slot, void* dst, const void* host, std::size_t n, std::uintptr_t consumer) = 0;
  virtual bool out_done(int slot) = 0;  // non-blocking
  virtual bool in_done(int slot) = 0;   // non-blocking
  virtual void wait_out(int slot) = 0;  // host blocks
  virtual void wait_in(int slot) = 0;   // host blocks
  // `stream` waits for the slot's latest copy: device-side on CUDA (no host sync), a host wait
  // on CPU (CPU consumers are synchronous).
  virtual void stream_wait_out(int slot, std::uintptr_t stream) = 0;
  virtual void stream_wait_in(int slot, std::uintptr_t stream) = 0;
  virtual void synchronize() = 0;
};

// `copy_delay_us` slows every CPU copy down (tests use it to hold copies in flight).
std::unique_ptr<CopyEngine> make_cpu_engine(unsigned copy_delay_us = 0);
bool cuda_compiled();
#ifdef LIGHTCACHE_WITH_CUDA
std::unique_ptr<CopyEngine> make_cuda_engine(int device);
// (device count, "" on success or the runtime's error text)
std::pair<int, std::string> cuda_device_count();
int cuda_runtime_version();
int cuda_driver_version();
#endif

struct StoreResult {
  int slot;
  std::uint64_t generation;
  std::uint64_t ticket;           // completion ticket of the D2H copy (see RingCore::done)
  int evicted_slot = -1;          // evict_oldest: the handle this store invalidated
  std::uint64_t evicted_generation = 0;
};

// How many fork()s this process is away from the one that loaded the library (a pthread_atfork
// child handler counts them). A ring records it when it is opened: in a forked child the ring's
// copy engine (worker thread, CUDA streams) does not exist and its mutexes may be held forever,
// so an inherited ring refuses every call and is never torn down there (see RingCore::inherited).
std::uint64_t fork_generation();

struct RingStats {
  std::size_t slot_bytes, num_slots, slab_bytes;
  std::size_t slots_in_use, bytes_in_use, high_water_bytes;
  bool pinned;
  std::string pinned_note, device, full_policy, pinned_mode;
  std::uint64_t stores, prefetches, fetches, releases, evictions, full_waits;
  std::uint64_t bytes_d2h, bytes_h2d;
};

class RingCore {
 public:
  RingCore(std::unique_ptr<CopyEngine> engine, std::size_t slot_bytes, int num_slots, FullPolicy policy,
           double timeout_s, PinnedMode pinned, bool sync_store);
  ~RingCore();
  RingCore(const RingCore&) = delete;
  RingCore& operator=(const RingCore&) = delete;

  StoreResult store(const void* src, std::size_t nbytes, std::uintptr_t producer_stream);
  std::uint64_t prefetch(int slot, std::uint64_t gen, void* dst, std::size_t nbytes, std::uintptr_t consumer_stream);
  // use_prefetched: the caller knows the slot's latest prefetch went to this very `dst`, so only
  // wait for it; otherwise copy now, then wait.
  std::uint64_t fetch(int slot, std::uint64_t gen, void* dst, std::size_t nbytes, std::uintptr_t consumer_stream,
                      bool use_prefetched);
  void release(int slot, std::uint64_t gen);
  // Has the copy with this ticket completed? Never blocks.
  bool done(std::uint64_t ticket);
  void synchronize();
  void close();  // a no-op on an inherited ring (nothing of it may be touched in the child)
  bool closed() const;
  // Opened in a parent process before fork(): closed() is true, close() does nothing, every other
  // call raises RingError, and the destructor frees nothing (the slab is the parent's copy-on-write
  // memory, the engine's thread does not exist here, and locking or joining would hang).
  bool inherited() const { return fork_gen_ != fork_generation(); }

  RingStats stats();
  SlotState state(int slot);
  std::uint64_t generation(int slot);
  std::size_t slot_nbytes(int slot);
  bool is_live(int slot, std::uint64_t gen);
  std::size_t slot_bytes() const { return slot_bytes_; }
  int num_slots() const { return static_cast<int>(slots_.size()); }
  bool pinned() const { return slab_.pinned; }
  const std::string& pinned_note() const { return slab_.note; }
  FullPolicy policy() const { return policy_; }
  const char* device_type() const { return engine_ ? engine_->device_type() : "closed"; }
  std::uintptr_t slot_address(int slot) const;  // for tests

 private:
  enum class End { None, Released, Evicted };
  struct Slot {
    std::uint64_t gen = 0;
    bool live = false;
    std::size_t nbytes = 0;
    std::uint64_t order = 0;  // store order, for evict_oldest
    std::uint64_t out_seq = 0, in_seq = 0;
    bool out_pending = false, in_pending = false;
    End last_end = End::None;  // why generation `gen - 1` ended
  };

  void check_open() const;
  void check_not_inherited(const char* what) const;
  void check_slot_index(int slot) const;
  Slot& check_handle(int slot, std::uint64_t gen, const char* what);
  void poll_locked();
  int acquire_locked(std::unique_lock<std::mutex>& lk, StoreResult& res);
  void end_locked(int slot, End why);
  void* host_ptr(int slot) const;
  std::uint64_t next_ticket(int dir) { return ((++seq_) << 1) | static_cast<std::uint64_t>(dir); }

  std::uint64_t fork_gen_;
  std::unique_ptr<CopyEngine> engine_;
  std::size_t slot_bytes_, stride_;
  FullPolicy policy_;
  double timeout_s_;
  PinnedMode pinned_mode_;
  bool sync_store_;
  HostSlab slab_;
  std::vector<Slot> slots_;
  int cursor_ = 0;
  std::uint64_t seq_ = 0, order_ = 0;
  std::uint64_t done_wm_[2] = {0, 0};  // highest completed seq per direction (0 = D2H, 1 = H2D)
  std::size_t bytes_in_use_ = 0, high_water_ = 0, live_slots_ = 0;
  std::uint64_t n_stores_ = 0, n_prefetches_ = 0, n_fetches_ = 0, n_releases_ = 0, n_evictions_ = 0,
                n_full_waits_ = 0, bytes_d2h_ = 0, bytes_h2d_ = 0;
  mutable std::mutex mu_;
  std::condition_variable freed_;
  bool closed_ = false;
};

}  // namespace lightcache
