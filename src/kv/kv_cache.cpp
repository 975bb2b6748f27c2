#include "kv/kv_cache.h"

namespace dsfuse {

KVCache::KVCache(Backend& be, int layers, int64_t max_tokens, int64_t k_width, int64_t v_width)
    : be_(be), layers_(layers), max_tokens_(max_tokens), k_width_(k_width), v_width_(v_width) {
  DSFUSE_CHECK(max_tokens > 0, "KV cache needs a positive token capacity");
  for (int l = 0; l < layers; ++l) {
    k_.push_back(be_.alloc(static_cast<size_t>(max_tokens * k_width) * sizeof(float)));
    v_.push_back(be_.alloc(static_cast<size_t>(max_tokens * v_width) * sizeof(float)));
    DSFUSE_CHECK(k_.back() && v_.back(), "out of memory for a KV cache of ", max_tokens, " tokens");
  }
}

KVCache::~KVCache() {
  for (void* p : k_) be_.free(p);
  for (void* p : v_) be_.free(p);
}

TensorView KVCache::k(int layer) const {
  return TensorView(k_[layer], DType::F32, {max_tokens_, k_width_}, be_.device());
}
TensorView KVCache::v(int layer) const {
  return TensorView(v_[layer], DType::F32, {max_tokens_, v_width_}, be_.device());
}

size_t KVCache::bytes_per_token() const {
  return static_cast<size_t>(layers_) * static_cast<size_t>(k_width_ + v_width_) * sizeof(float);
}

}  // namespace dsfuse
