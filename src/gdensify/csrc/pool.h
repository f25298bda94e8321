// A cache of large memory blocks shared by rasterize.cpp and project.cpp (one instance per process).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/from_blob.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <unordered_map>
#include <utility>
#include <vector>

namespace gds {

// First-touch page faults are expensive (a few microseconds per 4 KiB page on small VMs), and glibc returns large
// freed blocks to the OS, so every call would fault its buffers in again. Large buffers therefore come from a
// small cache of blocks that stay mapped: scratch space directly, and tensors (saved for backward, returned) via
// from_blob with a deleter that hands the block back. The cache holds at most `cap` bytes of free blocks
// (GDENSIFY_CPU_POOL_MB, default 512; oldest evicted first; 0 disables it); release_cache() empties it.
class Pool {
 public:
  static Pool& get() {
    static Pool* p = new Pool();  // never destroyed: tensors may outlive static destruction order
    return *p;
  }
  void* acquire(size_t bytes) {
    bytes = round(bytes);
    if (bytes >= kMin && cap_ > 0) {
      std::lock_guard<std::mutex> lock(mu_);
      size_t best = free_.size();
      for (size_t i = 0; i < free_.size(); ++i)
        if (free_[i].first >= bytes && free_[i].first <= 2 * bytes + (size_t(1) << 20) &&
            (best == free_.size() || free_[i].first < free_[best].first))
          best = i;
      if (best < free_.size()) {
        void* p = free_[best].second;
        cached_ -= free_[best].first;
        sizes_[p] = free_[best].first;
        free_.erase(free_.begin() + long(best));
        return p;
      }
    }
    void* p = std::aligned_alloc(64, bytes);
    TORCH_CHECK(p != nullptr, "gdensify cpu rasterizer: out of memory allocating ", bytes, " bytes");
    if (bytes >= kMin && cap_ > 0) {
      std::lock_guard<std::mutex> lock(mu_);
      sizes_[p] = bytes;
    }
    return p;
  }
  void release(void* p) {
    if (p == nullptr) return;
    std::lock_guard<std::mutex> lock(mu_);
    auto it = sizes_.find(p);
    if (it == sizes_.end()) {
      std::free(p);
      return;
    }
    size_t bytes = it->second;
    sizes_.erase(it);
    if (bytes > cap_) {
      std::free(p);
      return;
    }
    while (cached_ + bytes > cap_ && !free_.empty()) {  // evict the oldest blocks first
      std::free(free_.front().second);
      cached_ -= free_.front().first;
      free_.erase(free_.begin());
    }
    free_.emplace_back(bytes, p);
    cached_ += bytes;
  }
  void clear() {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& f : free_) std::free(f.second);
    free_.clear();
    cached_ = 0;
  }
  size_t cached() {
    std::lock_guard<std::mutex> lock(mu_);
    return cached_;
  }

 private:
  Pool() {
    const char* env = std::getenv("GDENSIFY_CPU_POOL_MB");
    double mb = env ? std::atof(env) : 512.0;
    cap_ = mb > 0 ? size_t(mb * 1048576.0) : 0;
  }
  static size_t round(size_t b) { return ((b + 63) / 64) * 64 + 64; }
  static constexpr size_t kMin = size_t(1) << 18;  // smaller blocks: plain malloc is fine
  std::mutex mu_;
  std::vector<std::pair<size_t, void*>> free_;
  std::unordered_map<void*, size_t> sizes_;
  size_t cached_ = 0, cap_ = 0;
};

// An uninitialised tensor whose memory comes from the pool.
inline at::Tensor pooled_empty(at::IntArrayRef sizes, at::ScalarType dtype) {
  int64_t numel = 1;
  for (int64_t s : sizes) numel *= s;
  const size_t bytes = size_t(std::max<int64_t>(numel, 1)) * at::elementSize(dtype);
  void* p = Pool::get().acquire(bytes);
  return at::from_blob(p, sizes, [](void* q) { Pool::get().release(q); }, at::TensorOptions().dtype(dtype));
}

}  // namespace gds
