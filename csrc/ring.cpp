// RingCore: the slot protocol (states, generations, backpressure, completion tickets), shared by
// the CPU and CUDA engines.
#include "ring.h"

#include <pthread.h>
#include <sys/mman.h>
#include <sys/resource.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <limits>
#include <new>
#include <sstream>

namespace lightcache {

FullPolicy parse_policy(const std::string& s) {
  if (s == "error") return FullPolicy::Error;
  if (s == "evict_oldest") return FullPolicy::EvictOldest;
  if (s == "block") return FullPolicy::Block;
  throw std::invalid_argument("full_policy must be one of 'error', 'evict_oldest', 'block', got '" + s + "'");
}

PinnedMode parse_pinned(const std::string& s) {
  if (s == "require") return PinnedMode::Require;
  if (s == "prefer") return PinnedMode::Prefer;
  if (s == "off") return PinnedMode::Off;
  throw std::invalid_argument("pinned must be one of 'require', 'prefer', 'off', got '" + s + "'");
}

const char* policy_name(FullPolicy p) {
  switch (p) {
    case FullPolicy::Error: return "error";
    case FullPolicy::EvictOldest: return "evict_oldest";
    case FullPolicy::Block: return "block";
  }
  return "?";
}

const char* pinned_name(PinnedMode p) {
  switch (p) {
    case PinnedMode::Require: return "require";
    case PinnedMode::Prefer: return "prefer";
    case PinnedMode::Off: return "off";
  }
  return "?";
}

const char* state_name(SlotState s) {
  switch (s) {
    case SlotState::Free: return "free";
    case SlotState::CopyingOut: return "copying_out";
    case SlotState::OnHost: return "on_host";
    case SlotState::CopyingIn: return "copying_in";
  }
  return "?";
}

// ---- host memory ---------------------------------------------------------------------------

long long memlock_limit_bytes() {
  struct rlimit rl {};
  if (getrlimit(RLIMIT_MEMLOCK, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY) return -1;
  return static_cast<long long>(rl.rlim_cur);
}

static std::string describe_bytes(std::size_t n) {
  std::ostringstream os;
  os.precision(1);
  os << std::fixed << (static_cast<double>(n) / (1024.0 * 1024.0)) << " MiB";
  return os.str();
}

HostSlab alloc_host_mlock(std::size_t bytes, PinnedMode mode) {
  HostSlab slab;
  slab.bytes = bytes;
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) throw std::bad_alloc();
  slab.ptr = p;
  if (mode == PinnedMode::Off) {
    slab.note = "pinned='off': pageable memory";
    return slab;
  }
  if (mlock(p, bytes) == 0) {
    slab.pinned = true;
    return slab;
  }
  int err = errno;
  long long lim = memlock_limit_bytes();
  std::ostringstream os;
  os << "could not page-lock " << describe_bytes(bytes) << " of host memory with mlock (" << std::strerror(err)
     << "); RLIMIT_MEMLOCK is " << (lim < 0 ? std::string("unlimited") : std::to_string(lim / 1024) + " KiB");
  if (mode == PinnedMode::Require) {
    munmap(p, bytes);
    os << ". Raise the limit (ulimit -l), use a smaller ring, or pass pinned='prefer' to fall back to pageable "
          "memory";
    throw PinnedMemoryError("lightcache._C: " + os.str());
  }
  slab.note = os.str() + "; using pageable memory";
  return slab;
}

void free_host_mlock(HostSlab& slab) {
  if (!slab.ptr) return;
  if (slab.pinned) munlock(slab.ptr, slab.bytes);
  munmap(slab.ptr, slab.bytes);
  slab.ptr = nullptr;
}

// ---- fork ----------------------------------------------------------------------------------

namespace {
std::atomic<std::uint64_t> g_fork_generation{0};
void count_fork_in_child() { g_fork_generation.fetch_add(1, std::memory_order_relaxed); }  // async-signal-safe
// Registered when the library loads, so every fork() after any ring exists is counted.
const int g_atfork_registered = pthread_atfork(nullptr, nullptr, &count_fork_in_child);
}  // namespace

std::uint64_t fork_generation() {
  (void)g_atfork_registered;
  return g_fork_generation.load(std::memory_order_relaxed);
}

void RingCore::check_not_inherited(const char* what) const {
  if (inherited())
    throw RingError(std::string("lightcache._C: ") + what +
                    ": this ring was opened in the parent process before fork(); its copy engine does not exist "
                    "in this process: open a new ring here");
}

// ---- RingCore ------------------------------------------------------------------------------

static constexpr std::size_t kSlotAlign = 256;  // keeps every slot suitably aligned for DMA/vector copies

RingCore::RingCore(std::unique_ptr<CopyEngine> engine, std::size_t slot_bytes, int num_slots, FullPolicy policy,
                   double timeout_s, PinnedMode pinned, bool sync_store)
    : fork_gen_(fork_generation()),
      engine_(std::move(engine)),
      slot_bytes_(slot_bytes),
      stride_(0),
      policy_(policy),
      timeout_s_(timeout_s),
      pinned_mode_(pinned),
      sync_store_(sync_store) {
  if (!engine_) throw std::invalid_argument("engine must not be null");
  if (slot_bytes == 0) throw std::invalid_argument("slot_bytes must be >= 1, got 0");
  if (num_slots < 1) throw std::invalid_argument("num_slots must be >= 1, got " + std::to_string(num_slots));
  if (!(timeout_s >= 0.0)) throw std::invalid_argument("timeout must be >= 0 seconds");
  if (slot_bytes > std::numeric_limits<std::size_t>::max() / 2) throw std::invalid_argument("slot_bytes is too large");
  stride_ = (slot_bytes + kSlotAlign - 1) / kSlotAlign * kSlotAlign;
  if (stride_ > std::numeric_limits<std::size_t>::max() / static_cast<std::size_t>(num_slots))
    throw std::invalid_argument("slot_bytes * num_slots overflows");
  slab_ = engine_->alloc_host(stride_ * static_cast<std::size_t>(num_slots), pinned);
  try {
    engine_->init_slots(num_slots);
  } catch (...) {
    engine_->free_host(slab_);
    throw;
  }
  slots_.resize(static_cast<std::size_t>(num_slots));
}

RingCore::~RingCore() {
  if (inherited()) {
    // Leak the engine: destroying it would join a worker thread that does not exist in this process
    // (or call CUDA in a forked child). The bindings leak the whole RingCore (its mutex and
    // condition variable may be held by threads of the parent); this guard is for C++ owners.
    (void)engine_.release();
    return;
  }
  try {
    close();
  } catch (...) {
    // Destructors must not throw; close() already freed what it could.
  }
}

void RingCore::close() {
  if (inherited()) return;
  std::unique_lock<std::mutex> lk(mu_);
  if (closed_) return;
  closed_ = true;
  // Copies still in flight read/write the slab: finish them before freeing it.
  std::exception_ptr err;
  try {
    engine_->synchronize();
  } catch (...) {
    err = std::current_exception();
  }
  engine_->free_host(slab_);
  engine_.reset();
  freed_.notify_all();  // wake blocked stores so they see the ring closed
  if (err) std::rethrow_exception(err);
}

bool RingCore::closed() const {
  if (inherited()) return true;  // unusable here, and its mutex may be held forever
  std::lock_guard<std::mutex> lk(mu_);
  return closed_;
}

void RingCore::check_open() const {
  if (closed_) throw RingError("lightcache._C: the ring buffer is closed");
}

void RingCore::check_slot_index(int slot) const {
  if (slot < 0 || slot >= static_cast<int>(slots_.size()))
    throw std::invalid_argument("slot must be in [0, " + std::to_string(slots_.size()) + "), got " +
                                std::to_string(slot));
}

void* RingCore::host_ptr(int slot) const {
  return static_cast<char*>(slab_.ptr) + static_cast<std::size_t>(slot) * stride_;
}

std::uintptr_t RingCore::slot_address(int slot) const {
  check_not_inherited("slot_address");
  std::lock_guard<std::mutex> lk(mu_);
  check_open();
  check_slot_index(slot);
  return reinterpret_cast<std::uintptr_t>(host_ptr(slot));
}

RingCore::Slot& RingCore::check_handle(int slot, std::uint64_t gen, const char* what) {
  check_slot_index(slot);
  Slot& s = slots_[static_cast<std::size_t>(slot)];
  if (s.live && s.gen == gen) return s;
  std::ostringstream os;
  os << "lightcache._C: " << what << ": stale handle (slot " << slot << ", generation " << gen << "): ";
  if (gen > s.gen || (gen == s.gen && !s.live)) {
    os << "generation " << gen << " was never issued for this slot (now at " << s.gen << ")";
  } else if (gen + 1 == s.gen && s.last_end == End::Released) {
    os << "it was already released (double release or use after release)";
  } else if (gen + 1 == s.gen && s.last_end == End::Evicted) {
    os << "it was evicted to make room (full_policy='evict_oldest')";
  } else {
    os << "the slot has since been released or evicted and reused (now at generation " << s.gen << ")";
  }
  throw StaleHandleError(os.str());
}

void RingCore::poll_locked() {
  for (auto& s : slots_) {
    int idx = static_cast<int>(&s - slots_.data());
    if (s.out_pending && engine_->out_done(idx)) {
      s.out_pending = false;
      done_wm_[0] = std::max(done_wm_[0], s.out_seq >> 1);
    }
    if (s.in_pending && engine_->in_done(idx)) {
      s.in_pending = false;
      done_wm_[1] = std::max(done_wm_[1], s.in_seq >> 1);
    }
  }
}

void RingCore::end_locked(int slot, End why) {
  Slot& s = slots_[static_cast<std::size_t>(slot)];
  s.live = false;
  s.gen += 1;  // every handle to the old content is stale from now on
  s.last_end = why;
  bytes_in_use_ -= s.nbytes;
  live_slots_ -= 1;
  s.nbytes = 0;
  // Pending copies stay tracked: their tickets complete later, and the engines order the next
  // copy into this slot after them.
}

int RingCore::acquire_locked(std::unique_lock<std::mutex>& lk, StoreResult& res) {
  const int n = static_cast<int>(slots_.size());
  auto find_free = [&]() -> int {
    for (int k = 0; k < n; ++k) {
      int i = (cursor_ + k) % n;  // round-robin: spreads reuse so old prefetches rarely delay a store
      if (!slots_[static_cast<std::size_t>(i)].live) return i;
    }
    return -1;
  };
  int i = find_free();
  if (i >= 0) return i;

  switch (policy_) {
    case FullPolicy::Error: {
      std::ostringstream os;
      os << "lightcache._C: ring buffer is full: all " << n << " slots hold live entries (full_policy='error'); "
         << "release entries, add slots, or construct the ring with full_policy='evict_oldest' or 'block'";
      throw RingFullError(os.str());
    }
    case FullPolicy::Block: {
      n_full_waits_ += 1;
      auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s_);
      freed_.wait_until(lk, deadline, [&] { return closed_ || find_free() >= 0; });
      check_open();
      i = find_free();
      if (i >= 0) return i;
      std::ostringstream os;
      os << "lightcache._C: ring buffer is full: no slot was released within " << timeout_s_
         << " s (full_policy='block', " << n << " slots)";
      throw RingFullError(os.str());
    }
    case FullPolicy::EvictOldest: {
      // Oldest entry that is not mid-copy; if every entry is mid-copy, the oldest one after its
      // copies finish. Never evict under a running copy.
      int victim = -1, oldest_any = -1;
      for (int k = 0; k < n; ++k) {
        Slot& s = slots_[static_cast<std::size_t>(k)];
        if (oldest_any < 0 || s.order < slots_[static_cast<std::size_t>(oldest_any)].order) oldest_any = k;
        if (!s.out_pending && !s.in_pending &&
            (victim < 0 || s.order < slots_[static_cast<std::size_t>(victim)].order))
          victim = k;
      }
      if (victim < 0) {
        victim = oldest_any;
        Slot& s = slots_[static_cast<std::size_t>(victim)];
        if (s.out_pending) engine_->wait_out(victim);
        if (s.in_pending) engine_->wait_in(victim);
        poll_locked();
      }
      Slot& s = slots_[static_cast<std::size_t>(victim)];
      res.evicted_slot = victim;
      res.evicted_generation = s.gen;
      end_locked(victim, End::Evicted);
      n_evictions_ += 1;
      return victim;
    }
  }
  return -1;
}

