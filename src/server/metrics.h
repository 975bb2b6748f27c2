// Server metrics in the Prometheus text format: counters, gauges and histograms (TTFT, inter-token latency).
#pragma once
#include <array>
#include <atomic>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "engine/engine.h"

namespace dsfuse::server {

class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds) : bounds_(std::move(bounds)), counts_(bounds_.size() + 1, 0) {}
  void observe(double v);
  std::string render(const std::string& name, const std::string& help) const;

 private:
  std::vector<double> bounds_;
  mutable std::mutex mu_;
  std::vector<uint64_t> counts_;
  double sum_ = 0;
  uint64_t n_ = 0;
};

class Metrics {
 public:
  Metrics();
  void request_done(int http_status);
  void tokens(int prompt, int completion);
  Histogram ttft, itl, e2e;
  // Text exposition, with the engine's gauges (queue, batch, KV blocks, prefix-cache hit rate).
  std::string render(const EngineStats& st) const;

 private:
  mutable std::mutex mu_;
  std::map<int, uint64_t> requests_;
  uint64_t prompt_tokens_ = 0, completion_tokens_ = 0;
};

}  // namespace dsfuse::server
