#include "parallel/tp_group.h"

namespace dsfuse {

TPCache::TPCache(Backend& be0, std::vector<std::unique_ptr<KVCache>> kids, std::vector<Backend*> backends,
                 int64_t max_tokens)
    : KVCache(be0, 0, max_tokens, 0, 0), kids_(std::move(kids)), backends_(std::move(backends)) {}

TPCache::~TPCache() {
  for (size_t r = 0; r < kids_.size(); ++r) {
    try {
      backends_[r]->bind_thread();
    } catch (const std::exception&) {
    }
    kids_[r].reset();
  }
}

size_t TPCache::bytes_per_token() const {
  size_t n = 0;
  for (const auto& k : kids_) n += k->bytes_per_token();
  return n;
}

TPGroup::TPGroup(std::vector<CausalLM*> ranks, Backend& be0) : ranks_(std::move(ranks)), be0_(be0) {
  errors_.resize(ranks_.size());
  for (size_t r = 1; r < ranks_.size(); ++r) threads_.emplace_back([this, r] { worker(static_cast<int>(r)); });
}

TPGroup::~TPGroup() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  for (auto& t : threads_) t.join();
}

void TPGroup::worker(int r) {
  try {
    ranks_[static_cast<size_t>(r)]->backend().bind_thread();
  } catch (const std::exception&) {
    // reported by the job, which binds again
  }
  uint64_t seen = 0;
  for (;;) {
    std::function<void(int)> job;
    {
      std::unique_lock<std::mutex> lk(mu_);
      cv_.wait(lk, [&] { return stop_ || generation_ != seen; });
      if (stop_) return;
      seen = generation_;
      job = job_;
    }
    try {
      job(r);
    } catch (const std::exception& e) {
      errors_[static_cast<size_t>(r)] = e.what();
    }
    std::lock_guard<std::mutex> lk(mu_);
    if (--pending_ == 0) done_cv_.notify_all();
  }
}

std::unique_ptr<KVCache> TPGroup::new_cache(int64_t max_tokens) const {
  std::vector<std::unique_ptr<KVCache>> kids;
  std::vector<Backend*> backends;
  for (auto* r : ranks_) {
    r->backend().bind_thread();
    kids.push_back(r->new_cache(max_tokens));
    backends.push_back(&r->backend());
  }
  ranks_[0]->backend().bind_thread();
  return std::make_unique<TPCache>(be0_, std::move(kids), std::move(backends), max_tokens);
}

void TPGroup::forward_batch(const Batch& b, KVCache& pool, const std::vector<int64_t>& logit_rows, float* logits) {
  run(b, pool, logit_rows, logits, nullptr);
}

void TPGroup::forward_batch_greedy(const Batch& b, KVCache& pool, const std::vector<int64_t>& logit_rows,
                                   int32_t* ids) {
  run(b, pool, logit_rows, nullptr, ids);
}

void TPGroup::forward_batch_sample(const Batch& b, KVCache& pool, const std::vector<int64_t>& logit_rows,
                                   const SampleRowParams* params, int32_t* ids) {
  run(b, pool, logit_rows, nullptr, ids, params);
}

void TPGroup::run(const Batch& b, KVCache& pool, const std::vector<int64_t>& logit_rows, float* logits, int32_t* ids,
                  const SampleRowParams* params) {
  auto& tp = dynamic_cast<TPCache&>(pool);
  // Binding on every call is cheap, and rank 0 runs on the caller's thread, which may have used another GPU
  // since (loading, cache allocation). Every rank holds the gathered logits; rank 0 returns them, or with ids
  // their argmax taken on its device.
  auto job = [&](int r) {
    CausalLM& lm = *ranks_[static_cast<size_t>(r)];
    lm.backend().bind_thread();
    if (r == 0 && ids && params) lm.forward_batch_sample(b, tp.rank(r), logit_rows, params, ids);
    else if (r == 0 && ids) lm.forward_batch_greedy(b, tp.rank(r), logit_rows, ids);
    else lm.forward_batch(b, tp.rank(r), logit_rows, r == 0 ? logits : nullptr);
  };
  {
    std::lock_guard<std::mutex> lk(mu_);
    job_ = job;
    pending_ = static_cast<int>(ranks_.size()) - 1;
    for (auto& e : errors_) e.clear();
    ++generation_;
  }
  cv_.notify_all();
  try {
    job(0);
  } catch (const std::exception& e) {
    errors_[0] = e.what();
  }
  std::unique_lock<std::mutex> lk(mu_);
  done_cv_.wait(lk, [&] { return pending_ == 0; });
  for (size_t r = 0; r < errors_.size(); ++r)
    DSFUSE_CHECK(errors_[r].empty(), "tensor-parallel rank ", r, ": ", errors_[r]);
}

}  // namespace dsfuse
