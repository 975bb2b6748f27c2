#include "kv/block_manager.h"

#include <xxhash.h>

#include <algorithm>

#include "core/error.h"

namespace dsfuse {

BlockManager::BlockManager(int64_t num_blocks, int block_size, bool prefix_caching)
    : block_size_(block_size), prefix_caching_(prefix_caching), blocks_(static_cast<size_t>(num_blocks)) {
  DSFUSE_CHECK(num_blocks > 0 && block_size > 0, "KV block manager needs blocks (got ", num_blocks, " of ",
               block_size, " tokens)");
  for (int32_t i = 0; i < num_blocks; ++i) {
    blocks_[i].free_it = free_.insert(free_.end(), i);
    blocks_[i].in_free = true;
  }
}

uint64_t BlockManager::chain_hash(uint64_t parent, std::span<const int32_t> tokens) const {
  return XXH3_64bits_withSeed(tokens.data(), tokens.size_bytes(), parent);
}

void BlockManager::unhash(int32_t id) {
  Block& b = blocks_[id];
  if (!b.hashed) return;
  auto it = by_hash_.find(b.hash);
  if (it != by_hash_.end() && it->second == id) by_hash_.erase(it);
  b.hashed = false;
  b.tokens.clear();
}

int32_t BlockManager::take_free() {
  const int32_t id = free_.front();
  free_.pop_front();
  Block& b = blocks_[id];
  b.in_free = false;
  unhash(id);  // its old contents are about to be overwritten
  b.ref = 1;
  return id;
}

int64_t BlockManager::allocate(std::span<const int32_t> tokens, std::vector<int32_t>& table, uint64_t& chain) {
  const int64_t n = static_cast<int64_t>(tokens.size());
  const int64_t need = blocks_for(n);
  // Full blocks that may come from the cache: all but the one holding the last token.
  const int64_t cacheable = prefix_caching_ ? (n - 1) / block_size_ : 0;
  std::vector<int32_t> hit;
  uint64_t h = 0, last = 0;
  for (int64_t i = 0; i < cacheable; ++i) {
    auto chunk = tokens.subspan(static_cast<size_t>(i * block_size_), static_cast<size_t>(block_size_));
    h = chain_hash(h, chunk);
    auto it = by_hash_.find(h);
    if (it == by_hash_.end()) break;
    const Block& b = blocks_[it->second];
    if (!std::equal(b.tokens.begin(), b.tokens.end(), chunk.begin(), chunk.end())) break;
    hit.push_back(it->second);
    last = h;
  }
  int64_t reusable_free = 0;  // hits that sit in the free list still count against free blocks
  for (int32_t id : hit) reusable_free += blocks_[id].in_free;
  if (need - static_cast<int64_t>(hit.size()) > num_free() - reusable_free) return -1;
  queries_ += cacheable;
  hits_ += static_cast<int64_t>(hit.size());
  table.clear();
  for (int32_t id : hit) {
    Block& b = blocks_[id];
    if (b.in_free) {
      free_.erase(b.free_it);
      b.in_free = false;
    }
    ++b.ref;
    table.push_back(id);
  }
  while (static_cast<int64_t>(table.size()) < need) table.push_back(take_free());
  chain = last;
  return static_cast<int64_t>(hit.size()) * block_size_;
}

bool BlockManager::append_slot(int64_t len, std::vector<int32_t>& table) {
  if (blocks_for(len) <= static_cast<int64_t>(table.size())) return true;
  if (free_.empty()) return false;
  table.push_back(take_free());
  return true;
}

void BlockManager::seal_full_blocks(std::span<const int32_t> tokens, int64_t computed,
                                    const std::vector<int32_t>& table, size_t& sealed, uint64_t& chain) {
  if (!prefix_caching_) return;
  const int64_t full = std::min<int64_t>(computed / block_size_, static_cast<int64_t>(table.size()));
  uint64_t& h = chain;
  for (int64_t i = static_cast<int64_t>(sealed); i < full; ++i) {
    auto chunk = tokens.subspan(static_cast<size_t>(i * block_size_), static_cast<size_t>(block_size_));
    h = chain_hash(h, chunk);
    Block& b = blocks_[table[i]];
    if (!b.hashed && !by_hash_.count(h)) {
      b.hash = h;
      b.hashed = true;
      b.tokens.assign(chunk.begin(), chunk.end());
      by_hash_[h] = table[i];
    }
  }
  sealed = static_cast<size_t>(full);
}

void BlockManager::free(std::vector<int32_t>& table) {
  for (int32_t id : table) {
    Block& b = blocks_[id];
    DSFUSE_CHECK(b.ref > 0, "KV block ", id, " freed twice");
    if (--b.ref == 0) {
      b.free_it = free_.insert(free_.end(), id);
      b.in_free = true;
      if (!b.hashed) {  // nothing to reuse: prefer it for the next allocation
        free_.erase(b.free_it);
        b.free_it = free_.insert(free_.begin(), id);
      }
    }
  }
  table.clear();
}

}  // namespace dsfuse
