// Single-sequence generation: prompt -> prefill -> decode through the KV cache, with sampling, stop
// conditions (EOS ids, stop strings, max_new_tokens, context limit, cancellation) and streaming of
// text pieces (reasoning separated from the answer). The batched server engine reuses these pieces.
#pragma once
#include <atomic>
#include <functional>
#include <string>
#include <vector>

#include "dsfuse/dsfuse.h"
#include "sampling/sampler.h"
#include "tokenizer/tokenizer.h"

namespace dsfuse {

enum class FinishReason { Eos, StopString, Length, ContextLimit, Cancelled };
const char* finish_reason_name(FinishReason r);  // "stop" / "length" / "cancelled" (OpenAI names)

struct GenerateRequest {
  std::vector<int32_t> prompt_ids;
  sampling::SamplingParams sampling;
  int max_new_tokens = 256;
  std::vector<int32_t> eos_ids;
  bool ignore_eos = false;
  std::vector<std::string> stop;
  bool prompt_opens_think = false;  // the rendered prompt ends inside <think> (R1 chat templates)
};

// One streamed piece: new answer text and/or new reasoning text, and the token that produced it.
struct StreamPiece {
  std::string content;
  std::string reasoning;
  int32_t token = -1;
  const sampling::SampleResult* sample = nullptr;  // logprobs of `token`
};

struct GenerateResult {
  std::vector<int32_t> ids;  // generated ids (incl. a final EOS)
  std::string text;          // all generated text (stop string excluded, special tokens skipped)
  std::string content, reasoning;
  FinishReason finish = FinishReason::Length;
  std::vector<sampling::SampleResult> samples;  // per generated token (logprobs when requested)
  int prompt_tokens = 0;
  double prefill_seconds = 0, decode_seconds = 0;  // decode: time after the first token
};

class Generator {
 public:
  // `tokenizer` may be null: then ids are generated without text (stop strings need text).
  Generator(Model& model, const tok::Tokenizer* tokenizer) : model_(model), tok_(tokenizer) {}
  // Runs one request. `on_piece` (may be empty) receives text as it is produced; `cancel` is polled
  // between tokens. Throws dsfuse::Error for an empty prompt or one that fills the context.
  GenerateResult generate(const GenerateRequest& req, const std::function<void(const StreamPiece&)>& on_piece = {},
                          const std::atomic<bool>* cancel = nullptr);

 private:
  Model& model_;
  const tok::Tokenizer* tok_;
};

}  // namespace dsfuse
