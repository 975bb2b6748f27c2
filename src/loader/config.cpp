#include "loader/config.h"

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"

namespace dsfuse {

using json = nlohmann::json;

namespace {

struct Reader {
  const json& j;
  std::string what;

  bool has(const char* k) const { return j.contains(k) && !j[k].is_null(); }

  int get_int(const char* k) const {
    DSFUSE_CHECK(has(k), what, ": missing field '", k, "'");
    return as_int(k, j[k]);
  }
  int get_int(const char* k, int def) const { return has(k) ? as_int(k, j[k]) : def; }
  int as_int(const char* k, const json& v) const {
    DSFUSE_CHECK(v.is_number_integer() || (v.is_number_float() && v.get<double>() == static_cast<int64_t>(v.get<double>())),
                 what, ": field '", k, "' must be an integer, got ", v.dump());
    int64_t x = v.is_number_integer() ? v.get<int64_t>() : static_cast<int64_t>(v.get<double>());
    DSFUSE_CHECK(x >= 0 && x < (1ll << 31), what, ": field '", k, "' out of range: ", x);
    return static_cast<int>(x);
  }
  double get_num(const char* k, double def) const {
    if (!has(k)) return def;
    DSFUSE_CHECK(j[k].is_number(), what, ": field '", k, "' must be a number, got ", j[k].dump());
    return j[k].get<double>();
  }
  bool get_bool(const char* k, bool def) const {
    if (!has(k)) return def;
    DSFUSE_CHECK(j[k].is_boolean(), what, ": field '", k, "' must be true or false, got ", j[k].dump());
    return j[k].get<bool>();
  }
  std::string get_str(const char* k, const std::string& def) const {
    if (!has(k)) return def;
    DSFUSE_CHECK(j[k].is_string(), what, ": field '", k, "' must be a string, got ", j[k].dump());
    return j[k].get<std::string>();
  }
  std::vector<int> get_ids(const char* k) const {
    std::vector<int> out;
    if (!has(k)) return out;
    if (j[k].is_array()) {
      for (const auto& v : j[k]) out.push_back(as_int(k, v));
    } else {
      out.push_back(as_int(k, j[k]));
    }
    return out;
  }
};

void parse_rope(const json& root, const std::string& what, ModelConfig& c) {
  Reader r{root, what};
  c.rope.theta = r.get_num("rope_theta", 10000.0);
  const json* rs = nullptr;
  std::string field;
  if (root.contains("rope_scaling") && !root["rope_scaling"].is_null()) {
    rs = &root["rope_scaling"];
    field = "rope_scaling";
  } else if (root.contains("rope_parameters") && !root["rope_parameters"].is_null()) {
    rs = &root["rope_parameters"];
    field = "rope_parameters";
  }
  if (!rs) return;
  DSFUSE_CHECK(rs->is_object(), what, ": '", field, "' must be an object");
  Reader s{*rs, what + ": " + field};
  std::string type = s.get_str("rope_type", s.get_str("type", "default"));
  if (s.has("rope_theta")) c.rope.theta = s.get_num("rope_theta", c.rope.theta);
  c.rope.factor = s.get_num("factor", 1.0);
  c.rope.original_max_position_embeddings = s.get_num("original_max_position_embeddings", 0);
  if (type == "default") {
    c.rope.type = RopeType::Default;
  } else if (type == "linear") {
    c.rope.type = RopeType::Linear;
  } else if (type == "llama3") {
    c.rope.type = RopeType::Llama3;
    c.rope.low_freq_factor = s.get_num("low_freq_factor", 1.0);
    c.rope.high_freq_factor = s.get_num("high_freq_factor", 4.0);
    DSFUSE_CHECK(c.rope.original_max_position_embeddings > 0, what, ": ", field,
                 ".original_max_position_embeddings is required for llama3 rope");
  } else if (type == "yarn") {
    c.rope.type = RopeType::Yarn;
    c.rope.beta_fast = s.get_num("beta_fast", 32);
    c.rope.beta_slow = s.get_num("beta_slow", 1);
    c.rope.mscale = s.get_num("mscale", 1);
    c.rope.mscale_all_dim = s.get_num("mscale_all_dim", 0);
    if (s.has("attention_factor")) c.rope.attention_factor = s.get_num("attention_factor", 1.0);
    if (c.rope.original_max_position_embeddings <= 0)
      c.rope.original_max_position_embeddings = c.max_position_embeddings;
  } else {
    fail(cat(what, ": ", field, ".rope_type '", type, "' is not supported (supported: default, linear, llama3, yarn)"));
  }
  DSFUSE_CHECK(c.rope.factor > 0, what, ": ", field, ".factor must be positive");
}

}  // namespace

const std::vector<std::string>& supported_architectures() {
  static const std::vector<std::string> k = {"LlamaForCausalLM", "Qwen2ForCausalLM", "DeepseekV2ForCausalLM",
                                             "DeepseekV3ForCausalLM"};
  return k;
}

bool ModelConfig::is_moe_layer(int layer) const {
  return moe && moe->n_routed_experts > 0 && layer >= moe->first_k_dense_replace &&
         layer % std::max(1, moe->moe_layer_freq) == 0;
}

ModelConfig parse_config_json(const std::string& text, const std::string& what) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    fail(cat(what, ": not valid JSON (", e.what(), ")"));
  }
  DSFUSE_CHECK(j.is_object(), what, ": must be a JSON object");
  Reader r{j, what};
  ModelConfig c;
  DSFUSE_CHECK(r.has("architectures") && j["architectures"].is_array() && !j["architectures"].empty() &&
                   j["architectures"][0].is_string(),
               what, ": missing 'architectures' (a list naming the model class)");
  c.architecture = j["architectures"][0].get<std::string>();
  c.model_type = r.get_str("model_type", "");
  if (c.architecture == "LlamaForCausalLM") c.family = Family::Llama;
  else if (c.architecture == "Qwen2ForCausalLM") c.family = Family::Qwen2;
  else if (c.architecture == "DeepseekV2ForCausalLM") c.family = Family::DeepseekV2;
  else if (c.architecture == "DeepseekV3ForCausalLM") c.family = Family::DeepseekV3;
  else {
    std::string list;
    for (const auto& a : supported_architectures()) list += (list.empty() ? "" : ", ") + a;
    fail(cat(what, ": unsupported architecture '", c.architecture, "' (supported: ", list, ")"));
  }

  c.vocab_size = r.get_int("vocab_size");
  c.hidden_size = r.get_int("hidden_size");
  c.num_hidden_layers = r.get_int("num_hidden_layers");
  c.num_attention_heads = r.get_int("num_attention_heads");
  c.num_key_value_heads = r.get_int("num_key_value_heads", c.num_attention_heads);
  c.intermediate_size = r.get_int("intermediate_size");
  c.max_position_embeddings = r.get_int("max_position_embeddings", 4096);
  c.rms_norm_eps = r.get_num("rms_norm_eps", 1e-6);
  c.tie_word_embeddings = r.get_bool("tie_word_embeddings", false);
  c.hidden_act = r.get_str("hidden_act", "silu");
  DSFUSE_CHECK(c.hidden_act == "silu", what, ": hidden_act '", c.hidden_act, "' is not supported (only silu)");
  DSFUSE_CHECK(c.vocab_size > 0 && c.hidden_size > 0 && c.num_attention_heads > 0 && c.num_hidden_layers > 0,
               what, ": vocab_size, hidden_size, num_attention_heads and num_hidden_layers must be positive");
  DSFUSE_CHECK(c.num_key_value_heads > 0 && c.num_attention_heads % c.num_key_value_heads == 0, what,
               ": num_attention_heads (", c.num_attention_heads, ") must be a multiple of num_key_value_heads (",
               c.num_key_value_heads, ")");
  c.head_dim = r.get_int("head_dim", c.hidden_size / c.num_attention_heads);
  c.attention_bias = r.get_bool("attention_bias", false);
  c.mlp_bias = r.get_bool("mlp_bias", false);
  c.bos_token_ids = r.get_ids("bos_token_id");
  c.eos_token_ids = r.get_ids("eos_token_id");
  parse_rope(j, what, c);

  if (c.family == Family::Qwen2) {
    c.qkv_bias = true;
    DSFUSE_CHECK(!r.get_bool("use_sliding_window", false), what,
                 ": use_sliding_window=true is not supported yet (Qwen2 sliding-window attention)");
  }
  if (c.family == Family::Llama) c.qkv_bias = c.attention_bias;

  if (c.family == Family::DeepseekV2 || c.family == Family::DeepseekV3) {
    MlaConfig m;
    m.q_lora_rank = r.get_int("q_lora_rank", 0);
    m.kv_lora_rank = r.get_int("kv_lora_rank");
    m.qk_nope_head_dim = r.get_int("qk_nope_head_dim");
    m.qk_rope_head_dim = r.get_int("qk_rope_head_dim");
    m.v_head_dim = r.get_int("v_head_dim");
    DSFUSE_CHECK(m.qk_rope_head_dim % 2 == 0, what, ": qk_rope_head_dim must be even");
    c.mla = m;
    MoeConfig e;
    e.n_routed_experts = r.get_int("n_routed_experts", 0);
    if (e.n_routed_experts > 0) {
      e.n_shared_experts = r.get_int("n_shared_experts", 0);
      e.num_experts_per_tok = r.get_int("num_experts_per_tok");
      e.moe_intermediate_size = r.get_int("moe_intermediate_size");
      e.first_k_dense_replace = r.get_int("first_k_dense_replace", 0);
      e.moe_layer_freq = r.get_int("moe_layer_freq", 1);
      e.n_group = r.get_int("n_group", 1);
      e.topk_group = r.get_int("topk_group", 1);
      e.norm_topk_prob = r.get_bool("norm_topk_prob", false);
      e.routed_scaling_factor = r.get_num("routed_scaling_factor", 1.0);
      const std::string tm = r.get_str("topk_method", c.family == Family::DeepseekV3 ? "noaux_tc" : "greedy");
      if (tm == "greedy") e.topk_method = TopkMethod::Greedy;
      else if (tm == "group_limited_greedy") e.topk_method = TopkMethod::GroupLimitedGreedy;
      else if (tm == "noaux_tc") e.topk_method = TopkMethod::NoauxTc;
      else fail(cat(what, ": topk_method '", tm, "' is not supported (greedy, group_limited_greedy, noaux_tc)"));
      const std::string sf = r.get_str("scoring_func", c.family == Family::DeepseekV3 ? "sigmoid" : "softmax");
      if (sf == "softmax") e.scoring = ScoringFunc::Softmax;
      else if (sf == "sigmoid") e.scoring = ScoringFunc::Sigmoid;
      else fail(cat(what, ": scoring_func '", sf, "' is not supported (softmax, sigmoid)"));
      DSFUSE_CHECK(e.num_experts_per_tok > 0 && e.num_experts_per_tok <= e.n_routed_experts, what,
                   ": num_experts_per_tok must be in [1, n_routed_experts]");
      DSFUSE_CHECK(e.n_group > 0 && e.n_routed_experts % e.n_group == 0, what, ": n_routed_experts (",
                   e.n_routed_experts, ") must be divisible by n_group (", e.n_group, ")");
      DSFUSE_CHECK(e.topk_group > 0 && e.topk_group <= e.n_group, what, ": topk_group must be in [1, n_group]");
      c.moe = e;
    }
    c.num_nextn_predict_layers = r.get_int("num_nextn_predict_layers", 0);
  }

  if (r.has("quantization_config")) {
    DSFUSE_CHECK(j["quantization_config"].is_object(), what, ": quantization_config must be an object");
    Reader q{j["quantization_config"], what + ": quantization_config"};
    const std::string method = q.get_str("quant_method", "");
    DSFUSE_CHECK(method == "fp8", what, ": quantization_config.quant_method '", method,
                 "' is not supported (only fp8 block weights)");
    c.quant.fp8 = true;
    if (q.has("weight_block_size")) {
      const json& b = j["quantization_config"]["weight_block_size"];
      DSFUSE_CHECK(b.is_array() && b.size() == 2, what, ": quantization_config.weight_block_size must be [rows, cols]");
      c.quant.block_rows = q.as_int("weight_block_size", b[0]);
      c.quant.block_cols = q.as_int("weight_block_size", b[1]);
      DSFUSE_CHECK(c.quant.block_rows > 0 && c.quant.block_cols > 0, what, ": weight_block_size must be positive");
    }
  }
  return c;
}

ModelConfig load_config(const std::filesystem::path& model_dir) {
  const auto path = std::filesystem::is_directory(model_dir) ? model_dir / "config.json" : model_dir;
  std::ifstream f(path);
  DSFUSE_CHECK(f.good(), path.string(), ": cannot read (is this a Hugging Face model directory?)");
  std::stringstream ss;
  ss << f.rdbuf();
  ModelConfig c = parse_config_json(ss.str(), path.string());
  c.source = path;
  return c;
}

}  // namespace dsfuse
