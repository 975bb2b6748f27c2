// OpenAI API mapping: request JSON -> EngineRequest (validated, errors name the field), and response /
// stream-chunk JSON shaped exactly like OpenAI's (chat.completion, chat.completion.chunk, text_completion).
#pragma once
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "engine/engine.h"
#include "sampling/generation_config.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace dsfuse::server {

// An error answered with {"error": {"message", "type", "param", "code"}}.
struct ApiError : Error {
  ApiError(int status, std::string message, std::string type, std::string param = {}, std::string code = {})
      : Error(message), status(status), type(std::move(type)), param(std::move(param)), code(std::move(code)) {}
  int status;
  std::string type, param, code;
};
nlohmann::json error_json(const std::string& message, const std::string& type, const std::string& param,
                          const std::string& code);

// What the API needs to know about the served model.
struct ModelContext {
  std::string name;  // served model name
  const tok::Tokenizer* tokenizer = nullptr;
  const tmpl::ChatTemplate* chat_template = nullptr;  // may be null (then chat requests are refused)
  sampling::SamplingParams defaults;
  std::vector<int32_t> eos_ids;
  int max_context = 0;
  int vocab_size = 0;
};

struct ApiRequest {
  bool chat = true;
  bool stream = false;
  bool include_usage = false;
  bool logprobs = false;
  int top_logprobs = 0;
  EngineRequest engine;
};

// Parses and validates a /v1/chat/completions (chat) or /v1/completions body; throws ApiError (400/404).
ApiRequest parse_request(const std::string& body, bool chat, const ModelContext& m);

// Accumulates a request's output and renders responses and stream chunks.
class Response {
 public:
  Response(const ApiRequest& req, const ModelContext& m, std::string id, int64_t created);
  // Streaming: the chunks (JSON texts) one engine event produces; empty when there is nothing to send.
  std::vector<std::string> on_event(const EngineEvent& ev);
  // Non-streaming: the whole response after the final event.
  nlohmann::json final_json() const;

 private:
  nlohmann::json chunk(nlohmann::json delta_or_text, const nlohmann::json& finish, const nlohmann::json& logprobs) const;
  nlohmann::json logprob_entry(int32_t token, const sampling::SampleResult& s) const;
  nlohmann::json usage() const;

  const ApiRequest req_;  // a copy: the response outlives the handler that parsed the request
  const ModelContext& m_;
  std::string id_;
  int64_t created_;
  bool sent_role_ = false;
  std::string content_, reasoning_, text_;
  nlohmann::json logprobs_ = nlohmann::json::array();  // chat: content entries; completions: parallel arrays
  std::string finish_;
  int prompt_tokens_ = 0, completion_tokens_ = 0, cached_ = 0;
};

}  // namespace dsfuse::server
