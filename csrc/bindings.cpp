// Every sparsekit op: its schema beside the implementations registered for it.
#include <Python.h>
#include <torch/library.h>

#include "ops.h"

TORCH_LIBRARY(sparsekit, m) {
  // y[N, K, OH, OW]: sum over packed blocks of W_b @ im2col(x)[cols_b] into rows_b, + bias, ReLU.
  m.def(
      "block_conv2d(Tensor input, Tensor values, Tensor row_idx, Tensor col_idx, "
      "Tensor block_ptr, int out_channels, int[2] kernel_size, int[2] stride, int[2] padding, "
      "int[2] dilation, int groups, Tensor? bias, bool relu) -> Tensor");
  // y[*, K] = the same on x[*, C] with a 1x1 kernel.
  m.def(
      "block_linear(Tensor input, Tensor values, Tensor row_idx, Tensor col_idx, "
      "Tensor block_ptr, int out_features, Tensor? bias, bool relu) -> Tensor");
}

TORCH_LIBRARY_IMPL(sparsekit, CPU, m) {
  m.impl("block_conv2d", &sparsekit::block_conv2d_cpu);
  m.impl("block_linear", &sparsekit::block_linear_cpu);
}

// Importing sparsekit._C runs the registrations above; the module itself holds nothing.
PyMODINIT_FUNC PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}
