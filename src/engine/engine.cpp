// Engine loop: schedule -> run -> postprocess, one step at a time on the engine thread.
//   schedule: running decodes first (one token each, preempting the newest sequence when the KV pool is
//             full), then prefill chunks of admitted prompts within the token budget, then admissions
//             from the waiting queue (FIFO) while blocks and batch slots allow.
//   run:      one batched forward over every scheduled sequence (paged KV, prefix-cached blocks skipped).
//   postprocess: sample, detokenize, stop checks, events; finished sequences free their blocks.
#include "engine/engine.h"

#include <algorithm>
#include <chrono>
#include <exception>
#include <optional>
#include <thread>

#include "core/log.h"
#include "core/thread_pool.h"
#include "engine/text_stream.h"
#include "kv/block_manager.h"
#include "models/model.h"

namespace dsfuse {

int sampling_threads() {
  return static_cast<int>(std::clamp<unsigned>(std::thread::hardware_concurrency(), 1u, 16u));
}

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

using clock_type = std::chrono::steady_clock;

namespace {

struct Seq {
  uint64_t id = 0;
  EngineRequest req;
  Engine::Callback cb;
  std::vector<int32_t> tokens;  // prompt + generated
  size_t num_prompt = 0;
  int64_t computed = 0;          // tokens whose KV rows are in the cache
  int64_t cached_prompt = 0;     // prompt tokens served from the prefix cache (first admission)
  std::vector<int32_t> table;    // block table
  size_t sealed = 0;
  uint64_t chain = 0;
  bool admitted_once = false;
  std::optional<sampling::Sampler> sampler;
  std::optional<tok::StreamDecoder> detok;
  std::optional<StopMatcher> stops;
  std::optional<ThinkSplitter> think;
  int generated = 0;
  bool cancelled = false;
};

}  // namespace

struct Engine::Impl {
  Impl(BatchModel& m, const tok::Tokenizer* t, const EngineConfig& c);
  void loop();
  bool step();  // false when idle
  void finish(Seq& s, FinishReason why, const std::string& error = {});
  void emit(Seq& s, const std::string& text, int32_t token, const sampling::SampleResult* sr, bool done,
            FinishReason why);
  void preempt(std::shared_ptr<Seq> s);

  BatchModel& model;
  const tok::Tokenizer* tok;
  EngineConfig cfg;
  std::unique_ptr<KVCache> pool;
  std::unique_ptr<BlockManager> blocks;

  mutable std::mutex mu;
  std::condition_variable cv;
  std::deque<std::shared_ptr<Seq>> waiting;  // guarded by mu (submit side) and drained by the loop
  std::vector<uint64_t> cancels;             // guarded by mu
  bool accepting = true, stop_loop = false;
  std::atomic<int64_t> drain_deadline_ns{0};
  uint64_t next_id = 1;

