// Torch glue of the CPU block ops: argument checks, then the torch-free kernel over
// at::parallel_for (torch's OpenMP pool, so torch.set_num_threads applies).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <array>
#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <type_traits>

#include "../ops.h"
#include "kernels/block_conv.h"
#include "kernels/tap_conv.h"

namespace sparsekit {
namespace {

DType kernel_dtype(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::Float32;
    case at::kBFloat16: return DType::BFloat16;
    case at::kHalf: return DType::Float16;
    default: TORCH_CHECK_VALUE(false, "sparsekit: unsupported dtype ", t.scalar_type(),
                               " (float32, bfloat16 and float16 are supported)");
  }
  return DType::Float32;
}

// Checks the packed tensors and fills p.blocks / p.values; returns the contiguous tensors that
// must outlive the kernel call.
std::vector<at::Tensor> bind_blocks(BlockConvParams& p, const at::Tensor& input,
                                    const at::Tensor& values, const at::Tensor& row_idx,
                                    const at::Tensor& col_idx, const at::Tensor& block_ptr,
                                    const std::optional<at::Tensor>& bias) {
  TORCH_CHECK_VALUE(values.scalar_type() == input.scalar_type(), "sparsekit: values dtype ",
                    values.scalar_type(), " differs from input dtype ", input.scalar_type());
  TORCH_CHECK_VALUE(values.dim() == 1, "sparsekit: values must be 1-D");
  TORCH_CHECK_VALUE(row_idx.scalar_type() == at::kInt && col_idx.scalar_type() == at::kInt &&
                        row_idx.dim() == 1 && col_idx.dim() == 1,
                    "sparsekit: row_idx and col_idx must be 1-D int32");
  TORCH_CHECK_VALUE(block_ptr.scalar_type() == at::kLong && block_ptr.dim() == 2 &&
                        block_ptr.size(0) == 3 && block_ptr.size(1) >= 1,
                    "sparsekit: block_ptr must be int64 of shape [3, num_blocks + 1]");
  for (const at::Tensor* t : {&input, &values, &row_idx, &col_idx, &block_ptr})
    TORCH_CHECK_VALUE(t->device().is_cpu(), "sparsekit: all tensors must be on the CPU");
  std::vector<at::Tensor> keep = {values.contiguous(), row_idx.contiguous(),
                                  col_idx.contiguous(), block_ptr.contiguous()};
  const int64_t nb = block_ptr.size(1) - 1;
  const int64_t* ptr = keep[3].data_ptr<int64_t>();
  p.blocks = {keep[1].data_ptr<int32_t>(), keep[2].data_ptr<int32_t>(), ptr, ptr + nb + 1,
              ptr + 2 * (nb + 1), nb};
  const char* error = check_block_index(p.shape, p.blocks, row_idx.numel(), col_idx.numel(),
                                        values.numel());
  TORCH_CHECK_VALUE(error == nullptr, "sparsekit: ", error);
  p.values = keep[0].data_ptr();
  p.bias = nullptr;
  if (bias.has_value()) {
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == p.shape.K &&
                          bias->scalar_type() == input.scalar_type() && bias->device().is_cpu(),
                      "sparsekit: bias must be a CPU tensor of shape [", p.shape.K,
                      "] with the input's dtype");
    keep.push_back(bias->contiguous());
    p.bias = keep.back().data_ptr();
  }
  p.dtype = kernel_dtype(input);
  return keep;
}

// Below this many multiply-adds a call runs on the calling thread: two parallel regions cost
// more than the work (and much more when the machine is oversubscribed).
constexpr int64_t kParallelMacs = int64_t(1) << 22;

// Totals of the calls made while a phase profile is open (phase_profile); atomics, as the
// threads of a call add their own.
std::atomic<bool> profiling{false};
std::atomic<int64_t> calls{0}, pack_ns{0}, tiles_ns{0}, micro_ns{0}, store_ns{0}, grid{0},
    tap_calls{0};

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
  if (std::is_same_v<Kernel, cpu::TapConv>) ++tap_calls;
}

using Pack = std::array<const at::Tensor*, 4>;  // values, row_idx, col_idx, block_ptr

