// Paged KV block manager with prefix caching (the nano-vllm / vLLM design): fixed-size blocks with
// reference counts; every full block is hashed by its tokens chained with the previous block's hash, so
// sequences sharing a prefix (system prompts, multi-turn chats) share blocks. Freed blocks keep their
// contents and hash and are reused in least-recently-freed order.
#pragma once
#include <cstdint>
#include <deque>
#include <list>
#include <span>
#include <unordered_map>
#include <vector>

namespace dsfuse {

class BlockManager {
 public:
  BlockManager(int64_t num_blocks, int block_size, bool prefix_caching = true);

  int block_size() const { return block_size_; }
  int64_t num_blocks() const { return static_cast<int64_t>(blocks_.size()); }
  int64_t num_free() const { return static_cast<int64_t>(free_.size()); }
  int64_t num_used() const { return num_blocks() - num_free(); }

  // Blocks needed to hold `tokens` tokens.
  int64_t blocks_for(int64_t tokens) const { return (tokens + block_size_ - 1) / block_size_; }

  // Allocates the blocks of a prompt, reusing cached full blocks of the longest matching prefix (never
  // the block holding the last token, which must be recomputed to get logits). Returns the number of
  // leading tokens already in the cache, or -1 when too few blocks are free (nothing is changed then).
  // `chain` receives the hash of the last reused block (the start of seal_full_blocks' chain).
  int64_t allocate(std::span<const int32_t> tokens, std::vector<int32_t>& table, uint64_t& chain);
  // Makes room for token number `len` (0-based index len-1 is the last token): adds a block when the
  // sequence crosses a block boundary. Returns false when no block is free.
  bool append_slot(int64_t len, std::vector<int32_t>& table);
  // Registers the hashes of blocks whose tokens are all computed (tokens = the sequence's token list).
  // `sealed` and `chain` carry the count of blocks already registered and the hash of the last one.
  void seal_full_blocks(std::span<const int32_t> tokens, int64_t computed, const std::vector<int32_t>& table,
                        size_t& sealed, uint64_t& chain);
  void free(std::vector<int32_t>& table);

  int64_t prefix_queries() const { return queries_; }
  int64_t prefix_hits() const { return hits_; }

 private:
  struct Block {
    int32_t ref = 0;
    uint64_t hash = 0;
    bool hashed = false;
    std::vector<int32_t> tokens;  // contents of a hashed block (to rule out hash collisions)
    std::list<int32_t>::iterator free_it;
    bool in_free = false;
  };
  uint64_t chain_hash(uint64_t parent, std::span<const int32_t> tokens) const;
  int32_t take_free();
  void unhash(int32_t id);

  int block_size_;
  bool prefix_caching_;
  std::vector<Block> blocks_;
  std::list<int32_t> free_;  // least recently freed first
  std::unordered_map<uint64_t, int32_t> by_hash_;
  int64_t queries_ = 0, hits_ = 0;
};

}  // namespace dsfuse
