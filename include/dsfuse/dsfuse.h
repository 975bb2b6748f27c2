// dsfuse public C++ API: load a Hugging Face checkpoint directory and run forward passes.
//
//   auto model = dsfuse::Model::load("path/to/DeepSeek-R1-Distill-Qwen-1.5B");
//   auto seq = model->new_sequence(4096);            // KV cache for up to 4096 tokens
//   std::vector<float> logits;                       // [T, vocab] or [1, vocab]
//   model->forward(*seq, ids, logits, /*all_logits=*/false);
#pragma once
#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <vector>

namespace dsfuse {

struct LoadOptions {
  int threads = 0;            // 0: all cores (or $DSFUSE_THREADS)
  // "cpu", "reference" (scalar, for tests), "cuda" / "cuda:N" (builds with CUDA; DSFUSE_CUDA_F32=1 in the
  // environment forces f32 weights and GEMMs on the GPU), "auto" (cuda when a GPU is present, else cpu: the
  // command line's default)
  std::string device = "cpu";
  std::string quant = "none";  // weights in memory: "none" (as stored), "int8", "int8-asym"
  int tensor_parallel = 1;     // ranks (one backend and one thread each; heads, MLPs, experts, vocab split)
};

// "auto" -> "cuda" when this build has CUDA and a GPU is present, else "cpu"; other names unchanged.
std::string resolve_device(const std::string& device);

struct ModelInfo {
  std::string architecture, family;
  int64_t parameters = 0;        // elements of the weights loaded (excl. ignored tensors)
  int64_t weight_bytes = 0;      // bytes of those weights as stored
  std::vector<std::pair<std::string, int64_t>> dtypes;  // dtype name -> parameter count
  int64_t kv_bytes_per_token = 0;
  std::string kv_layout;         // human description, e.g. "MLA latent 512 + rope 64 per layer, f32"
  std::vector<std::string> ignored_tensors;  // present but deliberately not loaded (e.g. MTP)
  int vocab_size = 0, num_layers = 0, hidden_size = 0, max_position_embeddings = 0;
};

// One sequence's state (its KV cache). Tokens are appended by Model::forward.
class Sequence {
 public:
  virtual ~Sequence() = default;
  virtual int64_t length() const = 0;      // tokens already in the cache
  virtual int64_t capacity() const = 0;
  virtual void truncate(int64_t n) = 0;    // drop cached tokens after the first n
};

class Model {
 public:
  // Loads config.json and the safetensors weights of `dir` (memory-mapped; weights used as stored).
  // Throws dsfuse::Error (a std::runtime_error) with a message naming the file/tensor/field at fault.
  static std::unique_ptr<Model> load(const std::filesystem::path& dir, const LoadOptions& opts = {});
  // Random weights of the real shapes from a config.json alone (for benchmarks), like vLLM's dummy format.
  static std::unique_ptr<Model> load_dummy(const std::filesystem::path& config_json, const LoadOptions& opts = {},
                                           uint64_t seed = 0);
  virtual ~Model() = default;

  virtual ModelInfo info() const = 0;
  virtual int vocab_size() const = 0;
  virtual int max_context() const = 0;

  virtual std::unique_ptr<Sequence> new_sequence(int64_t max_tokens) = 0;
  // Appends `ids` to `seq` (positions seq.length() ...) and writes logits: [T, vocab] row-major when
  // all_logits, else only the last token's [vocab]. Throws on out-of-range ids or a full sequence.
  virtual void forward(Sequence& seq, std::span<const int32_t> ids, std::vector<float>& logits,
                       bool all_logits) = 0;
};

// CPU features detected at run time (e.g. "avx2 fma f16c").
std::string cpu_features();

}  // namespace dsfuse
