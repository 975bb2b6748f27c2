// Loader for a Hugging Face model directory's generation_config.json.
//
// Every field is optional; an absent field (or JSON null) stays unset so that callers can tell
// "not specified" from a value. Unknown fields (transformers_version, ...) are ignored.
// A missing file yields an all-unset config (found == false). Malformed JSON, a wrong type or an
// out-of-range value throws dsfuse::Error naming the file and the field.
#pragma once
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "sampling/sampler.h"

namespace dsfuse::sampling {

// How unspecified sampling fields are defaulted by GenerationConfig::sampling_params().
enum class DefaultsPolicy {
  // HF Transformers GenerationConfig defaults: do_sample absent -> false (greedy);
  // top_k absent -> 50 when sampling.
  kTransformers,
  // vLLM: only fields present in the file override SamplingParams defaults (top_k absent -> off);
  // do_sample is honoured only when explicitly false.
  kVllm,
};

struct GenerationConfig {
  bool found = false;                   // the file existed
  std::filesystem::path path;           // file that was (or would have been) read
  std::optional<int32_t> bos_token_id;
  std::vector<int32_t> eos_token_ids;   // eos_token_id: a single int or a list; empty when absent
  std::optional<int32_t> pad_token_id;  // a negative value (old configs use -1) is treated as unset
  std::optional<bool> do_sample;
  std::optional<float> temperature;
  std::optional<float> top_p;
  std::optional<int> top_k;
  std::optional<float> min_p;
  std::optional<float> repetition_penalty;
  std::optional<int> max_new_tokens;
  std::optional<int> max_length;        // prompt + generated, HF semantics

  bool is_eos(int32_t token) const;

  // Generation budget for a prompt of `prompt_len` tokens: max_new_tokens when set, else
  // max_length - prompt_len (>= 0) when set, else nullopt (HF's implicit max_length=20 is not
  // applied: the caller chooses).
  std::optional<int> max_new_tokens_for(size_t prompt_len) const;

  // Default SamplingParams for this model: do_sample == false -> temperature 0 (greedy); otherwise
  // temperature/top_p/top_k/min_p from the file. repetition_penalty is applied in both cases (HF
  // applies it to greedy search too). seed unset, logprobs -1. See DefaultsPolicy for absent fields.
  SamplingParams sampling_params(DefaultsPolicy policy = DefaultsPolicy::kTransformers) const;
};

// Parses generation_config.json text; `source` names the file in error messages.
GenerationConfig parse_generation_config(const std::string& json_text, const std::string& source);

// Reads <model_dir>/generation_config.json; missing file -> all-unset config with found == false.
GenerationConfig load_generation_config(const std::filesystem::path& model_dir);

}  // namespace dsfuse::sampling