  // Loop-owned state.
  std::vector<std::shared_ptr<Seq>> running;
  std::deque<std::shared_ptr<Seq>> queue;  // admitted from `waiting`, not yet running (incl. preempted)
  EngineStats st;
  std::vector<int32_t> ids, pos;
  std::vector<float> logits;
  // Sampled rows of a step are drawn in parallel (each sequence has its own Sampler): a 152k-vocab top-p draw
  // costs ~1-4 ms on one core, so 64 rows one after another would take longer than the GPU step itself.
  std::unique_ptr<ThreadPool> sample_pool;
  std::vector<int32_t> sampled_ids;
  std::vector<sampling::SampleResult> sampled_res;
  std::vector<std::exception_ptr> sampled_err;
  std::thread thread;
};

Engine::Impl::Impl(BatchModel& m, const tok::Tokenizer* t, const EngineConfig& c) : model(m), tok(t), cfg(c) {
  DSFUSE_CHECK(cfg.block_size > 0 && cfg.max_num_seqs > 0 && cfg.max_batched_tokens > 0,
               "engine: block_size, max_num_seqs and max_batched_tokens must be positive");
  auto probe = model.new_cache(1);
  const size_t per_block = probe->bytes_per_token() * static_cast<size_t>(cfg.block_size);
  int64_t nblocks = static_cast<int64_t>(cfg.kv_memory_bytes / std::max<size_t>(per_block, 1));
  nblocks = std::max<int64_t>(nblocks, 2);
  pool = model.new_cache(nblocks * cfg.block_size);
  blocks = std::make_unique<BlockManager>(nblocks, cfg.block_size, cfg.prefix_caching);
  log::info(cat("engine: ", nblocks, " KV blocks of ", cfg.block_size, " tokens (", per_block * nblocks / (1 << 20),
                " MiB)"));
}

void Engine::Impl::emit(Seq& s, const std::string& text, int32_t token, const sampling::SampleResult* sr, bool done,
                        FinishReason why) {
  EngineEvent ev;
  ev.request_id = s.id;
  ev.piece.text = text;
  if (s.think) s.think->push(text, ev.piece.reasoning, ev.piece.content);
  if (done && s.think) s.think->flush(ev.piece.reasoning, ev.piece.content);
  ev.piece.token = token;
  ev.piece.sample = sr;
  ev.finished = done;
  ev.finish = why;
  ev.prompt_tokens = static_cast<int>(s.num_prompt);
  ev.completion_tokens = s.generated;
  ev.cached_prompt_tokens = static_cast<int>(s.cached_prompt);
  if (s.cb) s.cb(ev);
}

void Engine::Impl::finish(Seq& s, FinishReason why, const std::string& error) {
  std::string tail;
  if (why != FinishReason::StopString && s.detok && error.empty()) tail = s.stops->push(s.detok->flush()) + s.stops->flush();
  if (!s.table.empty()) blocks->free(s.table);
  if (!error.empty()) {
    EngineEvent ev;
    ev.request_id = s.id;
    ev.finished = true;
    ev.finish = why;
    ev.error = error;
    ev.prompt_tokens = static_cast<int>(s.num_prompt);
    ev.completion_tokens = s.generated;
    if (s.cb) s.cb(ev);
    return;
  }
  emit(s, tail, -1, nullptr, true, why);
}

void Engine::Impl::preempt(std::shared_ptr<Seq> s) {
  // Recompute later: drop its blocks (full ones stay in the prefix cache), keep its tokens.
  blocks->free(s->table);
  ++st.preemptions;
  s->computed = 0;
  s->sealed = 0;
  s->chain = 0;
  queue.push_front(std::move(s));
}

bool Engine::Impl::step() {
  // Intake: new requests and cancellations.
  std::vector<uint64_t> cancel_now;
  {
    std::lock_guard<std::mutex> lk(mu);
    while (!waiting.empty()) queue.push_back(std::move(waiting.front())), waiting.pop_front();
    cancel_now.swap(cancels);
  }
  auto drop_cancelled = [&](auto& list) {
    for (auto it = list.begin(); it != list.end();) {
      Seq& s = **it;
      if (s.cancelled || std::find(cancel_now.begin(), cancel_now.end(), s.id) != cancel_now.end()) {
        finish(s, FinishReason::Cancelled);
        it = list.erase(it);
      } else {
        ++it;
      }
    }
  };
  drop_cancelled(running);
  drop_cancelled(queue);
  const int64_t deadline = drain_deadline_ns.load();
  if (deadline && clock_type::now().time_since_epoch().count() > deadline) {
    for (auto& s : running) s->cancelled = true;
    for (auto& s : queue) s->cancelled = true;
    drop_cancelled(running);
    drop_cancelled(queue);
  }
  if (running.empty() && queue.empty()) return false;

  // Schedule.
  struct Work {
    std::shared_ptr<Seq> s;
    int64_t n;
  };
  std::vector<Work> work;
  int64_t budget = cfg.max_batched_tokens;
  // 1. Decodes of running sequences whose prompt is fully computed.
  for (size_t i = 0; i < running.size() && budget > 0;) {
    auto s = running[i];
    const int64_t len = static_cast<int64_t>(s->tokens.size());
    if (s->computed != len - 1) {
      ++i;
      continue;
    }
    bool ok = blocks->append_slot(len, s->table);
    while (!ok && running.size() > 1) {  // preempt the newest other sequence
      auto victim = running.back() == s ? running[running.size() - 2] : running.back();
      running.erase(std::find(running.begin(), running.end(), victim));
      std::erase_if(work, [&](const Work& w) { return w.s == victim; });
      preempt(victim);
      ok = blocks->append_slot(len, s->table);
    }
    if (!ok) {  // alone and still no room: the pool is too small for this sequence
      running.erase(running.begin() + static_cast<std::ptrdiff_t>(i));
      finish(*s, FinishReason::ContextLimit, "the KV cache is too small for this sequence");
      continue;
    }
    work.push_back({s, 1});
    --budget;
    i = static_cast<size_t>(std::find(running.begin(), running.end(), s) - running.begin()) + 1;
  }
  // 2. Prefill chunks of running sequences (admitted, prompt not fully computed).
  for (auto& s : running) {
    if (budget <= 0) break;
    const int64_t len = static_cast<int64_t>(s->tokens.size());
    if (s->computed >= len - 1 && !(s->computed == 0 && len == 1)) continue;
    const int64_t n = std::min(budget, len - s->computed);
    work.push_back({s, n});
    budget -= n;
  }
  // 3. Admissions.
  while (budget > 0 && !queue.empty() && static_cast<int>(running.size()) < cfg.max_num_seqs) {
    auto s = queue.front();
    uint64_t chain = 0;
    const int64_t cached = blocks->allocate(s->tokens, s->table, chain);
    if (cached < 0) {
      if (!running.empty()) break;  // wait for running sequences to free blocks
      // Nothing runs and it still does not fit: it never will.
      queue.pop_front();
      finish(*s, FinishReason::ContextLimit,
             cat("the sequence needs ", blocks->blocks_for(static_cast<int64_t>(s->tokens.size())), " KV blocks of ",
                 cfg.block_size, " tokens but the KV cache holds only ", blocks->num_blocks(),
                 " (raise the KV memory)"));
      continue;
    }
    queue.pop_front();
    s->computed = cached;
    s->sealed = static_cast<size_t>(cached / cfg.block_size);
    s->chain = chain;
    if (!s->admitted_once) {
      s->cached_prompt = cached;
      s->admitted_once = true;
      st.prompt_tokens += static_cast<int64_t>(s->num_prompt);
    }
    running.push_back(s);
    const int64_t len = static_cast<int64_t>(s->tokens.size());
    const int64_t n = std::min(budget, len - s->computed);
    work.push_back({s, n});
    budget -= n;
  }
  if (work.empty()) return !running.empty() || !queue.empty();

  // Run: one batched forward.
  Batch b;
  ids.clear();
  pos.clear();
  std::vector<int64_t> logit_rows;
  std::vector<Seq*> sampled;
  for (const Work& w : work) {
    Seq& s = *w.s;
    const int64_t t0 = static_cast<int64_t>(ids.size());
    for (int64_t i = 0; i < w.n; ++i) {
      ids.push_back(s.tokens[static_cast<size_t>(s.computed + i)]);
      pos.push_back(static_cast<int32_t>(s.computed + i));
    }
    b.segs.push_back(SeqSegment{t0, w.n, s.computed, PagedRows{s.table.data(), cfg.block_size}});
    if (s.computed + w.n == static_cast<int64_t>(s.tokens.size())) {
      logit_rows.push_back(t0 + w.n - 1);
      sampled.push_back(&s);
    }
  }
  b.ids = ids.data();
  b.positions = pos.data();
  b.T = static_cast<int64_t>(ids.size());
  const int V = model.vocab_size();
  // The choice can leave the host only when no sampled row needs penalties (the ids so far) or logprobs.
  // Greedy fast path: every row the plain argmax (temperature 0), taken on the device; device sampling: the
  // model chooses on its device, the rows' temperature / top-k / top-p / min-p and one uniform draw from each
  // sequence's own RNG go there (ops/sample_rows.h). Either way only the ids come back.
  bool plain = !sampled.empty(), all_greedy = true;
  for (const Seq* q : sampled) {
    const auto& sp = q->sampler->params();
    plain = plain && sp.repetition_penalty == 1.0f && sp.presence_penalty == 0.0f && sp.frequency_penalty == 0.0f &&
            sp.logprobs < 0;
    all_greedy = all_greedy && sp.is_greedy();
  }
  const bool greedy = plain && all_greedy;
  const bool on_device = plain && !all_greedy && model.device_sampling();
  std::vector<SampleRowParams> row_params;
  if (on_device)
    for (Seq* q : sampled) {
      const auto& sp = q->sampler->params();
      SampleRowParams rp;
      rp.temperature = sp.temperature;
      rp.top_k = sp.top_k;
      rp.top_p = sp.top_p;
      rp.min_p = sp.min_p;
      rp.u = sp.is_greedy() ? 0.0 : q->sampler->next_uniform();  // greedy rows draw nothing, as on the host
      row_params.push_back(rp);
    }
  std::vector<int32_t> chosen_ids(greedy || on_device ? sampled.size() : 0);
  if (!greedy && !on_device) logits.resize(logit_rows.size() * static_cast<size_t>(V));
  try {
    if (greedy) model.forward_batch_greedy(b, *pool, logit_rows, chosen_ids.data());
    else if (on_device) model.forward_batch_sample(b, *pool, logit_rows, row_params.data(), chosen_ids.data());
    else model.forward_batch(b, *pool, logit_rows, logits.data());
  } catch (const std::exception& e) {
    for (const Work& w : work) w.s->cancelled = true;
    for (auto& s : running)
      if (s->cancelled) finish(*s, FinishReason::Cancelled, std::string("engine error: ") + e.what());
    std::erase_if(running, [](const auto& s) { return s->cancelled; });
    return true;
  }
  ++st.steps;
  for (const Work& w : work) {
    w.s->computed += w.n;
    blocks->seal_full_blocks(w.s->tokens, w.s->computed, w.s->table, w.s->sealed, w.s->chain);
  }

  // Draw the sampled rows (in parallel when there are several large rows); logprobs only when asked for.
  const size_t ns = sampled.size();
  if (!greedy && !on_device) {
    sampled_ids.assign(ns, -1);
    sampled_res.assign(ns, sampling::SampleResult{});
    sampled_err.assign(ns, nullptr);
    auto draw = [&](int64_t b, int64_t e, int) {
      for (int64_t k = b; k < e; ++k) {
        Seq& s = *sampled[static_cast<size_t>(k)];
        std::span<float> row(logits.data() + k * static_cast<size_t>(V), static_cast<size_t>(V));
        try {
          const bool lp = s.sampler->params().logprobs >= 0;
          sampled_ids[static_cast<size_t>(k)] =
              s.sampler->sample(row, s.tokens, s.num_prompt, lp ? &sampled_res[static_cast<size_t>(k)] : nullptr);
        } catch (...) {
          sampled_err[static_cast<size_t>(k)] = std::current_exception();
        }
      }
    };
    if (ns >= 2 && static_cast<int64_t>(ns) * V >= (int64_t{1} << 17)) {
      if (!sample_pool) sample_pool = std::make_unique<ThreadPool>(sampling_threads());
      sample_pool->parallel_for(static_cast<int64_t>(ns), draw);
    } else {
      draw(0, static_cast<int64_t>(ns), 0);
    }
  }

  // Postprocess: stream, stop. A failure here ends only the sequence it happened in.
  const size_t impl_tok_vocab = tok ? tok->vocab_size() : 0;
  for (size_t k = 0; k < sampled.size(); ++k) {
    Seq& s = *sampled[k];
    try {
    sampling::SampleResult sr;
    int32_t tok_id;
    if (greedy || on_device) {
      tok_id = sr.token = chosen_ids[k];
      DSFUSE_CHECK(tok_id >= 0 && tok_id < V, on_device ? "device-sampled" : "greedy", " id ", tok_id, " out of range");
    } else {
      if (sampled_err[k]) std::rethrow_exception(sampled_err[k]);
      sr = std::move(sampled_res[k]);
      tok_id = sr.token = sampled_ids[k];
    }
    s.tokens.push_back(tok_id);
    ++s.generated;
    ++st.generated_tokens;
    const bool eos = !s.req.ignore_eos &&
                     std::find(s.req.eos_ids.begin(), s.req.eos_ids.end(), tok_id) != s.req.eos_ids.end();
    std::optional<FinishReason> why;
    std::string text;
    if (eos) {
      why = FinishReason::Eos;
    } else {
      // Ids past the tokenizer's vocabulary (checkpoints pad vocab_size) have no text.
      if (s.detok && static_cast<size_t>(tok_id) < impl_tok_vocab) text = s.stops->push(s.detok->push(tok_id));
      if (s.stops && s.stops->stopped()) why = FinishReason::StopString;
      else if (s.generated >= s.req.max_new_tokens) why = FinishReason::Length;
      else if (static_cast<int64_t>(s.tokens.size()) >= model.max_context()) why = FinishReason::ContextLimit;
    }
    emit(s, text, tok_id, &sr, false, FinishReason::Length);
    if (why) {
      finish(s, *why);
      s.generated = -1;  // mark for removal
    }
    } catch (const std::exception& e) {
      finish(s, FinishReason::Cancelled, std::string("request failed: ") + e.what());
      s.generated = -1;
    }
  }
  std::erase_if(running, [](const auto& s) { return s->generated < 0; });
  return true;
}

void Engine::Impl::loop() {
  for (;;) {
    bool busy = false;
    try {
      busy = step();
    } catch (const std::exception& e) {
      log::error(cat("engine step failed: ", e.what()));
      for (auto& s : running) finish(*s, FinishReason::Cancelled, std::string("engine error: ") + e.what());
      running.clear();
    }
    std::unique_lock<std::mutex> lk(mu);
    st.waiting = static_cast<int64_t>(waiting.size() + queue.size());
    st.running = static_cast<int64_t>(running.size());
    st.kv_blocks_total = blocks->num_blocks();
    st.kv_blocks_used = blocks->num_used();
    st.prefix_queries = blocks->prefix_queries();
    st.prefix_hits = blocks->prefix_hits();
    if (stop_loop && running.empty() && queue.empty() && waiting.empty()) return;
    if (!busy) cv.wait_for(lk, std::chrono::milliseconds(50), [&] { return !waiting.empty() || !cancels.empty() || stop_loop; });
  }
}

Engine::Engine(Model& model, const tok::Tokenizer* tokenizer, EngineConfig cfg)
    : Engine(batch_model(model), tokenizer, cfg) {}

Engine::Engine(BatchModel& model, const tok::Tokenizer* tokenizer, EngineConfig cfg)
    : cfg_(cfg), impl_(std::make_unique<Impl>(model, tokenizer, cfg)) {
  impl_->thread = std::thread([this] { impl_->loop(); });
}

Engine::~Engine() { shutdown(0); }

uint64_t Engine::submit(EngineRequest req, Callback cb) {
  DSFUSE_CHECK(!req.prompt_ids.empty(), "the prompt is empty: give at least one token");
  DSFUSE_CHECK(req.max_new_tokens > 0, "max_new_tokens must be positive, got ", req.max_new_tokens);
  req.sampling.validate();
  const int64_t ctx = impl_->model.max_context(), P = static_cast<int64_t>(req.prompt_ids.size());
  DSFUSE_CHECK(P < ctx, "the prompt has ", P, " tokens but the model's context is ", ctx, " tokens");
  const int V = impl_->model.vocab_size();
  for (int32_t id : req.prompt_ids)
    DSFUSE_CHECK(id >= 0 && id < V, "prompt token id ", id, " is out of range [0, ", V, ")");
  DSFUSE_CHECK(impl_->tok || req.stop.empty(), "stop strings need a tokenizer");
  auto s = std::make_shared<Seq>();
  s->req = std::move(req);
  s->cb = std::move(cb);
  s->tokens = s->req.prompt_ids;
  s->num_prompt = s->tokens.size();
  s->sampler.emplace(s->req.sampling);
  if (impl_->tok) {
    s->detok.emplace(*impl_->tok, true);
    s->stops.emplace(s->req.stop);
  }
  s->think.emplace(s->req.prompt_opens_think);
  std::lock_guard<std::mutex> lk(impl_->mu);
  if (!impl_->accepting) throw QueueFull("the server is shutting down");
  if (static_cast<int>(impl_->waiting.size() + static_cast<size_t>(impl_->st.waiting)) >= cfg_.max_queue)
    throw QueueFull(cat("the request queue is full (", cfg_.max_queue, " waiting)"));
  s->id = impl_->next_id++;
  impl_->waiting.push_back(s);
  impl_->cv.notify_one();
  return s->id;
}

void Engine::cancel(uint64_t id) {
  std::lock_guard<std::mutex> lk(impl_->mu);
  impl_->cancels.push_back(id);
  impl_->cv.notify_one();
}

void Engine::shutdown(double drain_seconds) {
  if (!impl_ || !impl_->thread.joinable()) return;
  {
    std::lock_guard<std::mutex> lk(impl_->mu);
    impl_->accepting = false;
    impl_->stop_loop = true;
    impl_->drain_deadline_ns = (clock_type::now() + std::chrono::duration_cast<clock_type::duration>(
                                                       std::chrono::duration<double>(drain_seconds)))
                                   .time_since_epoch()
                                   .count() |
                               1;
    impl_->cv.notify_one();
  }
  impl_->thread.join();
}

EngineStats Engine::stats() const {
  std::lock_guard<std::mutex> lk(impl_->mu);
  EngineStats s = impl_->st;
  s.waiting = static_cast<int64_t>(impl_->waiting.size()) + impl_->st.waiting;
  return s;
}

GenerateResult Engine::generate(const EngineRequest& req, const std::function<void(const StreamPiece&)>& on_piece,
                                const std::atomic<bool>* cancel) {
  GenerateResult res;
  res.prompt_tokens = static_cast<int>(req.prompt_ids.size());
  std::mutex m;
  std::condition_variable done_cv;
  bool done = false;
  std::string error;
  const auto t0 = clock_type::now();
  auto t_first = t0;
  const uint64_t id = submit(req, [&](const EngineEvent& ev) {
    if (ev.piece.token >= 0) {
      if (res.ids.empty()) t_first = clock_type::now();
      res.ids.push_back(ev.piece.token);
      if (ev.piece.sample) res.samples.push_back(*ev.piece.sample);
    }
    res.text += ev.piece.text;
    res.content += ev.piece.content;
    res.reasoning += ev.piece.reasoning;
    if (on_piece && (!ev.piece.text.empty() || !ev.piece.content.empty() || !ev.piece.reasoning.empty()))
      on_piece(ev.piece);
    if (ev.finished) {
      std::lock_guard<std::mutex> lk(m);
      res.finish = ev.finish;
      error = ev.error;
      done = true;
      done_cv.notify_all();
    }
  });
  std::unique_lock<std::mutex> lk(m);
  while (!done) {
    done_cv.wait_for(lk, std::chrono::milliseconds(20));
    if (cancel && cancel->load() && !done) this->cancel(id);
  }
  DSFUSE_CHECK(error.empty(), error);
  res.prefill_seconds = std::chrono::duration<double>(t_first - t0).count();
  if (res.ids.size() > 1) res.decode_seconds = std::chrono::duration<double>(clock_type::now() - t_first).count();
  return res;
}

}  // namespace dsfuse
