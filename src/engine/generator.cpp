#include "engine/generator.h"

#include <algorithm>
#include <chrono>
#include <optional>

#include "core/error.h"
#include "engine/text_stream.h"

namespace dsfuse {

const char* finish_reason_name(FinishReason r) {
  switch (r) {
    case FinishReason::Eos:
    case FinishReason::StopString: return "stop";
    case FinishReason::Length:
    case FinishReason::ContextLimit: return "length";
    case FinishReason::Cancelled: return "cancelled";
  }
  return "?";
}

GenerateResult Generator::generate(const GenerateRequest& req, const std::function<void(const StreamPiece&)>& on_piece,
                                   const std::atomic<bool>* cancel) {
  using clock = std::chrono::steady_clock;
  DSFUSE_CHECK(!req.prompt_ids.empty(), "the prompt is empty: give at least one token");
  DSFUSE_CHECK(req.max_new_tokens >= 0, "max_new_tokens must be >= 0, got ", req.max_new_tokens);
  req.sampling.validate();
  const int64_t ctx = model_.max_context();
  const int64_t P = static_cast<int64_t>(req.prompt_ids.size());
  DSFUSE_CHECK(P < ctx, "the prompt has ", P, " tokens but the model's context is ", ctx,
               " tokens (max_position_embeddings): shorten the prompt");
  for (int32_t id : req.prompt_ids)
    DSFUSE_CHECK(id >= 0 && id < model_.vocab_size(), "prompt token id ", id, " is out of range [0, ",
                 model_.vocab_size(), ")");

  GenerateResult res;
  res.prompt_tokens = static_cast<int>(P);
  const int64_t budget = std::min<int64_t>(req.max_new_tokens, ctx - P);
  auto seq = model_.new_sequence(P + std::max<int64_t>(budget, 1));
  sampling::Sampler sampler(req.sampling);
  DSFUSE_CHECK(tok_ || req.stop.empty(), "stop strings need a tokenizer");
  std::optional<tok::StreamDecoder> detok;
  if (tok_) detok.emplace(*tok_, /*skip_special_tokens=*/true);
  StopMatcher stops(req.stop);
  ThinkSplitter think(req.prompt_opens_think);
  std::vector<int32_t> history = req.prompt_ids;
  std::vector<float> logits;

  auto emit = [&](const std::string& text, int32_t token, const sampling::SampleResult* sr) {
    if (text.empty() && !sr) return;
    StreamPiece piece;
    think.push(text, piece.reasoning, piece.content);
    res.text += text;
    res.content += piece.content;
    res.reasoning += piece.reasoning;
    piece.token = token;
    piece.sample = sr;
    if (on_piece) on_piece(piece);
  };

  const auto t0 = clock::now();
  model_.forward(*seq, req.prompt_ids, logits, false);
  auto t_first = t0;
  res.finish = budget < req.max_new_tokens ? FinishReason::ContextLimit : FinishReason::Length;
  for (int64_t i = 0; i < budget; ++i) {
    if (cancel && cancel->load()) {
      res.finish = FinishReason::Cancelled;
      break;
    }
    sampling::SampleResult sr;
    const int32_t tok = sampler.sample(logits, history, static_cast<size_t>(P), &sr);
    if (i == 0) {
      t_first = clock::now();
      res.prefill_seconds = std::chrono::duration<double>(t_first - t0).count();
    }
    res.ids.push_back(tok);
    history.push_back(tok);
    const bool eos = !req.ignore_eos && std::find(req.eos_ids.begin(), req.eos_ids.end(), tok) != req.eos_ids.end();
    res.samples.push_back(std::move(sr));
    if (eos) {
      res.finish = FinishReason::Eos;
      emit("", tok, &res.samples.back());
      break;
    }
    const std::string text = detok ? stops.push(detok->push(tok)) : std::string();
    emit(text, tok, &res.samples.back());
    if (stops.stopped()) {
      res.finish = FinishReason::StopString;
      break;
    }
    if (i + 1 < budget) model_.forward(*seq, std::span<const int32_t>(&tok, 1), logits, false);
  }
  if (res.finish != FinishReason::StopString && detok) emit(stops.push(detok->flush()) + stops.flush(), -1, nullptr);
  {
    StreamPiece tail;
    think.flush(tail.reasoning, tail.content);
    res.content += tail.content;
    res.reasoning += tail.reasoning;
    if (on_piece && (!tail.content.empty() || !tail.reasoning.empty())) on_piece(tail);
  }
  if (res.ids.size() > 1) res.decode_seconds = std::chrono::duration<double>(clock::now() - t_first).count();
  if (res.ids.empty()) res.prefill_seconds = std::chrono::duration<double>(clock::now() - t0).count();
  return res;
}

}  // namespace dsfuse