// A kernel's weights laid out for it, kept per pack: a layer calls with the same tensors every
// time, so its weights are laid out once (per call geometry, for a kernel whose layout depends
// on it). An entry holds weak references to the pack's tensors and their versions and data
// pointers: it is never matched to a tensor written to since, nor to another tensor at a
// reused address, and entries whose tensors were freed are dropped at the next lookup. A pack
// keeps at most kEntriesPerPack geometries, the oldest dropped first.
template <typename Weights>
class WeightsCache {
 public:
  // key: the geometry the layout depends on besides the tensors (their versions and data
  // pointers are added here); make() builds it.
  template <typename Make>
  std::shared_ptr<const Weights> get(std::vector<int64_t> key, const Pack& pack, Make make) {
    const bool cacheable = std::none_of(pack.begin(), pack.end(),
                                        [](const at::Tensor* t) { return t->is_inference(); });
    for (const at::Tensor* t : pack) {
      key.push_back(t->is_inference() ? 0 : t->_version());
      key.push_back(reinterpret_cast<int64_t>(t->const_data_ptr()));
    }
    if (cacheable) {
      std::lock_guard<std::mutex> lock(mutex_);
      entries_.erase(std::remove_if(entries_.begin(), entries_.end(), [](const Entry& e) {
                       return std::any_of(e.tensors.begin(), e.tensors.end(),
                                          [](const Weak& w) { return w.expired(); });
                     }), entries_.end());
      for (const Entry& e : entries_)
        if (e.key == key && same_tensors(e, pack)) return e.weights;
    }
    std::shared_ptr<const Weights> weights = make();
    if (cacheable) {
      auto weak = [&](size_t i) { return Weak(pack[i]->getIntrusivePtr()); };
      std::lock_guard<std::mutex> lock(mutex_);
      const auto count = std::count_if(entries_.begin(), entries_.end(),
                                       [&](const Entry& e) { return same_tensors(e, pack); });
      if (count >= kEntriesPerPack)
        entries_.erase(std::find_if(entries_.begin(), entries_.end(),
                                    [&](const Entry& e) { return same_tensors(e, pack); }));
      entries_.push_back({key, {weak(0), weak(1), weak(2), weak(3)}, weights});
    }
    return weights;
  }

 private:
  static constexpr long kEntriesPerPack = 4;
  using Weak = c10::weak_intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl>;
  struct Entry {
    std::vector<int64_t> key;
    std::array<Weak, 4> tensors;
    std::shared_ptr<const Weights> weights;
  };

  static bool same_tensors(const Entry& e, const Pack& pack) {
    for (size_t i = 0; i < pack.size(); ++i)
      if (e.tensors[i]._unsafe_get_target() != pack[i]->unsafeGetTensorImpl()) return false;
    return true;
  }

  std::mutex mutex_;
  std::vector<Entry> entries_;
};

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
    for (auto* total : {&calls, &pack_ns, &tiles_ns, &micro_ns, &store_ns, &grid, &tap_calls})
      *total = 0;
  profiling = on;
}

PhaseTotals phase_totals() {
  return {calls.load(), pack_ns.load(), tiles_ns.load(), micro_ns.load(), store_ns.load(),
          grid.load(), tap_calls.load()};
}

