#include "core/arena.h"

#include <cstdlib>
#include <cstring>
#include <new>
#include <utility>

namespace dsfuse {

constexpr size_t kAlign = 64;

Buffer::Buffer(size_t bytes) : size_(bytes) {
  if (bytes == 0) return;
  data_ = std::aligned_alloc(kAlign, (bytes + kAlign - 1) / kAlign * kAlign);
  if (!data_) fail(cat("out of memory allocating ", bytes, " bytes"));
}

Buffer::~Buffer() { std::free(data_); }

Buffer::Buffer(Buffer&& o) noexcept : data_(std::exchange(o.data_, nullptr)), size_(std::exchange(o.size_, 0)) {}

Buffer& Buffer::operator=(Buffer&& o) noexcept {
  if (this != &o) {
    std::free(data_);
    data_ = std::exchange(o.data_, nullptr);
    size_ = std::exchange(o.size_, 0);
  }
  return *this;
}

void Buffer::zero() {
  if (data_) std::memset(data_, 0, size_);
}

Arena::~Arena() {
  if (ext_) free_(ext_);
}

void Arena::set_allocator(AllocFn alloc, FreeFn free, Device device) {
  DSFUSE_CHECK(!ext_ && buf_.size() == 0, "set_allocator must come before the first reserve");
  alloc_ = std::move(alloc);
  free_ = std::move(free);
  device_ = device;
}

void Arena::reserve(size_t bytes) {
  if (bytes <= capacity()) return;
  used_ = 0;
  if (alloc_) {
    if (ext_) free_(ext_);
    ext_ = nullptr;
    ext_ = alloc_(bytes);
    DSFUSE_CHECK(ext_, "out of device memory for a workspace of ", bytes, " bytes");
    ext_size_ = bytes;
  } else {
    buf_ = Buffer(bytes);
  }
}

void* Arena::alloc_bytes(size_t bytes) {
  size_t start = (used_ + kAlign - 1) / kAlign * kAlign;
  DSFUSE_CHECK(start + bytes <= capacity(), "workspace arena exhausted: need ", start + bytes, " bytes, have ",
               capacity());
  used_ = start + bytes;
  if (used_ > high_) high_ = used_;
  return base() + start;
}

TensorView Arena::alloc(DType t, std::initializer_list<int64_t> dims) {
  TensorView v(nullptr, t, dims, device_);
  v.data = alloc_bytes(v.nbytes());
  return v;
}

}  // namespace dsfuse
