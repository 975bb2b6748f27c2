// Chat templates of Hugging Face checkpoints: tokenizer_config.json's `chat_template` rendered the
// way transformers' apply_chat_template does (Jinja2 with trim_blocks/lstrip_blocks, loop controls,
// raise_exception, strftime_now, tojson with ensure_ascii=False).
#pragma once
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "tokenizer/jinja.h"

namespace dsfuse::tmpl {

class ChatTemplate {
 public:
  // `dir_or_file`: a checkpoint/tokenizer directory (reads tokenizer_config.json) or the JSON file.
  // chat_template may be a string or a list of {name, template} (the "default" entry is used).
  static ChatTemplate from_tokenizer_config(const std::filesystem::path& dir_or_file);
  // From template text and special tokens directly (an empty token is left undefined, as
  // transformers does for tokens that are not set).
  explicit ChatTemplate(const std::string& source, std::string bos_token = {}, std::string eos_token = {},
                        std::string pad_token = {}, std::string unk_token = {});

  // messages: list of {role, content, ...}. extra: more template variables (tools, documents,
  // enable_thinking, ...; keys there override the defaults). Like transformers, `tools` and
  // `documents` are None unless given. Object key order is kept, which
  // matters for `tojson`, so prefer nlohmann::ordered_json.
  std::string render(const nlohmann::ordered_json& messages, bool add_generation_prompt,
                     const nlohmann::ordered_json& extra = nlohmann::ordered_json::object()) const;
  std::string render(const nlohmann::json& messages, bool add_generation_prompt,
                     const nlohmann::json& extra = nlohmann::json::object()) const;

  const std::string& source() const { return source_; }
  const std::string& bos_token() const { return bos_; }
  const std::string& eos_token() const { return eos_; }

 private:
  std::string source_;
  std::shared_ptr<const Template> tmpl_;
  std::string bos_, eos_, pad_, unk_;
};

}  // namespace dsfuse::tmpl
