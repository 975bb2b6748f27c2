#include "server/openai.h"

#include <cmath>

#include "engine/text_stream.h"

namespace dsfuse::server {

using json = nlohmann::json;
using ojson = nlohmann::ordered_json;

json error_json(const std::string& message, const std::string& type, const std::string& param, const std::string& code) {
  return {{"error",
           {{"message", message},
            {"type", type},
            {"param", param.empty() ? json(nullptr) : json(param)},
            {"code", code.empty() ? json(nullptr) : json(code)}}}};
}

namespace {

[[noreturn]] void bad(const std::string& msg, const std::string& param = {}) {
  throw ApiError(400, msg, "invalid_request_error", param);
}

double number(const json& j, const char* k) {
  if (!j[k].is_number()) bad(cat("'", k, "' must be a number, got ", j[k].dump()), k);
  const double v = j[k].get<double>();
  if (!std::isfinite(v)) bad(cat("'", k, "' must be finite"), k);
  return v;
}

int64_t integer(const json& j, const char* k) {
  if (!j[k].is_number_integer()) bad(cat("'", k, "' must be an integer, got ", j[k].dump()), k);
  return j[k].get<int64_t>();
}

bool boolean(const json& j, const char* k) {
  if (!j[k].is_boolean()) bad(cat("'", k, "' must be true or false, got ", j[k].dump()), k);
  return j[k].get<bool>();
}

bool present(const json& j, const char* k) { return j.contains(k) && !j[k].is_null(); }

std::string message_text(const json& content, size_t i) {
  if (content.is_null()) return "";
  if (content.is_string()) return content.get<std::string>();
  if (content.is_array()) {  // [{"type": "text", "text": ...}, ...]
    std::string s;
    for (const auto& part : content) {
      if (!part.is_object() || part.value("type", "") != "text" || !part.contains("text") || !part["text"].is_string())
        bad(cat("messages[", i, "].content: only text parts are supported"), "messages");
      s += part["text"].get<std::string>();
    }
    return s;
  }
  bad(cat("messages[", i, "].content must be a string or a list of text parts"), "messages");
}

}  // namespace

ApiRequest parse_request(const std::string& body, bool chat, const ModelContext& m) {
  json j;
  try {
    j = json::parse(body);
  } catch (const json::exception& e) {
    bad(cat("the request body is not valid JSON: ", e.what()));
  }
  if (!j.is_object()) bad("the request body must be a JSON object");
  ApiRequest r;
  r.chat = chat;
  if (present(j, "model")) {
    if (!j["model"].is_string()) bad("'model' must be a string", "model");
    if (j["model"].get<std::string>() != m.name)
      throw ApiError(404, cat("The model '", j["model"].get<std::string>(), "' does not exist (this server serves '", m.name,
                              "')"),
                     "invalid_request_error", "model", "model_not_found");
  }
  if (present(j, "n") && integer(j, "n") != 1) bad("only n=1 is supported", "n");
  if (present(j, "stream")) r.stream = boolean(j, "stream");
  if (present(j, "stream_options")) {
    if (!j["stream_options"].is_object()) bad("'stream_options' must be an object", "stream_options");
    if (present(j["stream_options"], "include_usage")) r.include_usage = boolean(j["stream_options"], "include_usage");
  }

  EngineRequest& e = r.engine;
  std::string rendered;
  if (chat) {
    if (!present(j, "messages") || !j["messages"].is_array() || j["messages"].empty())
      bad("'messages' must be a non-empty list of {role, content}", "messages");
    ojson msgs = ojson::array();
    for (size_t i = 0; i < j["messages"].size(); ++i) {
      const json& msg = j["messages"][i];
      if (!msg.is_object() || !msg.contains("role") || !msg["role"].is_string())
        bad(cat("messages[", i, "] must be an object with a string 'role'"), "messages");
      ojson o = ojson::parse(msg.dump());
      o["content"] = message_text(msg.contains("content") ? msg["content"] : json(nullptr), i);
      msgs.push_back(std::move(o));
    }
    if (!m.chat_template) bad("this model has no chat template: use /v1/completions", "messages");
    ojson extra = ojson::object();
    if (present(j, "tools")) extra["tools"] = ojson::parse(j["tools"].dump());
    try {
      rendered = m.chat_template->render(msgs, true, extra);
    } catch (const Error& err) {
      bad(cat("the chat template failed on these messages: ", err.what()), "messages");
    }
    e.prompt_ids = m.tokenizer->encode(rendered, false);
    e.prompt_opens_think = prompt_opens_think(rendered);
  } else {
    if (!present(j, "prompt")) bad("'prompt' is required", "prompt");
    const json& p = j["prompt"];
    if (p.is_string()) {
      e.prompt_ids = m.tokenizer->encode(p.get<std::string>(), true);
    } else if (p.is_array() && p.size() == 1 && p[0].is_string()) {
      e.prompt_ids = m.tokenizer->encode(p[0].get<std::string>(), true);
    } else if (p.is_array() && !p.empty() && p[0].is_number_integer()) {
      for (const auto& t : p) {
        if (!t.is_number_integer() || t.get<int64_t>() < 0 || t.get<int64_t>() >= m.vocab_size)
          bad(cat("'prompt' token ", t.dump(), " is not an id in [0, ", m.vocab_size, ")"), "prompt");
        e.prompt_ids.push_back(static_cast<int32_t>(t.get<int64_t>()));
      }
    } else {
      bad("'prompt' must be a string, a list of one string, or a list of token ids", "prompt");
    }
  }
  if (e.prompt_ids.empty()) bad("the prompt is empty", chat ? "messages" : "prompt");
  const int64_t P = static_cast<int64_t>(e.prompt_ids.size());
  if (P >= m.max_context)
    bad(cat("This model's maximum context length is ", m.max_context, " tokens, but the prompt has ", P, " tokens"),
        chat ? "messages" : "prompt");

  const char* mt = present(j, "max_completion_tokens") ? "max_completion_tokens" : "max_tokens";
  if (present(j, mt)) {
    const int64_t v = integer(j, mt);
    if (v <= 0) bad(cat("'", mt, "' must be at least 1, got ", v), mt);
    e.max_new_tokens = static_cast<int>(std::min<int64_t>(v, m.max_context - P));
  } else {
    e.max_new_tokens = static_cast<int>(m.max_context - P);
  }

  sampling::SamplingParams& s = e.sampling;
  s = m.defaults;
  if (present(j, "temperature")) s.temperature = static_cast<float>(number(j, "temperature"));
  if (present(j, "top_p")) s.top_p = static_cast<float>(number(j, "top_p"));
  if (present(j, "top_k")) s.top_k = static_cast<int>(integer(j, "top_k"));
  if (present(j, "min_p")) s.min_p = static_cast<float>(number(j, "min_p"));
  if (present(j, "presence_penalty")) s.presence_penalty = static_cast<float>(number(j, "presence_penalty"));
  if (present(j, "frequency_penalty")) s.frequency_penalty = static_cast<float>(number(j, "frequency_penalty"));
  if (present(j, "repetition_penalty")) s.repetition_penalty = static_cast<float>(number(j, "repetition_penalty"));
  if (present(j, "seed")) s.seed = static_cast<uint64_t>(integer(j, "seed"));
  if (present(j, "temperature") && (s.temperature < 0 || s.temperature > 2))
    bad(cat("'temperature' must be in [0, 2], got ", s.temperature), "temperature");
  if (chat) {
    if (present(j, "logprobs")) r.logprobs = boolean(j, "logprobs");
    if (present(j, "top_logprobs")) {
      r.top_logprobs = static_cast<int>(integer(j, "top_logprobs"));
      if (r.top_logprobs < 0 || r.top_logprobs > 20) bad("'top_logprobs' must be in [0, 20]", "top_logprobs");
      if (!r.logprobs) bad("'top_logprobs' needs 'logprobs': true", "top_logprobs");
    }
  } else if (present(j, "logprobs")) {
    r.top_logprobs = static_cast<int>(integer(j, "logprobs"));
    if (r.top_logprobs < 0 || r.top_logprobs > 20) bad("'logprobs' must be in [0, 20]", "logprobs");
    r.logprobs = true;
  }
  s.logprobs = r.logprobs ? std::max(r.top_logprobs, 0) : -1;
  try {
    s.validate();
  } catch (const Error& err) {
    bad(err.what());
  }
  if (present(j, "stop")) {
    const json& st = j["stop"];
    if (st.is_string()) e.stop.push_back(st.get<std::string>());
    else if (st.is_array()) {
      for (const auto& x : st) {
        if (!x.is_string()) bad("'stop' must be a string or a list of strings", "stop");
        e.stop.push_back(x.get<std::string>());
      }
    } else bad("'stop' must be a string or a list of strings", "stop");
  }
  if (present(j, "ignore_eos")) e.ignore_eos = boolean(j, "ignore_eos");
  e.eos_ids = m.eos_ids;
  return r;
}

Response::Response(const ApiRequest& req, const ModelContext& m, std::string id, int64_t created)
    : req_(req), m_(m), id_(std::move(id)), created_(created) {
  if (!req.chat) logprobs_ = {{"tokens", json::array()}, {"token_logprobs", json::array()}, {"top_logprobs", json::array()}};
}

json Response::logprob_entry(int32_t token, const sampling::SampleResult& s) const {
  auto bytes = [](const std::string& t) {
    json b = json::array();
    for (unsigned char c : t) b.push_back(static_cast<int>(c));
    return b;
  };
  const std::string t = m_.tokenizer->decode(std::span<const int32_t>(&token, 1), false);
  json top = json::array();
  for (const auto& [id, lp] : s.top) {
    const std::string tt = m_.tokenizer->decode(std::span<const int32_t>(&id, 1), false);
    top.push_back({{"token", tt}, {"logprob", lp}, {"bytes", bytes(tt)}});
  }
  return {{"token", t}, {"logprob", s.logprob}, {"bytes", bytes(t)}, {"top_logprobs", top}};
}

json Response::usage() const {
  return {{"prompt_tokens", prompt_tokens_},
          {"completion_tokens", completion_tokens_},
          {"total_tokens", prompt_tokens_ + completion_tokens_},
          {"prompt_tokens_details", {{"cached_tokens", cached_}}}};
}

json Response::chunk(json delta_or_text, const json& finish, const json& logprobs) const {
  json choice = {{"index", 0}};
  if (req_.chat) choice["delta"] = std::move(delta_or_text);
  else choice["text"] = std::move(delta_or_text);
  choice["logprobs"] = logprobs;
  choice["finish_reason"] = finish;
  return {{"id", id_},
          {"object", req_.chat ? "chat.completion.chunk" : "text_completion"},
          {"created", created_},
          {"model", m_.name},
          {"choices", json::array({choice})}};
}

std::vector<std::string> Response::on_event(const EngineEvent& ev) {
  std::vector<std::string> out;
  prompt_tokens_ = ev.prompt_tokens;
  completion_tokens_ = ev.completion_tokens;
  cached_ = ev.cached_prompt_tokens;
  json lp = nullptr;
  if (req_.logprobs && ev.piece.sample && ev.piece.token >= 0) {
    json entry = logprob_entry(ev.piece.token, *ev.piece.sample);
    if (req_.chat) {
      logprobs_.push_back(entry);
      lp = {{"content", json::array({entry})}};
    } else {
      logprobs_["tokens"].push_back(entry["token"]);
      logprobs_["token_logprobs"].push_back(entry["logprob"]);
      json top = json::object();
      for (const auto& t : entry["top_logprobs"]) top[t["token"].get<std::string>()] = t["logprob"];
      logprobs_["top_logprobs"].push_back(top);
      lp = {{"tokens", {entry["token"]}}, {"token_logprobs", {entry["logprob"]}}, {"top_logprobs", {top}}};
    }
  }
  content_ += ev.piece.content;
  reasoning_ += ev.piece.reasoning;
  text_ += ev.piece.text;
  if (req_.stream) {
    if (req_.chat && !sent_role_) {
      out.push_back(chunk({{"role", "assistant"}, {"content", ""}}, nullptr, nullptr).dump(-1, ' ', false, json::error_handler_t::replace));
      sent_role_ = true;
    }
    json delta = json::object();
    if (!ev.piece.reasoning.empty()) delta["reasoning_content"] = ev.piece.reasoning;
    if (!ev.piece.content.empty()) delta["content"] = ev.piece.content;
    const bool has_text = req_.chat ? !delta.empty() : !ev.piece.text.empty();
    if (has_text || !lp.is_null())
      out.push_back(chunk(req_.chat ? delta : json(ev.piece.text), nullptr, lp).dump(-1, ' ', false, json::error_handler_t::replace));
  }
  if (ev.finished) {
    finish_ = finish_reason_name(ev.finish);
    if (req_.stream) {
      out.push_back(chunk(req_.chat ? json::object() : json(""), finish_, nullptr).dump());
      if (req_.include_usage) {
        json u = chunk(json::object(), nullptr, nullptr);
        u["choices"] = json::array();
        u["usage"] = usage();
        out.push_back(u.dump());
      }
    }
  }
  return out;
}

json Response::final_json() const {
  json choice = {{"index", 0}};
  if (req_.chat) {
    json msg = {{"role", "assistant"}, {"content", content_}};
    if (!reasoning_.empty()) msg["reasoning_content"] = reasoning_;
    choice["message"] = msg;
    choice["logprobs"] = req_.logprobs ? json{{"content", logprobs_}} : json(nullptr);
  } else {
    choice["text"] = text_;
    choice["logprobs"] = req_.logprobs ? logprobs_ : json(nullptr);
  }
  choice["finish_reason"] = finish_;
  return {{"id", id_},
          {"object", req_.chat ? "chat.completion" : "text_completion"},
          {"created", created_},
          {"model", m_.name},
          {"choices", json::array({choice})},
          {"usage", usage()}};
}

}  // namespace dsfuse::server
