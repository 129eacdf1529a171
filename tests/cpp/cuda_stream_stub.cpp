// Stands in for libtorch_cuda's aoti_torch_get_current_cuda_stream in the CUDA ops library CMake
// links against a CPU torch (which has no libtorch_cuda): it has no stream to give.
#include <cstdint>

extern "C" int32_t aoti_torch_get_current_cuda_stream(int32_t, void** ret_stream) {
  *ret_stream = nullptr;
  return 1;
}
