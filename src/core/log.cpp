#include "core/log.h"

#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>

namespace dsfuse::log {
namespace {
std::atomic<int> g_level{-1};
std::mutex g_mu;
const char* name(Level l) {
  switch (l) {
    case Level::Debug: return "debug";
    case Level::Info: return "info";
    case Level::Warn: return "warn";
    default: return "error";
  }
}
}  // namespace

Level threshold() {
  int v = g_level.load();
  if (v < 0) {
    v = 2;
    if (const char* e = std::getenv("DSFUSE_LOG")) {
      if (!strcmp(e, "debug")) v = 0;
      else if (!strcmp(e, "info")) v = 1;
      else if (!strcmp(e, "error")) v = 3;
    }
    g_level = v;
  }
  return static_cast<Level>(v);
}

void set_threshold(Level l) { g_level = static_cast<int>(l); }

void write(Level l, const std::string& msg) {
  if (l < threshold()) return;
  std::lock_guard<std::mutex> lk(g_mu);
  std::fprintf(stderr, "level=%s msg=\"%s\"\n", name(l), msg.c_str());
}

Progress::Progress(std::string what, double total) : what_(std::move(what)), total_(total) {
  const char* e = std::getenv("DSFUSE_PROGRESS");
  enabled_ = e ? std::strcmp(e, "0") != 0 : isatty(STDERR_FILENO);
}

void Progress::update(double done) {
  if (!enabled_ || total_ <= 0) return;
  int pct = static_cast<int>(100.0 * done / total_);
  if (pct == last_pct_) return;
  last_pct_ = pct;
  std::fprintf(stderr, "\r%s %3d%%", what_.c_str(), pct);
  std::fflush(stderr);
}

void Progress::finish() {
  if (finished_) return;
  finished_ = true;
  if (enabled_ && last_pct_ >= 0) std::fprintf(stderr, "\r%s 100%%\n", what_.c_str());
}

Progress::~Progress() { finish(); }

}  // namespace dsfuse::log
