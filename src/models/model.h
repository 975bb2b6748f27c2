// Internal base of every architecture: weights + config + backend; families implement build() and
// layer forward passes. Registration of architectures by config.architectures[0] lives in registry.cpp.
#pragma once
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "core/arena.h"
#include "dsfuse/dsfuse.h"
#include "kv/kv_cache.h"
#include "loader/config.h"
#include "loader/safetensors.h"
#include "parallel/communicator.h"
#include "quant/quantize.h"

namespace dsfuse {

// Weight-loading helpers over a Checkpoint, with shape/dtype checks that name tensor and file.
// Tensor-parallel placement of a matrix y = x W^T: Column splits W's output rows (each rank computes a
// slice of y), Row splits its input columns (each rank computes a partial sum of y, then all-reduce).
enum class Split { None, Column, Row };

struct TPInfo {
  int rank = 0, size = 1;
  Communicator* comm = nullptr;  // null when size == 1
  // [begin, end) of this rank's share of n items; n must divide evenly (`what` names them in the error).
  std::pair<int64_t, int64_t> share(int64_t n, const std::string& what) const;
};

// With a QuantType, every matrix but embeddings/lm_head/router is quantized as it is loaded (the quantized
// bytes are owned here, so the loader lives as long as the model).
class WeightLoader {
 public:
  WeightLoader(Checkpoint& ck, const ModelConfig& cfg, QuantType quant = QuantType::None)
      : ck_(ck), cfg_(cfg), quant_(quant) {}
  // `name` without ".weight"; N x K expected; loads FP8 scale blocks when the weight is float8.
  // N x K are the full (unsharded) dims; `split` returns this rank's shard (a row split keeps the bias on
  // rank 0 only, since partial sums are added up).
  Linear linear(const std::string& name, int64_t N, int64_t K, bool bias = false, Split split = Split::None);
  // Several matrices with the same input, stacked by rows into one [sum N, K] matrix (q/k/v, gate/up), each
  // part sharded first. Only for device backends without quantization (one wide GEMV instead of several
  // narrow ones); returns an empty Linear otherwise (or for FP8 / mixed dtypes): the caller loads the parts.
  Linear linear_fused(const std::vector<std::pair<std::string, int64_t>>& parts, int64_t K, bool bias = false,
                      Split split = Split::None);
  // Like linear() but never quantized (router gates, lm_head: small or accuracy-critical).
  Linear linear_exact(const std::string& name, int64_t N, int64_t K, bool bias = false, Split split = Split::None);
  TensorView vector(const std::string& name, int64_t n);   // norms, biases: float types only
  // Marks a matrix (and its FP8 scales) as handled elsewhere: another rank's expert.
  void skip_linear(const std::string& name);
  TensorView matrix(const std::string& name, int64_t r, int64_t c);  // embeddings: float types only
  bool has(const std::string& name) const { return ck_.has(name); }
  Checkpoint& checkpoint() { return ck_; }
  // Every weight handed out goes through backend->prepare (device residency).
  void set_backend(Backend* be) { be_ = be; }
  void set_tp(const TPInfo& tp) { tp_ = tp; }
  const TPInfo& tp() const { return tp_; }
  // A progress line per decoder layer (shown on a terminal or with DSFUSE_PROGRESS=1).
  std::string progress_label() const {
    return quant_ != QuantType::None ? "loading + quantizing weights" : be_ && be_->device().kind != DeviceKind::CPU
                                                                          ? "loading + uploading weights"
                                                                          : "loading weights";
  }

 private:
  Linear load_linear(const std::string& name, int64_t N, int64_t K, bool bias);
  Linear shard(const Linear& l, const std::string& name, Split split);
  // be_->prepare(l); drops the host buffers made since store_.size() was `held` when be_ keeps its own copy.
  Linear prepare(const Linear& l, size_t held);
  Linear release_synthetic(Linear l, const std::string& name);
  TPInfo tp_;
  Backend* be_ = nullptr;
  void check_float(const std::string& name, const TensorView& v, bool allow_fp8);
  Checkpoint& ck_;
  const ModelConfig& cfg_;
  QuantType quant_;
  std::vector<std::unique_ptr<Buffer>> store_;
};

struct MlpWeights {
  Linear gate, up, down;
  Linear gate_up;  // [2I, H] gate rows then up rows (device backends; gate/up then empty)
  int64_t inter() const { return gate_up.empty() ? gate.out_features() : gate_up.out_features() / 2; }
};

// A forward batch: tokens of several sequences concatenated; positions per token.
struct Batch {
  const int32_t* ids = nullptr;
  const int32_t* positions = nullptr;
  int64_t T = 0;
  std::vector<SeqSegment> segs;
};

// What the serving engine needs from a model: a KV pool and batched forward passes over it.
class BatchModel {
 public:
  virtual ~BatchModel() = default;
  virtual int vocab_size() const = 0;
  virtual int max_context() const = 0;
  virtual std::unique_ptr<KVCache> new_cache(int64_t max_tokens) const = 0;
  virtual void forward_batch(const Batch& b, KVCache& pool, const std::vector<int64_t>& logit_rows,
                             float* logits) = 0;
  // Like forward_batch, but writes only the greedy choice (argmax, lowest id on ties) of each logit row: on a
  // device backend only the ids leave the device. The default copies the logits and takes argmax on the host.
  virtual void forward_batch_greedy(const Batch& b, KVCache& pool, const std::vector<int64_t>& logit_rows,
                                    int32_t* ids);
  // Like forward_batch_greedy with each row's choice made by Backend::sample_rows (params: one per logit row).
  // The default copies the logits and runs the host reference.
  virtual void forward_batch_sample(const Batch& b, KVCache& pool, const std::vector<int64_t>& logit_rows,
                                    const SampleRowParams* params, int32_t* ids);
  // Whether forward_batch_sample chooses on the device (the engine then uses it for eligible sampled steps).
  virtual bool device_sampling() const { return false; }
};

// The batched model behind a Model returned by Model::load / load_dummy.
BatchModel& batch_model(Model& m);

// Runs T tokens of one sequence at positions cache.length().. (checking ids and capacity), appends them
// and writes logits for all T tokens ([T, V]) or only the last ([1, V]).
void forward_sequence(BatchModel& m, const int32_t* ids, int64_t T, KVCache& cache, float* logits, bool all_logits);

class CausalLM;
using ModelFactory = std::function<std::unique_ptr<CausalLM>(const ModelConfig&, WeightLoader&, Backend&)>;

class CausalLM : public BatchModel {
 public:
  CausalLM(const ModelConfig& cfg, Backend& be, const TPInfo& tp = {}) : cfg_(cfg), be_(be), tp_(tp) {
    if (!(be.device() == Device::cpu()))
      arena_.set_allocator([&be](size_t n) { return be.alloc(n); }, [&be](void* p) { be.free(p); }, be.device());
  }

