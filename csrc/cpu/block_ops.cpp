// Torch glue of the CPU block ops: prepack builds a layer's layout (kernels/layout.h) once, as a
// byte tensor the layer holds; each call is checked (block_args.h) and runs the torch-free
// kernels on that layout over at::parallel_for (torch's OpenMP pool, so torch.set_num_threads
// applies).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <tuple>
#include <type_traits>

#include "../block_args.h"
#include "../ops.h"
#include "kernels/block_conv.h"
#include "kernels/layout.h"
#include "kernels/tap_conv.h"

namespace sparsekit {
namespace {

// Below this many multiply-adds a call runs on the calling thread: two parallel regions cost
// more than the work (and much more when the machine is oversubscribed).
constexpr int64_t kParallelMacs = int64_t(1) << 22;

// Totals of the calls made while a phase profile is open (phase_profile); atomics, as the
// threads of a call add their own.
std::atomic<bool> profiling{false};
std::atomic<int64_t> calls{0}, pack_ns{0}, tiles_ns{0}, micro_ns{0}, store_ns{0}, grid{0},
    tap_calls{0}, pair_calls{0}, window_calls{0};

int64_t since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() -
                                                              start).count();
}

// macs: the layout's multiply-adds per output position.
template <typename Kernel, typename Weights>
void run_kernel(const BlockConvParams& p, std::chrono::steady_clock::time_point start,
                int64_t macs, const Weights& weights) {
  Kernel conv(p, weights);
  const int64_t units = conv.pack_units(), tiles = conv.num_tiles();
  const bool serial = macs * conv.grid_positions() < kParallelMacs;
  const int64_t threads = at::get_num_threads();
  // Too few tiles to balance the threads (a few per thread): each tile's rows are split too.
  const bool split = !serial && threads > 1 && tiles < 4 * threads;
  const int64_t items = tiles * (split ? conv.split_rows((4 * threads + tiles - 1) / tiles) : 1);
  const bool timed = profiling.load(std::memory_order_relaxed);
  at::parallel_for(0, units, serial ? units : 1, [&](int64_t begin, int64_t end) {
    conv.pack(begin, end);
  });
  if (!timed) {
    at::parallel_for(0, items, serial ? items : 1, [&](int64_t begin, int64_t end) {
      conv.run_tiles(begin, end);
    });
    return;
  }
  pack_ns += since(start);
  const auto packed = std::chrono::steady_clock::now();
  at::parallel_for(0, items, serial ? items : 1, [&](int64_t begin, int64_t end) {
    cpu::TileTimes times;
    conv.run_tiles(begin, end, &times);
    micro_ns += times.micro_ns;
    store_ns += times.store_ns;
  });
  tiles_ns += since(packed);
  grid += conv.grid_positions();
  ++calls;
  if constexpr (std::is_same_v<Kernel, cpu::TapConv>) {
    ++tap_calls;
    if (weights.pairs()) ++pair_calls;
  } else if (conv.windows()) {
    ++window_calls;
  }
}

// The layout's kernel on the call: the exact-position kernel for a "taps" layout (blocks of
// many rows), the planes kernel for a "planes" one (lone rows and small blocks, which would
// leave its 16-row panels mostly empty).
void run(const BlockConvParams& p, const void* layout) {
  const auto start = std::chrono::steady_clock::now();
  const cpu::LayoutHeader& header = cpu::layout_header(layout);
  if (header.kind == cpu::LayoutKind::Taps)
    run_kernel<cpu::TapConv>(p, start, header.values, cpu::TapWeights(layout));
  else
    run_kernel<cpu::BlockConv>(p, start, header.values, cpu::PlanesWeights(layout));
}

// The call's layout: the one byte tensor prepack made, checked against the call (O(1)).
const void* checked_layout(at::TensorList layout, at::IntArrayRef layout_ints,
                           const BlockConvParams& p) {
  TORCH_CHECK_VALUE(layout.size() == 1 && layout_ints.empty() && layout[0].device().is_cpu() &&
                        layout[0].scalar_type() == at::kByte && layout[0].dim() == 1 &&
                        layout[0].is_contiguous(),
                    "sparsekit: the CPU ops take as layout the one uint8 tensor that "
                    "sparsekit::prepack makes of a CPU pack, and no layout ints");
  const void* data = layout[0].const_data_ptr();
  const char* error = cpu::check_layout(data, layout[0].numel(), p.shape, p.dtype);
  TORCH_CHECK_VALUE(error == nullptr, "sparsekit: ", error);
  return data;
}

}  // namespace

void set_phase_profile(bool on) {
  if (on)
    for (auto* total :
         {&calls, &pack_ns, &tiles_ns, &micro_ns, &store_ns, &grid, &tap_calls, &pair_calls,
          &window_calls})
      *total = 0;
  profiling = on;
}

PhaseTotals phase_totals() {
  return {calls.load(), pack_ns.load(), tiles_ns.load(), micro_ns.load(), store_ns.load(),
          grid.load(), tap_calls.load(), pair_calls.load(), window_calls.load()};
}

std::tuple<std::vector<at::Tensor>, std::vector<int64_t>> prepack_cpu(
    const at::Tensor& values, const at::Tensor& row_idx, const at::Tensor& col_idx,
    const at::Tensor& block_ptr, int64_t out_channels, int64_t in_channels,
    at::IntArrayRef kernel_size, int64_t groups) {
  const BlockCall pack = pack_call(values, row_idx, col_idx, block_ptr, out_channels, in_channels,
                                   kernel_size, groups);
  const cpu::LayoutBytes bytes = cpu::build_layout(pack.p, [](int64_t units, const auto& body) {
    at::parallel_for(0, units, 1, body);
  });
  at::Tensor layout = at::empty({int64_t(bytes.size()) * cpu::kLayoutAlign}, at::kByte);
  std::memcpy(layout.data_ptr(), bytes.data(), layout.numel());
  return {{layout}, {}};  // the geometry it serves is in its header
}

at::Tensor block_conv2d_cpu(const at::Tensor& input, at::TensorList layout,
                            at::IntArrayRef layout_ints, int64_t out_channels,
                            at::IntArrayRef kernel_size, at::IntArrayRef stride,
                            at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                            const std::optional<at::Tensor>& bias, bool relu) {
  const BlockCall call = conv2d_call(input, out_channels, kernel_size, stride, padding, dilation,
                                     groups, bias, relu, c10::DeviceType::CPU);
  const void* data = checked_layout(layout, layout_ints, call.p);
  if (call.out.numel() > 0) run(call.p, data);
  return call.out;
}

at::Tensor block_linear_cpu(const at::Tensor& input, at::TensorList layout,
                            at::IntArrayRef layout_ints, int64_t out_features,
                            const std::optional<at::Tensor>& bias, bool relu) {
  const BlockCall call = linear_call(input, out_features, bias, relu, c10::DeviceType::CPU);
  const void* data = checked_layout(layout, layout_ints, call.p);
  if (call.out.numel() > 0) run(call.p, data);
  return call.out;
}

}  // namespace sparsekit
