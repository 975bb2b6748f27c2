#include "tokenizer/bpe.h"

#include <algorithm>
#include <cstring>
#include <cstdio>
#include <queue>

#include <sys/mman.h>

#include "core/error.h"
#include "tokenizer/unicode.h"

namespace dsfuse::tok {

using json = nlohmann::json;

void MergeTable::reserve(size_t n) {
  size_t cap = 16;
  while (cap < n * 2 + 1) cap <<= 1;
  size_t bytes = cap * sizeof(Entry);
  const size_t huge = size_t(2) << 20;
  void* p = nullptr;
  if (bytes >= huge) {
    bytes = (bytes + huge - 1) / huge * huge;
    if (posix_memalign(&p, huge, bytes) == 0) madvise(p, bytes, MADV_HUGEPAGE);
  } else {
    p = std::malloc(bytes);
  }
  if (!p) throw std::bad_alloc();
  t_buf_.reset(static_cast<Entry*>(p));
  std::fill(t_buf_.get(), t_buf_.get() + cap, Entry{kEmpty, 0, 0});
  cap_ = cap;
  mask_ = cap - 1;
  n_ = 0;
}

void MergeTable::put(int32_t a, int32_t b, int32_t rank, int32_t id) {
  if ((n_ + 1) * 2 > cap_) {
    std::vector<Entry> old(t_buf_.get(), t_buf_.get() + cap_);
    reserve(std::max<size_t>(16, cap_));
    for (auto& e : old)
      if (e.k != kEmpty) put(int32_t(e.k >> 32), int32_t(uint32_t(e.k)), e.rank, e.id);
  }
  Entry* t_ = t_buf_.get();
  uint64_t k = key(a, b);
  size_t i = slot(k);
  while (t_[i].k != kEmpty && t_[i].k != k) i = (i + 1) & mask_;
  if (t_[i].k == kEmpty) ++n_;
  t_[i] = Entry{k, rank, id};  // a repeated pair keeps the last rank, like the library's HashMap collect
}

const WordCache::Slot* WordCache::find_slot(std::string_view w, uint64_t h) const {
  size_t mask = slots_.size() - 1;
  uint32_t tag = uint32_t(h >> 32) | 1u;
  size_t i = size_t(h) & mask;
  while (true) {
    const Slot& s = slots_[i];
    if (s.tag == 0) return &s;
    if (s.tag == tag) {
      const Entry& e = entries_[s.entry];
      if (e.key_len == w.size() && std::memcmp(keys_.data() + e.key_off, w.data(), w.size()) == 0) return &s;
    }
    i = (i + 1) & mask;
  }
}

bool WordCache::get(std::string_view w, uint64_t h, std::vector<int32_t>& out) const {
  std::shared_lock<std::shared_mutex> lk(mu_);
  if (slots_.empty()) return false;
  const Slot* s = find_slot(w, h);
  if (s->tag == 0) return false;
  const Entry& e = entries_[s->entry];
  out.insert(out.end(), ids_.begin() + long(e.ids_off), ids_.begin() + long(e.ids_off + e.n_ids));
  return true;
}

void WordCache::grow() {
  size_t cap = slots_.empty() ? 4096 : slots_.size() * 2;
  slots_.assign(cap, Slot{0, 0});
  for (uint32_t k = 0; k < entries_.size(); ++k) {
    const Entry& e = entries_[k];
    std::string_view key(keys_.data() + e.key_off, e.key_len);
    uint64_t h = hash(key);
    size_t i = size_t(h) & (cap - 1);
    while (slots_[i].tag != 0) i = (i + 1) & (cap - 1);
    slots_[i] = Slot{uint32_t(h >> 32) | 1u, k};
  }
}

void WordCache::put(std::string_view w, uint64_t h, const int32_t* ids, size_t n) {
  std::unique_lock<std::shared_mutex> lk(mu_);
  if (entries_.size() >= max_entries_) return;
  if ((entries_.size() + 1) * 2 > slots_.size()) grow();
  const Slot* s = find_slot(w, h);
  if (s->tag != 0) return;  // another thread got there first
  Entry e{uint32_t(keys_.size()), uint32_t(w.size()), uint32_t(ids_.size()), uint32_t(n)};
  keys_.append(w);
  ids_.insert(ids_.end(), ids, ids + n);
  *const_cast<Slot*>(s) = Slot{uint32_t(h >> 32) | 1u, uint32_t(entries_.size())};
  entries_.push_back(e);
}

void StrIdMap::reserve(size_t n) {
  size_t cap = 16;
  while (cap < n * 2 + 1) cap <<= 1;
  slots_.assign(cap, Slot{0, 0});
  mask_ = cap - 1;
  keys_.reserve(n);
  vals_.reserve(n);
}

void StrIdMap::put(std::string_view k, int32_t v) {
  if ((keys_.size() + 1) * 2 > slots_.size()) {
    std::vector<std::string_view> keys;
    std::vector<int32_t> vals;
    keys.swap(keys_);
    vals.swap(vals_);
    reserve(std::max<size_t>(16, keys.size() * 2));
    for (size_t i = 0; i < keys.size(); ++i) put(keys[i], vals[i]);
  }
  uint64_t h = hash(k);
  uint32_t tag = uint32_t(h >> 32) | 1u;
  size_t i = size_t(h) & mask_;
  while (slots_[i].tag != 0) {
    if (slots_[i].tag == tag && keys_[slots_[i].idx] == k) {
      vals_[slots_[i].idx] = v;
      return;
    }
    i = (i + 1) & mask_;
  }
  slots_[i] = Slot{tag, uint32_t(keys_.size())};
  keys_.push_back(k);
  vals_.push_back(v);
}

std::unique_ptr<BpeModel> BpeModel::load(const json& m, BpeData&& d, const Ctx& ctx) {
  auto bpe = std::make_unique<BpeModel>();
  DSFUSE_CHECK(m.is_object(), ctx.where(), ": model must be an object");
  if (auto it = m.find("dropout"); it != m.end() && !it->is_null()) {
    DSFUSE_CHECK(it->is_number() && it->get<double>() == 0.0, ctx.where(),
                 ".dropout: BPE dropout is not supported (non-deterministic); expected null");
  }
  auto str_opt = [&](const char* k) -> std::string {
    auto it = m.find(k);
    if (it == m.end() || it->is_null()) return {};
    DSFUSE_CHECK(it->is_string(), ctx.where(), ".", k, ": must be a string or null");
    return it->get<std::string>();
  };
  auto bool_opt = [&](const char* k) -> bool {
    auto it = m.find(k);
    if (it == m.end() || it->is_null()) return false;
    DSFUSE_CHECK(it->is_boolean(), ctx.where(), ".", k, ": must be a boolean");
    return it->get<bool>();
  };
  bpe->prefix_ = str_opt("continuing_subword_prefix");
  bpe->suffix_ = str_opt("end_of_word_suffix");
  bpe->fuse_unk_ = bool_opt("fuse_unk");
  bpe->byte_fallback_ = bool_opt("byte_fallback");
  bpe->ignore_merges_ = bool_opt("ignore_merges");

  DSFUSE_CHECK(d.has_vocab, ctx.where(), ".vocab: ", m.contains("vocab") ? "must be an object" : "missing");
  DSFUSE_CHECK(d.has_merges, ctx.where(), ".merges: ", m.contains("merges") ? "must be an array" : "missing");
  bpe->arena_ = std::move(d.arena);
  auto view = [&](StrRef r) { return std::string_view(bpe->arena_).substr(r.off, r.len); };
  bpe->vocab_.reserve(d.vocab.size());
  int32_t max_id = -1;
  for (const auto& e : d.vocab) {
    DSFUSE_CHECK(e.id >= 0 && e.id < (1LL << 30), ctx.where(), ".vocab[\"", view(e.tok), "\"]: id ", e.id,
                 " out of range");
    bpe->vocab_.put(view(e.tok), int32_t(e.id));
    max_id = std::max(max_id, int32_t(e.id));
  }
  bpe->id_to_tok_.resize(size_t(max_id + 1));
  bpe->has_id_.assign(size_t(max_id + 1), 0);
  for (const auto& e : d.vocab) {
    bpe->id_to_tok_[size_t(e.id)] = view(e.tok);
    bpe->has_id_[size_t(e.id)] = 1;
  }

  std::string unk = str_opt("unk_token");
  if (!unk.empty()) {
    const int32_t* u = bpe->vocab_.find(unk);
    DSFUSE_CHECK(u, ctx.where(), ".unk_token: '", unk, "' is not in the vocab");
    bpe->unk_id_ = *u;
  }

  const auto& alpha = ByteLevelAlphabet::get();
  bpe->byte_ids_complete_ = true;
  for (int b = 0; b < 256; ++b) {
    const int32_t* v = bpe->vocab_.find(alpha.byte_to_utf8[size_t(b)]);
    bpe->byte_ids_[b] = v ? *v : -1;
    if (!v) bpe->byte_ids_complete_ = false;
  }

  bpe->merges_.reserve(d.merges.size());
  std::string merged;
  for (size_t r = 0; r < d.merges.size(); ++r) {
    const auto& e = d.merges[r];
    DSFUSE_CHECK(e.ok, ctx.where(), ".merges[", r, "]: expected \"a b\" (two tokens separated by one space) or [\"a\", \"b\"]");
    std::string_view a = view(e.a), b = view(e.b);
    const int32_t* ia = bpe->vocab_.find(a);
    const int32_t* ib = bpe->vocab_.find(b);
    DSFUSE_CHECK(ia, ctx.where(), ".merges[", r, "]: token '", a, "' is not in the vocab");
    DSFUSE_CHECK(ib, ctx.where(), ".merges[", r, "]: token '", b, "' is not in the vocab");
    merged.assign(a);
    std::string_view bb = b;
    if (!bpe->prefix_.empty() && bb.substr(0, bpe->prefix_.size()) == bpe->prefix_) bb.remove_prefix(bpe->prefix_.size());
    merged.append(bb);
    const int32_t* im = bpe->vocab_.find(merged);
    DSFUSE_CHECK(im, ctx.where(), ".merges[", r, "]: merged token '", merged, "' is not in the vocab");
    bpe->merges_.put(*ia, *ib, int32_t(r), *im);
  }
  return bpe;
}

void BpeModel::merge_symbols(std::vector<int32_t>& syms, std::vector<int32_t>& out) const {
  size_t n = syms.size();
  if (n == 1) {
    out.push_back(syms[0]);
    return;
  }
  // Doubly linked list over symbols; a merged-away symbol has id -1. Candidates carry the pair they were
  // made from, so a stale candidate is recognised without another hash lookup (same pair at the same
  // position always means the same merge).
  thread_local std::vector<int32_t> prev, next;
  prev.resize(n);
  next.resize(n);
  for (size_t i = 0; i < n; ++i) {
    prev[i] = int32_t(i) - 1;
    next[i] = i + 1 < n ? int32_t(i + 1) : -1;
  }
  struct Cand {
    int32_t rank, pos, id, left, right, right_pos;
    bool operator>(const Cand& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  thread_local std::vector<Cand> heap;
  heap.clear();
  auto push = [&](int32_t pos, bool build) {
    int32_t nx = next[size_t(pos)];
    if (nx < 0) return;
    int32_t rank, id;
    if (merges_.get(syms[size_t(pos)], syms[size_t(nx)], rank, id)) {
      heap.push_back({rank, pos, id, syms[size_t(pos)], syms[size_t(nx)], nx});
      if (!build) std::push_heap(heap.begin(), heap.end(), std::greater<>());
    }
  };
  for (size_t i = 0; i + 1 < n; ++i) push(int32_t(i), true);
  std::make_heap(heap.begin(), heap.end(), std::greater<>());
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), std::greater<>());
    Cand c = heap.back();
    heap.pop_back();
    size_t p = size_t(c.pos);
    int32_t nx = next[p];
    if (syms[p] != c.left || nx != c.right_pos || syms[size_t(nx)] != c.right) continue;  // stale
    // merge p and nx into p
    syms[p] = c.id;
    syms[size_t(nx)] = -1;
    next[p] = next[size_t(nx)];
    if (next[p] >= 0) prev[size_t(next[p])] = int32_t(p);
    if (prev[p] >= 0) push(prev[p], false);
    push(int32_t(p), false);
  }
  for (int32_t i = 0; i >= 0; i = next[size_t(i)]) out.push_back(syms[size_t(i)]);
}