  const ModelConfig& config() const { return cfg_; }
  Backend& backend() const { return be_; }
  int vocab_size() const override { return cfg_.vocab_size; }
  int max_context() const override { return cfg_.max_position_embeddings; }
  virtual std::string kv_layout() const = 0;

  // Runs a batch of sequences over a shared (paged) KV pool; writes logits ([rows.size(), V], host
  // memory; null: not copied, as on tensor-parallel ranks > 0) of the batch tokens listed in `logit_rows`.
  // The caller has checked ids and capacity.
  void forward_batch(const Batch& b, KVCache& pool, const std::vector<int64_t>& logit_rows, float* logits) override;
  void forward_batch_greedy(const Batch& b, KVCache& pool, const std::vector<int64_t>& logit_rows,
                            int32_t* ids) override;
  void forward_batch_sample(const Batch& b, KVCache& pool, const std::vector<int64_t>& logit_rows,
                            const SampleRowParams* params, int32_t* ids) override;
  bool device_sampling() const override { return be_.device_sampling(); }

 protected:
  // x [T, H] holds the embeddings on entry; runs every decoder layer in place, writing each segment's
  // new keys/values into `kv` and attending over its cached rows.
  virtual void layers(TensorView x, const Batch& b, KVCache& kv) = 0;
  // The forward pass; returns the logits [rows.size(), V] in backend memory (empty when no rows are wanted).
  TensorView forward_logits(const Batch& b, KVCache& pool, const std::vector<int64_t>& logit_rows);
  // Shared building blocks.
  void mlp(TensorView out, const TensorView& x, const MlpWeights& w);  // SwiGLU
  // Loads gate/up (fused on device backends) and down of a SwiGLU MLP under `prefix` (".gate_proj" ...).
  MlpWeights load_mlp(WeightLoader& wl, const std::string& prefix, int64_t I, int64_t H, bool bias = false);
  void load_common(WeightLoader& wl);  // embeddings, final norm, lm_head (tied or not)
  // Floats of arena workspace the layers need for T new tokens over S cached positions.
  virtual size_t layer_workspace_floats(int64_t T, int64_t S) const = 0;

  // Sums a row-parallel layer's partial outputs across ranks (no-op without tensor parallelism).
  void all_reduce(TensorView x) {
    if (tp_.comm) tp_.comm->all_reduce_sum(x);
  }

  const ModelConfig cfg_;
  Backend& be_;
  TPInfo tp_;
  Arena arena_;  // per-forward activations; sized on first use for the largest T seen
  // Decode-step graph key -> (offset of the logits in the arena, arena use after the step) of its recorded run.
  std::map<uint64_t, std::pair<size_t, size_t>> graph_out_;
  TensorView embed_, final_norm_;
  Linear lm_head_;
};

// The backend for `device` ("cpu", "reference", "cuda", "cuda:N"; tensor-parallel rank `rank` of a group).
std::unique_ptr<Backend> make_device_backend(const std::string& device, int rank = 0, int threads = 0);

// The one place architectures are registered: config.architectures[0] -> factory.
const std::map<std::string, ModelFactory>& model_registry();

// Per-family factories (models/<family>.cpp).
std::unique_ptr<CausalLM> make_llama(const ModelConfig&, WeightLoader&, Backend&);
std::unique_ptr<CausalLM> make_qwen2(const ModelConfig&, WeightLoader&, Backend&);
std::unique_ptr<CausalLM> make_deepseek(const ModelConfig&, WeightLoader&, Backend&);

}  // namespace dsfuse