StoreResult RingCore::store(const void* src, std::size_t nbytes, std::uintptr_t producer_stream) {
  check_not_inherited("store");
  std::unique_lock<std::mutex> lk(mu_);
  check_open();
  if (nbytes > slot_bytes_)
    throw std::invalid_argument("nbytes (" + std::to_string(nbytes) + ") exceeds slot_bytes (" +
                                std::to_string(slot_bytes_) + ")");
  if (nbytes > 0 && src == nullptr) throw std::invalid_argument("src pointer is null");
  poll_locked();
  StoreResult res{};
  res.evicted_slot = -1;
  int i = acquire_locked(lk, res);
  Slot& s = slots_[static_cast<std::size_t>(i)];
  std::uint64_t ticket = next_ticket(0);
  engine_->copy_out(i, host_ptr(i), src, nbytes, producer_stream);
  s.live = true;
  s.nbytes = nbytes;
  s.order = ++order_;
  s.out_seq = ticket;
  s.out_pending = true;
  cursor_ = (i + 1) % static_cast<int>(slots_.size());
  live_slots_ += 1;
  bytes_in_use_ += nbytes;
  high_water_ = std::max(high_water_, bytes_in_use_);
  n_stores_ += 1;
  bytes_d2h_ += nbytes;
  if (sync_store_) engine_->stream_wait_out(i, producer_stream);
  res.slot = i;
  res.generation = s.gen;
  res.ticket = ticket;
  return res;
}

