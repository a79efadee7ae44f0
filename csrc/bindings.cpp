// lightcache._C: Python bindings of the ring buffer. Pointers and stream handles are ints; the
// Python wrapper (lightcache/ring.py) turns tensors into them and keeps them alive.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "ring.h"

namespace py = pybind11;
using namespace lightcache;

#ifndef LIGHTCACHE_BUILD_NOTE
#define LIGHTCACHE_BUILD_NOTE ""
#endif

namespace {

std::unique_ptr<RingCore> make_ring(const std::string& device, std::size_t slot_bytes, int num_slots,
                                    const std::string& full_policy, double timeout, const std::string& pinned,
                                    int device_index, bool sync_store, unsigned copy_delay_us) {
  // Parse everything before touching a device so bad arguments fail the same way everywhere.
  FullPolicy policy = parse_policy(full_policy);
  PinnedMode mode = parse_pinned(pinned);
  std::unique_ptr<CopyEngine> engine;
  if (device == "cpu") {
    engine = make_cpu_engine(copy_delay_us);
  } else if (device == "cuda") {
#ifdef LIGHTCACHE_WITH_CUDA
    engine = make_cuda_engine(device_index);
#else
    (void)device_index;
    throw CudaUnavailableError(
        "lightcache._C was built without CUDA (nvcc was not found or LIGHTCACHE_CUDA=0 at build time); "
        "reinstall with nvcc on PATH to get the CUDA ring buffer");
#endif
  } else {
    throw std::invalid_argument("device must be 'cpu' or 'cuda', got '" + device + "'");
  }
  return std::make_unique<RingCore>(std::move(engine), slot_bytes, num_slots, policy, timeout, mode, sync_store);
}

py::dict stats_dict(RingCore& r) {
  RingStats s = r.stats();
  py::dict d;
  d["device"] = s.device;
  d["slot_bytes"] = s.slot_bytes;
  d["num_slots"] = s.num_slots;
  d["slab_bytes"] = s.slab_bytes;
  d["slots_in_use"] = s.slots_in_use;
  d["bytes_in_use"] = s.bytes_in_use;
  d["high_water_bytes"] = s.high_water_bytes;
  d["pinned"] = s.pinned;
  d["pinned_mode"] = s.pinned_mode;
  d["pinned_note"] = s.pinned_note;
  d["full_policy"] = s.full_policy;
  d["stores"] = s.stores;
  d["prefetches"] = s.prefetches;
  d["fetches"] = s.fetches;
  d["releases"] = s.releases;
  d["evictions"] = s.evictions;
  d["full_waits"] = s.full_waits;
  d["bytes_d2h"] = s.bytes_d2h;
  d["bytes_h2d"] = s.bytes_h2d;
  return d;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "lightcache compiled ring buffer (pinned host slab, async D2H/H2D copies); see lightcache.ring";
  m.attr("cuda_compiled") = py::bool_(cuda_compiled());
  m.attr("build_note") = py::str(LIGHTCACHE_BUILD_NOTE);

  py::register_exception<RingError>(m, "RingError", PyExc_RuntimeError);
  PyObject* ring_error = m.attr("RingError").ptr();
  py::register_exception<RingFullError>(m, "RingFullError", ring_error);
  py::register_exception<StaleHandleError>(m, "StaleHandleError", ring_error);
  py::register_exception<PinnedMemoryError>(m, "PinnedMemoryError", ring_error);
  py::register_exception<CudaUnavailableError>(m, "CudaUnavailableError", PyExc_RuntimeError);

  m.def(
      "cuda_device_count",
      []() -> py::tuple {
#ifdef LIGHTCACHE_WITH_CUDA
        auto r = cuda_device_count();
        return py::make_tuple(r.first, r.second);
#else
        return py::make_tuple(0, std::string("lightcache._C was built without CUDA"));
#endif
      },
      "(number of CUDA devices, error text or '') as seen by the statically linked CUDA runtime");
  m.def(
      "cuda_versions",
      []() -> py::tuple {
#ifdef LIGHTCACHE_WITH_CUDA
        return py::make_tuple(cuda_runtime_version(), cuda_driver_version());
#else
        return py::make_tuple(0, 0);
#endif
      },
      "(CUDA runtime version compiled in, driver version or 0 when there is no driver)");
  m.def("memlock_limit", &memlock_limit_bytes, "soft RLIMIT_MEMLOCK in bytes, -1 when unlimited");
  m.def(
      "probe_pinned",
      [](std::size_t nbytes) -> py::tuple {
        HostSlab s = alloc_host_mlock(nbytes, PinnedMode::Prefer);
        bool ok = s.pinned;
        std::string note = s.note;
        free_host_mlock(s);
        return py::make_tuple(ok, note);
      },
      py::arg("nbytes"), "try to mlock nbytes of host memory: (ok, reason when not)");

  py::class_<RingCore>(m, "Ring")
      .def(py::init(&make_ring), py::arg("device"), py::arg("slot_bytes"), py::arg("num_slots"),
           py::arg("full_policy") = "error", py::arg("timeout") = 10.0, py::arg("pinned") = "prefer",
           py::arg("device_index") = 0, py::arg("sync_store") = false, py::arg("copy_delay_us") = 0u,
           py::call_guard<py::gil_scoped_release>())
      .def(
          "store",
          [](RingCore& r, std::uintptr_t src, std::size_t nbytes, std::uintptr_t stream) {
            StoreResult s = r.store(reinterpret_cast<const void*>(src), nbytes, stream);
            return std::make_tuple(s.slot, s.generation, s.ticket, s.evicted_slot, s.evicted_generation);
          },
          py::arg("src_ptr"), py::arg("nbytes"), py::arg("stream") = 0, py::call_guard<py::gil_scoped_release>(),
          "D2H copy into a free slot -> (slot, generation, ticket, evicted_slot, evicted_generation)")
      .def(
          "prefetch",
          [](RingCore& r, int slot, std::uint64_t gen, std::uintptr_t dst, std::size_t nbytes,
             std::uintptr_t stream) { return r.prefetch(slot, gen, reinterpret_cast<void*>(dst), nbytes, stream); },
          py::arg("slot"), py::arg("generation"), py::arg("dst_ptr"), py::arg("nbytes"), py::arg("stream") = 0,
          py::call_guard<py::gil_scoped_release>(), "async H2D copy of the slot into dst -> ticket")
      .def(
          "fetch",
          [](RingCore& r, int slot, std::uint64_t gen, std::uintptr_t dst, std::size_t nbytes, std::uintptr_t stream,
             bool use_prefetched) {
            return r.fetch(slot, gen, reinterpret_cast<void*>(dst), nbytes, stream, use_prefetched);
          },
          py::arg("slot"), py::arg("generation"), py::arg("dst_ptr"), py::arg("nbytes"), py::arg("stream") = 0,
          py::arg("use_prefetched") = false, py::call_guard<py::gil_scoped_release>(),
          "make `stream` wait for the slot's data in dst (copying first unless use_prefetched) -> ticket")
      .def("release", &RingCore::release, py::arg("slot"), py::arg("generation"),
           py::call_guard<py::gil_scoped_release>())
      .def("done", &RingCore::done, py::arg("ticket"), py::call_guard<py::gil_scoped_release>(),
           "has the copy with this ticket completed (never blocks)")
      .def("synchronize", &RingCore::synchronize, py::call_guard<py::gil_scoped_release>())
      .def("close", &RingCore::close, py::call_guard<py::gil_scoped_release>())
      .def_property_readonly("closed", &RingCore::closed)
      .def("stats", &stats_dict)
      .def(
          "state", [](RingCore& r, int slot) { return std::string(state_name(r.state(slot))); }, py::arg("slot"),
          py::call_guard<py::gil_scoped_release>())
      .def("generation", &RingCore::generation, py::arg("slot"), py::call_guard<py::gil_scoped_release>())
      .def("slot_nbytes", &RingCore::slot_nbytes, py::arg("slot"), py::call_guard<py::gil_scoped_release>())
      .def("is_live", &RingCore::is_live, py::arg("slot"), py::arg("generation"),
           py::call_guard<py::gil_scoped_release>())
      .def("slot_address", &RingCore::slot_address, py::arg("slot"))
      .def_property_readonly("slot_bytes", &RingCore::slot_bytes)
      .def_property_readonly("num_slots", &RingCore::num_slots)
      .def_property_readonly("pinned", &RingCore::pinned)
      .def_property_readonly("pinned_note", &RingCore::pinned_note)
      .def_property_readonly("device", &RingCore::device_type)
      .def_property_readonly("full_policy", [](RingCore& r) { return std::string(policy_name(r.policy())); });
}