void BpeModel::merge_word(std::string_view w, std::vector<int32_t>& out) const {
  thread_local std::vector<int32_t> syms;
  syms.clear();
  int32_t pending_unk = -1;  // an unk waiting to be emitted (fuse_unk merges consecutive ones)
  std::string s;
  size_t i = 0;
  while (i < w.size()) {
    size_t b = i;
    i += utf8_len(static_cast<unsigned char>(w[i]));
    if (i > w.size()) i = w.size();
    std::string_view ch = w.substr(b, i - b);
    std::string_view sk = ch;
    if ((!prefix_.empty() && b > 0) || (!suffix_.empty() && i == w.size())) {
      s.clear();
      if (b > 0) s += prefix_;
      s += ch;
      if (i == w.size()) s += suffix_;
      sk = s;
    }
    if (const int32_t* v = vocab_.find(sk)) {
      if (pending_unk >= 0) syms.push_back(pending_unk), pending_unk = -1;
      syms.push_back(*v);
      continue;
    }
    if (byte_fallback_) {
      bool ok = true;
      size_t mark = syms.size();
      for (unsigned char c : sk) {
        char buf[8];
        std::snprintf(buf, sizeof buf, "<0x%02X>", c);
        const int32_t* bt = vocab_.find(std::string_view(buf));
        if (!bt) {
          ok = false;
          break;
        }
        syms.push_back(*bt);
      }
      if (ok) continue;  // the library does not flush a pending unk here
      syms.resize(mark);
    }
    if (unk_id_) {
      if (pending_unk >= 0 && !fuse_unk_) syms.push_back(pending_unk);
      pending_unk = *unk_id_;
    }
    // no unk token: the character is dropped, as the library does
  }
  if (pending_unk >= 0) syms.push_back(pending_unk);
  if (syms.empty()) return;
  merge_symbols(syms, out);
}

void BpeModel::tokenize(std::string_view word, bool raw_bytes, std::vector<int32_t>& out) const {
  if (word.empty()) return;
  bool cacheable = word.size() <= kCacheWordMax;
  uint64_t h = 0;
  if (cacheable) {
    h = WordCache::hash(word);
    if (cache_.get(word, h, out)) return;
  }
  size_t start = out.size();
  std::string mapped;
  std::string_view chars = word;
  bool use_bytes = raw_bytes && byte_ids_complete_ && prefix_.empty() && suffix_.empty() && !ignore_merges_;
  if (raw_bytes && !use_bytes) {
    byte_level_encode(word, mapped);
    chars = mapped;
  }
  bool done = false;
  if (ignore_merges_) {
    if (const int32_t* v = vocab_.find(chars)) {
      out.push_back(*v);
      done = true;
    }
  }
  if (!done) {
    if (use_bytes) {
      thread_local std::vector<int32_t> syms;
      syms.clear();
      for (unsigned char c : word) syms.push_back(byte_ids_[c]);
      merge_symbols(syms, out);
    } else {
      merge_word(chars, out);
    }
  }
  if (cacheable) cache_.put(word, h, out.data() + start, out.size() - start);
}

}  // namespace dsfuse::tok
