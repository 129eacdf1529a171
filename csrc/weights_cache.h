// The per-pack cache of the CPU and CUDA glue. Core ATen/c10 headers only.
#pragma once

#include <ATen/core/Tensor.h>

#include <algorithm>
#include <array>
#include <memory>
#include <mutex>
#include <vector>

namespace sparsekit {

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

}  // namespace sparsekit
