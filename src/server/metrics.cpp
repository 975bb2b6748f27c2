#include "server/metrics.h"

#include <sstream>

namespace dsfuse::server {

void Histogram::observe(double v) {
  std::lock_guard<std::mutex> lk(mu_);
  size_t i = 0;
  while (i < bounds_.size() && v > bounds_[i]) ++i;
  ++counts_[i];
  sum_ += v;
  ++n_;
}

std::string Histogram::render(const std::string& name, const std::string& help) const {
  std::lock_guard<std::mutex> lk(mu_);
  std::ostringstream os;
  os << "# HELP " << name << " " << help << "\n# TYPE " << name << " histogram\n";
  uint64_t cum = 0;
  for (size_t i = 0; i < bounds_.size(); ++i) {
    cum += counts_[i];
    os << name << "_bucket{le=\"" << bounds_[i] << "\"} " << cum << "\n";
  }
  cum += counts_.back();
  os << name << "_bucket{le=\"+Inf\"} " << cum << "\n" << name << "_sum " << sum_ << "\n" << name << "_count " << n_ << "\n";
  return os.str();
}

Metrics::Metrics()
    : ttft({0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30}),
      itl({0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5}),
      e2e({0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120}) {}

void Metrics::request_done(int status) {
  std::lock_guard<std::mutex> lk(mu_);
  ++requests_[status];
}

void Metrics::tokens(int prompt, int completion) {
  std::lock_guard<std::mutex> lk(mu_);
  prompt_tokens_ += static_cast<uint64_t>(prompt);
  completion_tokens_ += static_cast<uint64_t>(completion);
}

std::string Metrics::render(const EngineStats& st) const {
  std::ostringstream os;
  {
    std::lock_guard<std::mutex> lk(mu_);
    os << "# HELP dsfuse_requests_total HTTP requests to the generation endpoints by status code\n"
       << "# TYPE dsfuse_requests_total counter\n";
    for (const auto& [code, n] : requests_) os << "dsfuse_requests_total{status=\"" << code << "\"} " << n << "\n";
    os << "# HELP dsfuse_prompt_tokens_total Prompt tokens of finished requests\n# TYPE dsfuse_prompt_tokens_total counter\n"
       << "dsfuse_prompt_tokens_total " << prompt_tokens_ << "\n"
       << "# HELP dsfuse_generation_tokens_total Generated tokens of finished requests\n"
       << "# TYPE dsfuse_generation_tokens_total counter\ndsfuse_generation_tokens_total " << completion_tokens_ << "\n";
  }
  os << ttft.render("dsfuse_time_to_first_token_seconds", "Time from request arrival to the first generated token");
  os << itl.render("dsfuse_inter_token_latency_seconds", "Time between consecutive generated tokens of a request");
  os << e2e.render("dsfuse_request_duration_seconds", "Time from request arrival to its last token");
  const double hit = st.prefix_queries > 0 ? static_cast<double>(st.prefix_hits) / st.prefix_queries : 0.0;
  os << "# HELP dsfuse_queue_length Requests waiting to be scheduled\n# TYPE dsfuse_queue_length gauge\n"
     << "dsfuse_queue_length " << st.waiting << "\n"
     << "# HELP dsfuse_running_sequences Sequences in the running batch\n# TYPE dsfuse_running_sequences gauge\n"
     << "dsfuse_running_sequences " << st.running << "\n"
     << "# HELP dsfuse_kv_blocks_used KV cache blocks in use\n# TYPE dsfuse_kv_blocks_used gauge\n"
     << "dsfuse_kv_blocks_used " << st.kv_blocks_used << "\n"
     << "# HELP dsfuse_kv_blocks_free KV cache blocks free\n# TYPE dsfuse_kv_blocks_free gauge\n"
     << "dsfuse_kv_blocks_free " << st.kv_blocks_total - st.kv_blocks_used << "\n"
     << "# HELP dsfuse_prefix_cache_hit_rate Prompt blocks found in the prefix cache / blocks looked up\n"
     << "# TYPE dsfuse_prefix_cache_hit_rate gauge\ndsfuse_prefix_cache_hit_rate " << hit << "\n"
     << "# HELP dsfuse_prefix_cache_queries_total Prompt blocks looked up in the prefix cache\n"
     << "# TYPE dsfuse_prefix_cache_queries_total counter\ndsfuse_prefix_cache_queries_total " << st.prefix_queries << "\n"
     << "# HELP dsfuse_prefix_cache_hits_total Prompt blocks served from the prefix cache\n"
     << "# TYPE dsfuse_prefix_cache_hits_total counter\ndsfuse_prefix_cache_hits_total " << st.prefix_hits << "\n"
     << "# HELP dsfuse_engine_steps_total Engine steps (batched forwards)\n# TYPE dsfuse_engine_steps_total counter\n"
     << "dsfuse_engine_steps_total " << st.steps << "\n"
     << "# HELP dsfuse_preemptions_total Sequences preempted for lack of KV blocks\n"
     << "# TYPE dsfuse_preemptions_total counter\ndsfuse_preemptions_total " << st.preemptions << "\n";
  return os.str();
}

}  // namespace dsfuse::server
