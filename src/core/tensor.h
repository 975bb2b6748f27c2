// Non-owning tensor views over memory owned elsewhere (mmap'd checkpoints, Buffers, Arenas).
#pragma once
#include <array>
#include <cstdint>
#include <initializer_list>
#include <string>

#include "core/dtype.h"
#include "core/error.h"

namespace dsfuse {

enum class DeviceKind : uint8_t { CPU, CUDA };

struct Device {
  DeviceKind kind = DeviceKind::CPU;
  int index = 0;
  bool operator==(const Device& o) const { return kind == o.kind && index == o.index; }
  static Device cpu() { return {}; }
};

constexpr int kMaxDims = 4;

// A typed, strided view. Shapes are row-major; strides are in elements. `data` is never owned.
struct TensorView {
  void* data = nullptr;
  DType dtype = DType::F32;
  int ndim = 0;
  std::array<int64_t, kMaxDims> shape{};
  std::array<int64_t, kMaxDims> stride{};
  Device device{};

  TensorView() = default;
  TensorView(void* d, DType t, std::initializer_list<int64_t> dims, Device dev = {});

  int64_t numel() const;
  int64_t size(int i) const { return shape[i < 0 ? i + ndim : i]; }
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype); }
  bool contiguous() const;
  bool empty() const { return data == nullptr; }

  template <typename T>
  T* ptr() const { return static_cast<T*>(data); }
  // Pointer to the first element of row `r` of dimension 0.
  template <typename T>
  T* row(int64_t r) const { return static_cast<T*>(data) + r * stride[0]; }

  // A view of rows [begin, end) of dimension 0.
  TensorView rows(int64_t begin, int64_t end) const;
  // Same bytes, new contiguous shape (requires contiguity and equal element count).
  TensorView reshape(std::initializer_list<int64_t> dims) const;

  std::string shape_str() const;  // e.g. "[4, 64]"
};

}  // namespace dsfuse
