// Owning memory: Buffer (one aligned allocation) and Arena (bump allocator over a Buffer, reset per
// forward pass, so ops never allocate from the heap).
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <initializer_list>

#include "core/tensor.h"

namespace dsfuse {

class Buffer {
 public:
  Buffer() = default;
  explicit Buffer(size_t bytes);
  ~Buffer();
  Buffer(Buffer&& o) noexcept;
  Buffer& operator=(Buffer&& o) noexcept;
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;

  void* data() const { return data_; }
  size_t size() const { return size_; }
  void zero();

 private:
  void* data_ = nullptr;
  size_t size_ = 0;
};

class Arena {
 public:
  using AllocFn = std::function<void*(size_t)>;
  using FreeFn = std::function<void(void*)>;

  Arena() = default;
  explicit Arena(size_t bytes) : buf_(bytes) {}
  ~Arena();
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;
  // Memory from a device backend instead of the host heap (views are tagged with `device`).
  void set_allocator(AllocFn alloc, FreeFn free, Device device);
  void reserve(size_t bytes);  // reallocates only when larger; invalidates outstanding views
  // Allocates a contiguous tensor; throws (never grows) when the arena is exhausted.
  TensorView alloc(DType t, std::initializer_list<int64_t> dims);
  void* alloc_bytes(size_t bytes);
  void reset() { used_ = 0; }
  void reset_to(size_t mark) { used_ = mark; }  // frees everything allocated after `mark`
  size_t used() const { return used_; }
  size_t capacity() const { return ext_ ? ext_size_ : buf_.size(); }
  size_t high_water() const { return high_; }
  // Start of the memory (changes only when reserve() reallocates).
  char* base() const { return ext_ ? static_cast<char*>(ext_) : static_cast<char*>(buf_.data()); }

 private:
  Buffer buf_;
  AllocFn alloc_;
  FreeFn free_;
  Device device_{};
  void* ext_ = nullptr;
  size_t ext_size_ = 0;
  size_t used_ = 0;
  size_t high_ = 0;
};

}  // namespace dsfuse