at::Tensor block_conv2d_cpu(const at::Tensor& input, const at::Tensor& values,
                            const at::Tensor& row_idx, const at::Tensor& col_idx,
                            const at::Tensor& block_ptr, int64_t out_channels,
                            at::IntArrayRef kernel_size, at::IntArrayRef stride,
                            at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                            const std::optional<at::Tensor>& bias, bool relu) {
  TORCH_CHECK_VALUE(input.dim() == 4, "sparsekit: block_conv2d input must be [N, C, H, W], got ",
                    input.sizes());
  TORCH_CHECK_VALUE(kernel_size.size() == 2 && stride.size() == 2 && padding.size() == 2 &&
                        dilation.size() == 2,
                    "sparsekit: kernel_size, stride, padding and dilation take two values");
  TORCH_CHECK_VALUE(kernel_size[0] > 0 && kernel_size[1] > 0 && stride[0] > 0 &&
                        stride[1] > 0 && dilation[0] > 0 && dilation[1] > 0 &&
                        padding[0] >= 0 && padding[1] >= 0 && out_channels > 0 && groups > 0,
                    "sparsekit: kernel_size, stride, dilation, out_channels and groups must be "
                    "positive and padding non-negative");
  BlockConvParams p{};
  ConvShape& s = p.shape;
  s.N = input.size(0), s.C = input.size(1), s.H = input.size(2), s.W = input.size(3);
  s.K = out_channels, s.KH = kernel_size[0], s.KW = kernel_size[1];
  s.stride_h = stride[0], s.stride_w = stride[1], s.pad_h = padding[0], s.pad_w = padding[1];
  s.dil_h = dilation[0], s.dil_w = dilation[1], s.groups = groups;
  s.OH = (s.H + 2 * s.pad_h - s.dil_h * (s.KH - 1) - 1) / s.stride_h + 1;
  s.OW = (s.W + 2 * s.pad_w - s.dil_w * (s.KW - 1) - 1) / s.stride_w + 1;
  TORCH_CHECK_VALUE(s.OH > 0 && s.OW > 0, "sparsekit: input ", input.sizes(),
                    " is smaller than the dilated kernel");
  auto keep = bind_blocks(p, input, values, row_idx, col_idx, block_ptr, bias);

  // The output keeps the input's memory format, as the schema's fake says (geometry.py).
  const bool channels_last =
      input.is_contiguous(at::MemoryFormat::ChannelsLast) && !input.is_contiguous();
  at::Tensor out = at::empty({s.N, s.K, s.OH, s.OW},
                             input.options().memory_format(channels_last
                                                               ? at::MemoryFormat::ChannelsLast
                                                               : at::MemoryFormat::Contiguous));
  if (out.numel() == 0) return out;
  p.input = input.data_ptr();
  for (int d = 0; d < 4; ++d) p.in_stride[d] = input.stride(d), p.out_stride[d] = out.stride(d);
  p.output = out.data_ptr();
  p.relu = relu;
  run(p, {&values, &row_idx, &col_idx, &block_ptr});
  return out;
}

at::Tensor block_linear_cpu(const at::Tensor& input, const at::Tensor& values,
                            const at::Tensor& row_idx, const at::Tensor& col_idx,
                            const at::Tensor& block_ptr, int64_t out_features,
                            const std::optional<at::Tensor>& bias, bool relu) {
  TORCH_CHECK_VALUE(input.dim() >= 1, "sparsekit: block_linear input must have a feature dim");
  TORCH_CHECK_VALUE(out_features > 0, "sparsekit: out_features must be positive");
  // [*, C] -> [M, C] (a view whenever the leading dims allow), seen as a 1x1 conv over
  // N=1, H=1, W=M: channel stride = the feature stride, W stride = the row stride.
  const at::Tensor x = input.dim() == 2 ? input : input.reshape({-1, input.size(-1)});
  BlockConvParams p{};
  ConvShape& s = p.shape;
  s.N = 1, s.C = x.size(1), s.H = 1, s.W = x.size(0), s.K = out_features;
  s.KH = s.KW = 1, s.stride_h = s.stride_w = 1, s.pad_h = s.pad_w = 0, s.dil_h = s.dil_w = 1;
  s.groups = 1, s.OH = 1, s.OW = s.W;
  auto keep = bind_blocks(p, input, values, row_idx, col_idx, block_ptr, bias);

  std::vector<int64_t> out_shape(input.sizes().begin(), input.sizes().end() - 1);
  out_shape.push_back(out_features);
  at::Tensor out = at::empty(out_shape, input.options());
  if (out.numel() == 0) return out;
  p.input = x.data_ptr();
  p.in_stride[0] = 0, p.in_stride[1] = x.stride(1), p.in_stride[2] = 0, p.in_stride[3] = x.stride(0);
  p.output = out.data_ptr();
  p.out_stride[0] = 0, p.out_stride[1] = 1, p.out_stride[2] = 0, p.out_stride[3] = out_features;
  p.relu = relu;
  run(p, {&values, &row_idx, &col_idx, &block_ptr});
  return out;
}

}  // namespace sparsekit