std::uint64_t RingCore::prefetch(int slot, std::uint64_t gen, void* dst, std::size_t nbytes,
                                 std::uintptr_t consumer_stream) {
  check_not_inherited("prefetch");
  std::lock_guard<std::mutex> lk(mu_);
  check_open();
  Slot& s = check_handle(slot, gen, "prefetch");
  if (nbytes != s.nbytes)
    throw std::invalid_argument("nbytes (" + std::to_string(nbytes) + ") differs from the stored entry's " +
                                std::to_string(s.nbytes) + " bytes");
  if (nbytes > 0 && dst == nullptr) throw std::invalid_argument("dst pointer is null");
  std::uint64_t ticket = next_ticket(1);
  engine_->copy_in(slot, dst, host_ptr(slot), nbytes, consumer_stream);
  s.in_seq = ticket;
  s.in_pending = true;
  n_prefetches_ += 1;
  bytes_h2d_ += nbytes;
  return ticket;
}

std::uint64_t RingCore::fetch(int slot, std::uint64_t gen, void* dst, std::size_t nbytes,
                              std::uintptr_t consumer_stream, bool use_prefetched) {
  check_not_inherited("fetch");
  std::lock_guard<std::mutex> lk(mu_);
  check_open();
  Slot& s = check_handle(slot, gen, "fetch");
  if (nbytes != s.nbytes)
    throw std::invalid_argument("nbytes (" + std::to_string(nbytes) + ") differs from the stored entry's " +
                                std::to_string(s.nbytes) + " bytes");
  if (nbytes > 0 && dst == nullptr) throw std::invalid_argument("dst pointer is null");
  if (!use_prefetched || s.in_seq == 0) {
    std::uint64_t ticket = next_ticket(1);
    engine_->copy_in(slot, dst, host_ptr(slot), nbytes, consumer_stream);
    s.in_seq = ticket;
    s.in_pending = true;
    bytes_h2d_ += nbytes;
  }
  // The latest H2D of this slot covers every earlier one (FIFO), including the prefetch into dst.
  engine_->stream_wait_in(slot, consumer_stream);
  n_fetches_ += 1;
  return s.in_seq;
}

