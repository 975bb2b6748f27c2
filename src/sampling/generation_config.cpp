#include "sampling/generation_config.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <limits>
#include <sstream>

#include "core/error.h"

namespace dsfuse::sampling {

namespace {

using json = nlohmann::json;

// Integer value of j (an integer, or a float with an integral value) within [lo, hi].
int64_t get_int(const json& j, const std::string& src, const char* field, int64_t lo, int64_t hi) {
  double d = 0;
  bool ok = false;
  if (j.is_number_integer()) {
    if (j.is_number_unsigned()) {
      const uint64_t u = j.get<uint64_t>();
      DSFUSE_CHECK(u <= static_cast<uint64_t>(hi), src, ": field '", field, "' must be in [", lo,
                   ", ", hi, "], got ", j.dump());
      return static_cast<int64_t>(u);
    }
    const int64_t v = j.get<int64_t>();
    DSFUSE_CHECK(v >= lo && v <= hi, src, ": field '", field, "' must be in [", lo, ", ", hi,
                 "], got ", j.dump());
    return v;
  }
  if (j.is_number_float()) {
    d = j.get<double>();
    ok = std::isfinite(d) && d == std::floor(d);
  }
  DSFUSE_CHECK(ok, src, ": field '", field, "' must be an integer, got ", j.dump());
  DSFUSE_CHECK(d >= static_cast<double>(lo) && d <= static_cast<double>(hi), src, ": field '",
               field, "' must be in [", lo, ", ", hi, "], got ", j.dump());
  return static_cast<int64_t>(d);
}

double get_num(const json& j, const std::string& src, const char* field) {
  DSFUSE_CHECK(j.is_number(), src, ": field '", field, "' must be a number, got ", j.dump());
  const double d = j.get<double>();
  DSFUSE_CHECK(std::isfinite(d), src, ": field '", field, "' must be finite, got ", j.dump());
  return d;
}

constexpr int64_t kI32Max = std::numeric_limits<int32_t>::max();

}  // namespace

GenerationConfig parse_generation_config(const std::string& json_text, const std::string& src) {
  json j;
  try {
    j = json::parse(json_text);
  } catch (const json::exception& e) {
    fail(cat(src, ": malformed JSON: ", e.what()));
  }
  DSFUSE_CHECK(j.is_object(), src, ": top level must be a JSON object, got ", j.type_name());

  GenerationConfig g;
  g.found = true;
  g.path = src;
  auto field = [&](const char* name) -> const json* {
    auto it = j.find(name);
    if (it == j.end() || it->is_null()) return nullptr;
    return &*it;
  };

  if (const json* v = field("bos_token_id"))
    g.bos_token_id = static_cast<int32_t>(get_int(*v, src, "bos_token_id", 0, kI32Max));
  if (const json* v = field("eos_token_id")) {
    if (v->is_array()) {
      for (size_t i = 0; i < v->size(); ++i) {
        const std::string name = cat("eos_token_id[", i, "]");
        g.eos_token_ids.push_back(
            static_cast<int32_t>(get_int((*v)[i], src, name.c_str(), 0, kI32Max)));
      }
    } else {
      DSFUSE_CHECK(v->is_number(), src,
                   ": field 'eos_token_id' must be an integer or a list of integers, got ",
                   v->dump());
      g.eos_token_ids.push_back(static_cast<int32_t>(get_int(*v, src, "eos_token_id", 0, kI32Max)));
    }
  }
  if (const json* v = field("pad_token_id")) {
    const int64_t p = get_int(*v, src, "pad_token_id", std::numeric_limits<int32_t>::min(), kI32Max);
    if (p >= 0) g.pad_token_id = static_cast<int32_t>(p);
  }
  if (const json* v = field("do_sample")) {
    DSFUSE_CHECK(v->is_boolean(), src, ": field 'do_sample' must be true or false, got ",
                 v->dump());
    g.do_sample = v->get<bool>();
  }
  if (const json* v = field("temperature")) {
    const double t = get_num(*v, src, "temperature");
    DSFUSE_CHECK(t >= 0.0, src, ": field 'temperature' must be >= 0, got ", v->dump());
    g.temperature = static_cast<float>(t);
  }
  if (const json* v = field("top_p")) {
    const double p = get_num(*v, src, "top_p");
    DSFUSE_CHECK(p > 0.0 && p <= 1.0, src, ": field 'top_p' must be in (0, 1], got ", v->dump());
    g.top_p = static_cast<float>(p);
  }
  if (const json* v = field("top_k")) g.top_k = static_cast<int>(get_int(*v, src, "top_k", -1, kI32Max));
  if (const json* v = field("min_p")) {
    const double p = get_num(*v, src, "min_p");
    DSFUSE_CHECK(p >= 0.0 && p <= 1.0, src, ": field 'min_p' must be in [0, 1], got ", v->dump());
    g.min_p = static_cast<float>(p);
  }
  if (const json* v = field("repetition_penalty")) {
    const double r = get_num(*v, src, "repetition_penalty");
    DSFUSE_CHECK(r > 0.0, src, ": field 'repetition_penalty' must be > 0, got ", v->dump());
    g.repetition_penalty = static_cast<float>(r);
  }
  if (const json* v = field("max_new_tokens"))
    g.max_new_tokens = static_cast<int>(get_int(*v, src, "max_new_tokens", 0, kI32Max));
  if (const json* v = field("max_length"))
    g.max_length = static_cast<int>(get_int(*v, src, "max_length", 0, kI32Max));
  return g;
}

GenerationConfig load_generation_config(const std::filesystem::path& model_dir) {
  const std::filesystem::path p = model_dir / "generation_config.json";
  if (!std::filesystem::exists(p)) {
    GenerationConfig g;
    g.path = p;
    return g;
  }
  std::ifstream f(p, std::ios::binary);
  DSFUSE_CHECK(f.good(), p.string(), ": cannot open file");
  std::ostringstream ss;
  ss << f.rdbuf();
  DSFUSE_CHECK(!f.bad(), p.string(), ": read error");
  GenerationConfig g = parse_generation_config(ss.str(), p.string());
  g.path = p;
  return g;
}

bool GenerationConfig::is_eos(int32_t token) const {
  return std::find(eos_token_ids.begin(), eos_token_ids.end(), token) != eos_token_ids.end();
}

std::optional<int> GenerationConfig::max_new_tokens_for(size_t prompt_len) const {
  if (max_new_tokens) return *max_new_tokens;
  if (max_length) {
    const int64_t left = static_cast<int64_t>(*max_length) - static_cast<int64_t>(prompt_len);
    return static_cast<int>(std::max<int64_t>(left, 0));
  }
  return std::nullopt;
}

SamplingParams GenerationConfig::sampling_params(DefaultsPolicy policy) const {
  SamplingParams p;
  const bool hf = policy == DefaultsPolicy::kTransformers;
  const bool sample = do_sample.value_or(!hf);
  if (temperature) p.temperature = *temperature;
  if (top_p) p.top_p = *top_p;
  if (top_k) p.top_k = *top_k;
  else if (hf) p.top_k = 50;  // transformers.GenerationConfig default
  if (min_p) p.min_p = *min_p;
  if (repetition_penalty) p.repetition_penalty = *repetition_penalty;
  if (!sample) p.temperature = 0.0f;
  try {
    p.validate();
  } catch (const Error& e) {
    fail(cat(path.string(), ": ", e.what()));
  }
  return p;
}

}  // namespace dsfuse::sampling
