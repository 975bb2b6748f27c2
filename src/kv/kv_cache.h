// Contiguous per-sequence KV cache for incremental decoding. Each layer owns two f32 planes of
// [max_tokens, width]: K and V for standard attention, or the MLA latent (kv_lora_rank, after
// kv_a_layernorm) and the roped decoupled key (qk_rope_head_dim) — never expanded per-head K/V.
// (The paged, batched cache of the server replaces this later.)
#pragma once
#include <cstdint>
#include <vector>

#include "backend/backend.h"

namespace dsfuse {

class KVCache {
 public:
  KVCache(Backend& be, int layers, int64_t max_tokens, int64_t k_width, int64_t v_width);
  virtual ~KVCache();
  KVCache(const KVCache&) = delete;
  KVCache& operator=(const KVCache&) = delete;

  TensorView k(int layer) const;  // [max_tokens, k_width]
  TensorView v(int layer) const;  // [max_tokens, v_width]
  int64_t length() const { return length_; }
  void set_length(int64_t n) { length_ = n; }
  int64_t max_tokens() const { return max_tokens_; }
  virtual size_t bytes_per_token() const;  // all layers (all ranks for a tensor-parallel cache)

 private:
  Backend& be_;
  int layers_;
  int64_t max_tokens_, k_width_, v_width_;
  std::vector<void*> k_, v_;
  int64_t length_ = 0;
};

}  // namespace dsfuse
