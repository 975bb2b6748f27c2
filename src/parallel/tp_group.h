// A tensor-parallel group in one process: one CausalLM per rank (its own backend, sharded weights and
// KV cache), one thread per rank, ranks joined by a Communicator. To the engine it is one BatchModel.
#pragma once
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "models/model.h"

namespace dsfuse {

// KV cache of a group: one child cache per rank (freed with its rank's device bound to the thread).
class TPCache final : public KVCache {
 public:
  TPCache(Backend& be0, std::vector<std::unique_ptr<KVCache>> kids, std::vector<Backend*> backends,
          int64_t max_tokens);
  ~TPCache() override;
  KVCache& rank(int r) { return *kids_[static_cast<size_t>(r)]; }
  size_t bytes_per_token() const override;

 private:
  std::vector<std::unique_ptr<KVCache>> kids_;
  std::vector<Backend*> backends_;
};

class TPGroup final : public BatchModel {
 public:
  TPGroup(std::vector<CausalLM*> ranks, Backend& be0);
  ~TPGroup() override;
  int vocab_size() const override { return ranks_[0]->vocab_size(); }
  int max_context() const override { return ranks_[0]->max_context(); }
  std::unique_ptr<KVCache> new_cache(int64_t max_tokens) const override;
  // Every rank runs the same batch on its own thread (rank 0 on the caller's), each thread bound to its rank's
  // backend first; rank 0 writes the (all-gathered) logits.
  void forward_batch(const Batch& b, KVCache& pool, const std::vector<int64_t>& logit_rows, float* logits) override;
  // The same with rank 0 taking the greedy choice on its device (only the ids come back to the host).
  void forward_batch_greedy(const Batch& b, KVCache& pool, const std::vector<int64_t>& logit_rows,
                            int32_t* ids) override;
  // And with rank 0 choosing by Backend::sample_rows on its device.
  void forward_batch_sample(const Batch& b, KVCache& pool, const std::vector<int64_t>& logit_rows,
                            const SampleRowParams* params, int32_t* ids) override;
  bool device_sampling() const override { return ranks_[0]->device_sampling(); }

 private:
  void run(const Batch& b, KVCache& pool, const std::vector<int64_t>& logit_rows, float* logits, int32_t* ids,
           const SampleRowParams* params = nullptr);
  void worker(int r);
  std::vector<CausalLM*> ranks_;
  Backend& be0_;
  std::vector<std::thread> threads_;
  std::mutex mu_;
  std::condition_variable cv_, done_cv_;
  std::function<void(int)> job_;
  uint64_t generation_ = 0;
  int pending_ = 0;
  bool stop_ = false;
  std::vector<std::string> errors_;
};

}  // namespace dsfuse
