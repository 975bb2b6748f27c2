// dsfuse::tmpl — a small Jinja2 interpreter for chat templates, with Hugging Face's settings:
// trim_blocks, lstrip_blocks, loop controls, raise_exception / strftime_now globals, tojson with
// ensure_ascii=False. Parse once, render many times; errors are dsfuse::Error naming the construct
// and template line.
#pragma once
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "tokenizer/jinja_value.h"

namespace dsfuse::tmpl {

struct TemplateAst;

// Bounds that keep hostile or buggy templates from running away (errors, not crashes).
struct RenderLimits {
  size_t max_output = size_t{256} << 20;  // bytes of output and of any one string/list built
  uint64_t max_steps = 20'000'000;        // loop iterations + macro calls
  int max_call_depth = 100;               // nested macro calls
};

class Template {
 public:
  explicit Template(const std::string& source);  // throws dsfuse::Error on a syntax error
  // `context` is a dict of variables (messages, add_generation_prompt, bos_token, ...).
  std::string render(const Value& context) const;
  std::string render(const nlohmann::ordered_json& context) const;

  RenderLimits limits;

 private:
  std::shared_ptr<const TemplateAst> ast_;
};

}  // namespace dsfuse::tmpl
