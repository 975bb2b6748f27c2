#include "tokenizer/chat_template.h"

#include <fstream>
#include <sstream>

#include "core/error.h"

namespace dsfuse::tmpl {

namespace {

// Special tokens in tokenizer_config.json are a string, null, or an AddedToken dict with "content".
std::string token_text(const nlohmann::ordered_json& cfg, const char* key, const std::string& file) {
  auto it = cfg.find(key);
  if (it == cfg.end() || it->is_null()) return {};
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object() && it->contains("content") && (*it)["content"].is_string())
    return (*it)["content"].get<std::string>();
  fail(cat(file, ": '", key, "' must be a string or an object with a string 'content'"));
}

}  // namespace

ChatTemplate ChatTemplate::from_tokenizer_config(const std::filesystem::path& dir_or_file) {
  std::filesystem::path file = dir_or_file;
  if (std::filesystem::is_directory(file)) file /= "tokenizer_config.json";
  std::ifstream in(file, std::ios::binary);
  DSFUSE_CHECK(in, "cannot open ", file.string());
  std::stringstream ss;
  ss << in.rdbuf();
  nlohmann::ordered_json cfg;
  try {
    cfg = nlohmann::ordered_json::parse(ss.str());
  } catch (const std::exception& e) {
    fail(cat(file.string(), ": invalid JSON: ", e.what()));
  }
  DSFUSE_CHECK(cfg.is_object(), file.string(), ": expected a JSON object");
  auto it = cfg.find("chat_template");
  DSFUSE_CHECK(it != cfg.end() && !it->is_null(), file.string(),
               ": no 'chat_template' (this tokenizer has no chat template; pass one explicitly)");
  std::string source;
  if (it->is_string()) {
    source = it->get<std::string>();
  } else if (it->is_array()) {
    bool found = false;
    std::string names;
    for (const auto& e : *it) {
      if (!e.is_object() || !e.contains("name") || !e.contains("template") || !e["name"].is_string() ||
          !e["template"].is_string())
        fail(cat(file.string(), ": 'chat_template' list entries must be {\"name\": str, \"template\": str}"));
      names += (names.empty() ? "" : ", ") + e["name"].get<std::string>();
      if (e["name"] == "default") {
        source = e["template"].get<std::string>();
        found = true;
      }
    }
    DSFUSE_CHECK(found, file.string(), ": 'chat_template' list has no \"default\" entry (has: ", names, ")");
  } else {
    fail(cat(file.string(), ": 'chat_template' must be a string or a list of {name, template}"));
  }
  const std::string f = file.string();
  try {
    return ChatTemplate(source, token_text(cfg, "bos_token", f), token_text(cfg, "eos_token", f),
                        token_text(cfg, "pad_token", f), token_text(cfg, "unk_token", f));
  } catch (const Error& e) {
    fail(cat(f, ": chat_template: ", e.what()));
  }
}

ChatTemplate::ChatTemplate(const std::string& source, std::string bos_token, std::string eos_token,
                           std::string pad_token, std::string unk_token)
    : source_(source),
      tmpl_(std::make_shared<const Template>(source)),
      bos_(std::move(bos_token)),
      eos_(std::move(eos_token)),
      pad_(std::move(pad_token)),
      unk_(std::move(unk_token)) {}

std::string ChatTemplate::render(const nlohmann::ordered_json& messages, bool add_generation_prompt,
                                 const nlohmann::ordered_json& extra) const {
  DSFUSE_CHECK(messages.is_array(), "chat template: 'messages' must be a JSON array, got ", messages.type_name());
  DSFUSE_CHECK(extra.is_null() || extra.is_object(), "chat template: extra variables must be a JSON object");
  Value ctx = Value::dict();
  auto& d = ctx.dict_obj();
  d.set("messages", Value::from_json(messages));
  d.set("add_generation_prompt", Value(add_generation_prompt));
  d.set("tools", Value::none());
  d.set("documents", Value::none());
  const std::pair<const char*, const std::string*> special[] = {
      {"bos_token", &bos_}, {"eos_token", &eos_}, {"unk_token", &unk_}, {"pad_token", &pad_}};
  for (const auto& [name, tok] : special)
    if (!tok->empty()) d.set(name, Value(*tok));
  if (extra.is_object())
    for (auto it = extra.begin(); it != extra.end(); ++it) d.set(it.key(), Value::from_json(it.value()));
  return tmpl_->render(ctx);
}

std::string ChatTemplate::render(const nlohmann::json& messages, bool add_generation_prompt,
                                 const nlohmann::json& extra) const {
  return render(nlohmann::ordered_json::parse(messages.dump()), add_generation_prompt,
                extra.is_null() ? nlohmann::ordered_json::object() : nlohmann::ordered_json::parse(extra.dump()));
}

}  // namespace dsfuse::tmpl
