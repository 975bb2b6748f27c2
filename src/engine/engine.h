// The serving engine (also behind `dsfuse run`): many concurrent requests, one loop (schedule -> run -> postprocess) on its own
// thread. Requests join and leave at token granularity. The HTTP server and `dsfuse run` talk to it only
// through submit()/cancel() and the per-request event callback.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "core/error.h"
#include "dsfuse/dsfuse.h"
#include "sampling/sampler.h"
#include "tokenizer/tokenizer.h"

namespace dsfuse {

class BatchModel;

enum class FinishReason { Eos, StopString, Length, ContextLimit, Cancelled };
const char* finish_reason_name(FinishReason r);  // "stop" / "length" / "cancelled" (OpenAI names)

// One streamed piece: new answer text and/or new reasoning text, and the token that produced it.
struct StreamPiece {
  std::string text;  // raw new text (reasoning and answer, tags included)
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


// Threads that draw a step's sampled rows in parallel (the cores, at most 16).
int sampling_threads();

struct EngineConfig {
  int block_size = 16;                 // tokens per KV block
  size_t kv_memory_bytes = 256u << 20;  // KV pool size (blocks = bytes / bytes per block)
  int max_num_seqs = 64;               // running batch cap
  int max_batched_tokens = 512;        // tokens per step (long prompts are prefilled in chunks)
  int max_queue = 256;                 // waiting requests beyond this are refused (QueueFull)
  bool prefix_caching = true;
};

struct EngineRequest {
  std::vector<int32_t> prompt_ids;
  sampling::SamplingParams sampling;
  int max_new_tokens = 256;
  std::vector<int32_t> eos_ids;
  bool ignore_eos = false;
  std::vector<std::string> stop;
  bool prompt_opens_think = false;
};

// Delivered to the request's callback on the engine thread, in order: one per generated token (its text
// may be empty while a multi-byte character or a possible stop string is held back), then a final one.
struct EngineEvent {
  uint64_t request_id = 0;
  StreamPiece piece;
  bool finished = false;
  FinishReason finish = FinishReason::Length;
  std::string error;  // set when the request failed inside the engine (finished is then true)
  int prompt_tokens = 0, completion_tokens = 0, cached_prompt_tokens = 0;
};

struct EngineStats {
  int64_t waiting = 0, running = 0;
  int64_t kv_blocks_total = 0, kv_blocks_used = 0;
  int64_t prefix_queries = 0, prefix_hits = 0;  // prompt blocks looked up / found in the prefix cache
  int64_t prompt_tokens = 0, generated_tokens = 0;
  int64_t steps = 0;
  int64_t preemptions = 0;  // sequences evicted from the KV pool to be recomputed later
};

class QueueFull : public Error {
 public:
  using Error::Error;
};

class Engine {
 public:
  using Callback = std::function<void(const EngineEvent&)>;

  Engine(Model& model, const tok::Tokenizer* tokenizer, EngineConfig cfg = {});
  // Over any batched model (tests use scripted ones). `tokenizer` may be null (no text, no stop strings).
  Engine(BatchModel& model, const tok::Tokenizer* tokenizer, EngineConfig cfg = {});
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Thread-safe. Throws dsfuse::Error for an invalid request (empty prompt, prompt over the context,
  // bad sampling parameters, ids out of range) and QueueFull when max_queue requests are waiting or the
  // engine is shutting down.
  uint64_t submit(EngineRequest req, Callback cb);
  // Thread-safe; the request's blocks are freed at the next step and its final event says Cancelled.
  void cancel(uint64_t id);
  // Stops accepting requests, lets running ones finish for up to `drain_seconds`, cancels the rest,
  // and joins the loop. Idempotent.
  void shutdown(double drain_seconds = 0);
  EngineStats stats() const;
  const EngineConfig& config() const { return cfg_; }

  // Submits and waits (the path of `dsfuse run`): pieces go to on_piece on the engine thread.
  GenerateResult generate(const EngineRequest& req, const std::function<void(const StreamPiece&)>& on_piece = {},
                          const std::atomic<bool>* cancel = nullptr);

  struct Impl;

 private:
  EngineConfig cfg_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace dsfuse
