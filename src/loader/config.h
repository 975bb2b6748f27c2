// config.json parsed into typed configs. Hub format (`rope_scaling` with `type` or `rope_type`) and
// transformers-v5 `rope_parameters` are both accepted. Missing or mistyped fields name the field.
#pragma once
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace dsfuse {

enum class RopeType { Default, Linear, Llama3, Yarn };
enum class Family { Llama, Qwen2, DeepseekV2, DeepseekV3 };

struct RopeConfig {
  RopeType type = RopeType::Default;
  double theta = 10000.0;
  double factor = 1.0;
  // llama3
  double low_freq_factor = 1.0, high_freq_factor = 4.0;
  double original_max_position_embeddings = 0;
  // yarn
  double beta_fast = 32, beta_slow = 1, mscale = 1, mscale_all_dim = 0;
  std::optional<double> attention_factor;
};

// Multi-head latent attention (DeepSeek-V2/V3).
struct MlaConfig {
  int q_lora_rank = 0;  // 0: plain q_proj
  int kv_lora_rank = 0;
  int qk_nope_head_dim = 0, qk_rope_head_dim = 0, v_head_dim = 0;
};

enum class TopkMethod { Greedy, GroupLimitedGreedy, NoauxTc };
enum class ScoringFunc { Softmax, Sigmoid };

struct MoeConfig {
  int n_routed_experts = 0, n_shared_experts = 0, num_experts_per_tok = 0, moe_intermediate_size = 0;
  int first_k_dense_replace = 0, moe_layer_freq = 1, n_group = 1, topk_group = 1;
  TopkMethod topk_method = TopkMethod::Greedy;
  ScoringFunc scoring = ScoringFunc::Softmax;
  bool norm_topk_prob = false;
  double routed_scaling_factor = 1.0;
};

struct QuantConfig {
  bool fp8 = false;  // quant_method == "fp8": float8_e4m3fn weights + weight_scale_inv blocks
  int block_rows = 128, block_cols = 128;
};

struct ModelConfig {
  std::filesystem::path source;  // the config.json it came from
  std::string architecture, model_type;
  Family family = Family::Llama;
  int vocab_size = 0, hidden_size = 0, intermediate_size = 0, num_hidden_layers = 0;
  int num_attention_heads = 0, num_key_value_heads = 0, head_dim = 0;
  int max_position_embeddings = 0;
  double rms_norm_eps = 1e-6;
  RopeConfig rope;
  bool tie_word_embeddings = false;
  bool attention_bias = false;  // o_proj bias (llama) and q/k/v bias
  bool qkv_bias = false;        // qwen2 always
  bool mlp_bias = false;
  std::string hidden_act = "silu";
  std::optional<MlaConfig> mla;  // DeepSeek
  std::optional<MoeConfig> moe;  // DeepSeek
  int num_nextn_predict_layers = 0;
  QuantConfig quant;
  std::vector<int> bos_token_ids, eos_token_ids;

  bool is_moe_layer(int layer) const;
};

// Architectures we run, as named in config.architectures[0].
const std::vector<std::string>& supported_architectures();

ModelConfig parse_config_json(const std::string& text, const std::string& what = "config.json");
ModelConfig load_config(const std::filesystem::path& model_dir);

}  // namespace dsfuse
