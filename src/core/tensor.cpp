#include "core/tensor.h"

#include <sstream>

namespace dsfuse {

TensorView::TensorView(void* d, DType t, std::initializer_list<int64_t> dims, Device dev)
    : data(d), dtype(t), device(dev) {
  DSFUSE_CHECK(dims.size() <= kMaxDims, "tensor rank ", dims.size(), " exceeds ", kMaxDims);
  ndim = static_cast<int>(dims.size());
  int i = 0;
  for (int64_t s : dims) shape[i++] = s;
  int64_t st = 1;
  for (int k = ndim - 1; k >= 0; --k) {
    stride[k] = st;
    st *= shape[k];
  }
}

int64_t TensorView::numel() const {
  int64_t n = 1;
  for (int i = 0; i < ndim; ++i) n *= shape[i];
  return n;
}

bool TensorView::contiguous() const {
  int64_t st = 1;
  for (int k = ndim - 1; k >= 0; --k) {
    if (shape[k] != 1 && stride[k] != st) return false;
    st *= shape[k];
  }
  return true;
}

TensorView TensorView::rows(int64_t begin, int64_t end) const {
  DSFUSE_CHECK(ndim >= 1 && begin >= 0 && begin <= end && end <= shape[0], "row range [", begin, ", ",
               end, ") out of ", shape_str());
  TensorView v = *this;
  v.data = static_cast<char*>(data) + begin * stride[0] * static_cast<int64_t>(dtype_size(dtype));
  v.shape[0] = end - begin;
  return v;
}

TensorView TensorView::reshape(std::initializer_list<int64_t> dims) const {
  DSFUSE_CHECK(contiguous(), "reshape of a non-contiguous tensor ", shape_str());
  TensorView v(data, dtype, dims, device);
  DSFUSE_CHECK(v.numel() == numel(), "reshape ", shape_str(), " -> ", v.shape_str(), " changes size");
  return v;
}

std::string TensorView::shape_str() const {
  std::ostringstream os;
  os << "[";
  for (int i = 0; i < ndim; ++i) os << (i ? ", " : "") << shape[i];
  os << "]";
  return os.str();
}

}  // namespace dsfuse