void RingCore::release(int slot, std::uint64_t gen) {
  check_not_inherited("release");
  std::lock_guard<std::mutex> lk(mu_);
  check_open();
  check_handle(slot, gen, "release");
  end_locked(slot, End::Released);
  n_releases_ += 1;
  freed_.notify_all();
}

bool RingCore::done(std::uint64_t ticket) {
  check_not_inherited("done");
  std::lock_guard<std::mutex> lk(mu_);
  if (closed_) return true;  // close() synchronised every copy
  const int dir = static_cast<int>(ticket & 1u);
  const std::uint64_t seq = ticket >> 1;
  if (seq <= done_wm_[dir]) return true;
  poll_locked();
  return seq <= done_wm_[dir];
}

void RingCore::synchronize() {
  check_not_inherited("synchronize");
  std::lock_guard<std::mutex> lk(mu_);
  check_open();
  engine_->synchronize();
  poll_locked();
}

RingStats RingCore::stats() {
  check_not_inherited("stats");
  std::lock_guard<std::mutex> lk(mu_);
  RingStats st{};
  st.slot_bytes = slot_bytes_;
  st.num_slots = slots_.size();
  st.slab_bytes = closed_ ? 0 : slab_.bytes;
  st.slots_in_use = live_slots_;
  st.bytes_in_use = bytes_in_use_;
  st.high_water_bytes = high_water_;
  st.pinned = slab_.pinned;
  st.pinned_note = slab_.note;
  st.device = engine_ ? engine_->device_type() : "closed";
  st.full_policy = policy_name(policy_);
  st.pinned_mode = pinned_name(pinned_mode_);
  st.stores = n_stores_;
  st.prefetches = n_prefetches_;
  st.fetches = n_fetches_;
  st.releases = n_releases_;
  st.evictions = n_evictions_;
  st.full_waits = n_full_waits_;
  st.bytes_d2h = bytes_d2h_;
  st.bytes_h2d = bytes_h2d_;
  return st;
}

