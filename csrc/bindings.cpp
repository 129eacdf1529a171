// The C++ kernels of the sparsekit ops, registered per dispatch key. The ops' schemas are written
// once, in sparsekit/backends/schema.py, which defines them before this library loads; the
// dispatcher then checks each kernel's C++ signature against its schema.
#include <Python.h>
#include <torch/library.h>

#include "ops.h"

TORCH_LIBRARY_IMPL(sparsekit, CPU, m) {
  m.impl("prepack", TORCH_FN(sparsekit::prepack_cpu));
  m.impl("block_conv2d", TORCH_FN(sparsekit::block_conv2d_cpu));
  m.impl("block_linear", TORCH_FN(sparsekit::block_linear_cpu));
}

namespace {

// phase_profile(on: bool) -> dict: the CPU kernels' phase totals since the last
// phase_profile(True) (see ops.h), then profiling on or off.
PyObject* phase_profile(PyObject*, PyObject* arg) {
  const int on = PyObject_IsTrue(arg);
  if (on < 0) return nullptr;
  const sparsekit::PhaseTotals t = sparsekit::phase_totals();
  sparsekit::set_phase_profile(on);
  return Py_BuildValue("{s:L,s:d,s:d,s:d,s:d,s:L,s:L,s:L,s:L}", "calls", (long long)t.calls,
                       "pack_s", t.pack_ns * 1e-9, "tiles_s", t.tiles_ns * 1e-9, "micro_s",
                       t.micro_ns * 1e-9, "store_s", t.store_ns * 1e-9, "grid_positions",
                       (long long)t.grid_positions, "tap_calls", (long long)t.tap_calls,
                       "pair_calls", (long long)t.pair_calls, "window_calls",
                       (long long)t.window_calls);
}

// refuse_gradient(op: str): sparsekit::<op>'s Autograd kernel, in C++ (see ops.h).
PyObject* refuse_gradient(PyObject*, PyObject* arg) {
  const char* op = PyUnicode_AsUTF8(arg);
  if (op == nullptr) return nullptr;
  try {
    sparsekit::refuse_gradient(op);
  } catch (const std::exception& error) {
    PyErr_SetString(PyExc_RuntimeError, error.what());
    return nullptr;
  }
  Py_RETURN_NONE;
}

PyMethodDef methods[] = {
    {"phase_profile", phase_profile, METH_O, "CPU kernel phase totals; profiling on or off."},
    {"refuse_gradient", refuse_gradient, METH_O,
     "Registers the C++ Autograd kernel that refuses gradients for sparsekit::<op>."},
    {nullptr, nullptr, 0, nullptr}};

}  // namespace

// Importing sparsekit._C runs the registrations above; the module holds the phase profile and
// refuse_gradient.
PyMODINIT_FUNC PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, methods};
  return PyModule_Create(&module);
}
