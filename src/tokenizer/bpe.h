// BPE model of tokenizer.json ("type": "BPE"): vocab, ranked merges, ignore_merges, byte_fallback, unk,
// continuing_subword_prefix / end_of_word_suffix, and a word cache. dropout must be null (deterministic).
#pragma once
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "tokenizer/components.h"
#include "tokenizer/json_scan.h"

namespace dsfuse::tok {

struct StrHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
};
using StrMap = std::unordered_map<std::string, int32_t, StrHash, std::equal_to<>>;

// Open-addressing map string_view -> id over strings owned elsewhere (the model's arena).
class StrIdMap {
 public:
  void reserve(size_t n);
  // Inserts or overwrites.
  void put(std::string_view k, int32_t v);
  const int32_t* find(std::string_view k) const {
    if (mask_ == 0) return nullptr;
    uint64_t h = hash(k);
    uint32_t tag = uint32_t(h >> 32) | 1u;
    size_t i = size_t(h) & mask_;
    while (true) {
      const Slot& s = slots_[i];
      if (s.tag == 0) return nullptr;
      if (s.tag == tag && keys_[s.idx] == k) return &vals_[s.idx];
      i = (i + 1) & mask_;
    }
  }
  size_t size() const { return keys_.size(); }
  static uint64_t hash(std::string_view k) { return std::hash<std::string_view>{}(k) * 0x9E3779B97F4A7C15ULL; }

 private:
  struct Slot {
    uint32_t tag, idx;
  };
  std::vector<Slot> slots_;
  std::vector<std::string_view> keys_;
  std::vector<int32_t> vals_;
  size_t mask_ = 0;
};

// Open-addressing map (id_a, id_b) -> (rank, merged id).
class MergeTable {
 public:
  void reserve(size_t n);
  void put(int32_t a, int32_t b, int32_t rank, int32_t id);
  // false when the pair has no merge
  bool get(int32_t a, int32_t b, int32_t& rank, int32_t& id) const {
    if (mask_ == 0) return false;
    const Entry* t_ = t_buf_.get();
    uint64_t k = key(a, b);
    size_t i = slot(k);
    while (true) {
      const Entry& e = t_[i];
      if (e.k == kEmpty) return false;
      if (e.k == k) {
        rank = e.rank;
        id = e.id;
        return true;
      }
      i = (i + 1) & mask_;
    }
  }
  size_t size() const { return n_; }

 private:
  static constexpr uint64_t kEmpty = ~0ULL;
  struct Entry {
    uint64_t k;
    int32_t rank, id;
  };
  static uint64_t key(int32_t a, int32_t b) { return (uint64_t(uint32_t(a)) << 32) | uint32_t(b); }
  size_t slot(uint64_t k) const { return size_t((k * 0x9E3779B97F4A7C15ULL) >> 17) & mask_; }
  struct Free {
    void operator()(Entry* p) const { std::free(p); }
  };
  // 2 MiB-aligned and advised for transparent huge pages: lookups are random over several MiB, so TLB
  // misses matter.
  std::unique_ptr<Entry[], Free> t_buf_;
  size_t cap_ = 0, mask_ = 0, n_ = 0;
};

// Word -> ids cache: open addressing over flat arrays (no per-entry allocation). Thread-safe.
class WordCache {
 public:
  explicit WordCache(size_t max_entries) : max_entries_(max_entries) {}
  // Appends the cached ids of w to out; false when absent.
  bool get(std::string_view w, uint64_t h, std::vector<int32_t>& out) const;
  void put(std::string_view w, uint64_t h, const int32_t* ids, size_t n);
  static uint64_t hash(std::string_view w) { return std::hash<std::string_view>{}(w) * 0x9E3779B97F4A7C15ULL; }

 private:
  struct Entry {
    uint32_t key_off, key_len, ids_off, n_ids;
  };
  struct Slot {
    uint32_t tag, entry;  // tag 0: empty
  };
  const Slot* find_slot(std::string_view w, uint64_t h) const;  // occupied matching slot or the empty slot
  void grow();
  size_t max_entries_;
  mutable std::shared_mutex mu_;
  std::vector<Slot> slots_;
  std::vector<Entry> entries_;
  std::string keys_;
  std::vector<int32_t> ids_;
};

class BpeModel {
 public:
  // model: the model object without vocab/merges; data: its vocab and merges (arena moved in).
  static std::unique_ptr<BpeModel> load(const nlohmann::json& model, BpeData&& data, const Ctx& ctx);

  // Appends the ids of one pre-tokenized word. raw_bytes: `word` holds raw bytes still to be mapped
  // through the byte-level alphabet (the pre-tokenizer ended with a deferred ByteLevel step).
  void tokenize(std::string_view word, bool raw_bytes, std::vector<int32_t>& out) const;

  std::optional<int32_t> token_to_id(std::string_view tok) const {
    const int32_t* v = vocab_.find(tok);
    if (!v) return std::nullopt;
    return *v;
  }
  // nullptr when the id is not in the vocabulary
  const std::string_view* id_to_token(int32_t id) const {
    if (id < 0 || size_t(id) >= id_to_tok_.size() || !has_id_[size_t(id)]) return nullptr;
    return &id_to_tok_[size_t(id)];
  }
  size_t id_limit() const { return id_to_tok_.size(); }
  size_t vocab_count() const { return vocab_.size(); }
  size_t merge_count() const { return merges_.size(); }

 private:
  void merge_word(std::string_view chars, std::vector<int32_t>& out) const;  // chars: byte-level/plain text
  void merge_symbols(std::vector<int32_t>& syms, std::vector<int32_t>& out) const;

  std::string arena_;  // all token strings
  StrIdMap vocab_;
  std::vector<std::string_view> id_to_tok_;
  std::vector<uint8_t> has_id_;
  MergeTable merges_;
  std::string prefix_, suffix_;  // continuing_subword_prefix, end_of_word_suffix
  std::optional<int32_t> unk_id_;
  bool fuse_unk_ = false, byte_fallback_ = false, ignore_merges_ = false;
  int32_t byte_ids_[256];  // id of each byte's byte-level char, -1 when absent
  bool byte_ids_complete_ = false;

  static constexpr size_t kCacheMax = 200000;
  static constexpr size_t kCacheWordMax = 64;  // long words rarely repeat
  mutable WordCache cache_{kCacheMax};
};

}  // namespace dsfuse::tok