SlotState RingCore::state(int slot) {
  check_not_inherited("state");
  std::lock_guard<std::mutex> lk(mu_);
  check_open();
  check_slot_index(slot);
  poll_locked();
  const Slot& s = slots_[static_cast<std::size_t>(slot)];
  if (!s.live) return SlotState::Free;
  if (s.out_pending) return SlotState::CopyingOut;
  if (s.in_pending) return SlotState::CopyingIn;
  return SlotState::OnHost;
}

std::uint64_t RingCore::generation(int slot) {
  check_not_inherited("generation");
  std::lock_guard<std::mutex> lk(mu_);
  check_slot_index(slot);
  return slots_[static_cast<std::size_t>(slot)].gen;
}

std::size_t RingCore::slot_nbytes(int slot) {
  check_not_inherited("slot_nbytes");
  std::lock_guard<std::mutex> lk(mu_);
  check_slot_index(slot);
  return slots_[static_cast<std::size_t>(slot)].nbytes;
}

bool RingCore::is_live(int slot, std::uint64_t gen) {
  check_not_inherited("is_live");
  std::lock_guard<std::mutex> lk(mu_);
  if (closed_ || slot < 0 || slot >= static_cast<int>(slots_.size())) return false;
  const Slot& s = slots_[static_cast<std::size_t>(slot)];
  return s.live && s.gen == gen;
}

}  // namespace lightcache
