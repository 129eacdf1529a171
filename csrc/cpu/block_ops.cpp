// Torch glue of the CPU block ops: the checked call (block_args.h), then the torch-free kernels
// over at::parallel_for (torch's OpenMP pool, so torch.set_num_threads applies).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <array>
#include <atomic>
#include <chrono>
#include <memory>
#include <type_traits>

#include "../block_args.h"
#include "../ops.h"
#include "../weights_cache.h"
#include "kernels/block_conv.h"
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
    tap_calls{0}, pair_calls{0};

int64_t since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() -
                                                              start).count();
}

template <typename Kernel, typename... Weights>
void run_kernel(const BlockConvParams& p, std::chrono::steady_clock::time_point start,
                const Weights&... weights) {
  Kernel conv(p, weights...);
  const int64_t units = conv.pack_units(), tiles = conv.num_tiles();
  const bool serial = p.blocks.val_ptr[p.blocks.num_blocks] * conv.grid_positions() < kParallelMacs;
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
    if ((weights.pairs() && ...)) ++pair_calls;
  }
}

// Blocks of many rows run on the exact-position kernel; lone rows and small blocks, which
// would leave its 16-row panels mostly empty, on the planes kernel. The exact-position
// kernel's panels depend on the kernel's geometry only, the planes kernel's columns on the
// whole call's.
void run(const BlockConvParams& p, const Pack& pack) {
  const auto start = std::chrono::steady_clock::now();
  const ConvShape& s = p.shape;
  if (cpu::TapConv::suits(p)) {
    static WeightsCache<cpu::TapWeights> cache;
    const auto weights = cache.get({s.C, s.K, s.KH, s.KW, s.groups, int64_t(p.dtype)}, pack, [&] {
      auto w = std::make_shared<cpu::TapWeights>(p);
      at::parallel_for(0, w->pack_units(), 1, [&](int64_t begin, int64_t end) {
        w->pack(p, begin, end);
      });
      return w;
    });
    run_kernel<cpu::TapConv>(p, start, *weights);
  } else {
    static WeightsCache<cpu::PlanesWeights> cache;
    const auto weights = cache.get(
        {s.N, s.C, s.H, s.W, s.K, s.KH, s.KW, s.stride_h, s.stride_w, s.pad_h, s.pad_w, s.dil_h,
         s.dil_w, s.groups, int64_t(p.dtype)},
        pack, [&] { return std::make_shared<cpu::PlanesWeights>(p); });
    run_kernel<cpu::BlockConv>(p, start, *weights);
  }
}

}  // namespace

void set_phase_profile(bool on) {
  if (on)
    for (auto* total :
         {&calls, &pack_ns, &tiles_ns, &micro_ns, &store_ns, &grid, &tap_calls, &pair_calls})
      *total = 0;
  profiling = on;
}

PhaseTotals phase_totals() {
  return {calls.load(), pack_ns.load(), tiles_ns.load(), micro_ns.load(), store_ns.load(),
          grid.load(), tap_calls.load(), pair_calls.load()};
}

at::Tensor block_conv2d_cpu(const at::Tensor& input, const at::Tensor& values,
                            const at::Tensor& row_idx, const at::Tensor& col_idx,
                            const at::Tensor& block_ptr, int64_t out_channels,
                            at::IntArrayRef kernel_size, at::IntArrayRef stride,
                            at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                            const std::optional<at::Tensor>& bias, bool relu) {
  const BlockCall call = conv2d_call(input, values, row_idx, col_idx, block_ptr, out_channels,
                                     kernel_size, stride, padding, dilation, groups, bias, relu,
                                     c10::DeviceType::CPU);
  if (call.out.numel() > 0) run(call.p, {&values, &row_idx, &col_idx, &block_ptr});
  return call.out;
}

at::Tensor block_linear_cpu(const at::Tensor& input, const at::Tensor& values,
                            const at::Tensor& row_idx, const at::Tensor& col_idx,
                            const at::Tensor& block_ptr, int64_t out_features,
                            const std::optional<at::Tensor>& bias, bool relu) {
  const BlockCall call = linear_call(input, values, row_idx, col_idx, block_ptr, out_features,
                                     bias, relu, c10::DeviceType::CPU);
  if (call.out.numel() > 0) run(call.p, {&values, &row_idx, &col_idx, &block_ptr});
  return call.out;
}

}  // namespace sparsekit
