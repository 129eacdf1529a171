// The C++ kernels of the sparsekit ops, registered per dispatch key. The ops' schemas are written
// once, in sparsekit/backends/schema.py, which defines them before this library loads; the
// dispatcher then checks each kernel's C++ signature against its schema.
#include <Python.h>
#include <torch/library.h>

#include "ops.h"

TORCH_LIBRARY_IMPL(sparsekit, CPU, m) {
  m.impl("block_conv2d", TORCH_FN(sparsekit::block_conv2d_cpu));
  m.impl("block_linear", TORCH_FN(sparsekit::block_linear_cpu));
}

// Importing sparsekit._C runs the registrations above; the module itself holds nothing.
PyMODINIT_FUNC PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}
