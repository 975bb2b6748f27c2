#include "engine/text_stream.h"

#include <algorithm>

namespace dsfuse {

namespace {
// Length of the longest suffix of `s` that is a proper prefix of `tag`.
size_t partial_suffix(const std::string& s, const std::string& tag) {
  const size_t max = std::min(s.size(), tag.size() - 1);
  for (size_t n = max; n > 0; --n)
    if (s.compare(s.size() - n, n, tag, 0, n) == 0) return n;
  return 0;
}
}  // namespace

StopMatcher::StopMatcher(std::vector<std::string> stops) {
  for (auto& s : stops)
    if (!s.empty()) stops_.push_back(std::move(s));
}

std::string StopMatcher::push(const std::string& text) {
  if (stopped_) return {};
  held_ += text;
  size_t first = std::string::npos;
  for (const auto& s : stops_) first = std::min(first, held_.find(s));
  if (first != std::string::npos) {
    stopped_ = true;
    std::string out = held_.substr(0, first);
    held_.clear();
    return out;
  }
  size_t keep = 0;
  for (const auto& s : stops_) keep = std::max(keep, partial_suffix(held_, s));
  std::string out = held_.substr(0, held_.size() - keep);
  held_.erase(0, held_.size() - keep);
  return out;
}

std::string StopMatcher::flush() {
  std::string out;
  if (!stopped_) out.swap(held_);
  return out;
}

void ThinkSplitter::push(const std::string& text, std::string& reasoning, std::string& content) {
  static const std::string kOpen = "<think>", kClose = "</think>";
  held_ += text;
  while (!held_.empty()) {
    if (decided_) {  // answer text: everything is content
      content += held_;
      held_.clear();
      return;
    }
    if (in_think_) {
      const size_t pos = held_.find(kClose);
      if (pos != std::string::npos) {
        reasoning += held_.substr(0, pos);
        held_.erase(0, pos + kClose.size());
        in_think_ = false;
        decided_ = true;  // after </think> comes the answer
        continue;
      }
      const size_t keep = partial_suffix(held_, kClose);
      reasoning += held_.substr(0, held_.size() - keep);
      held_.erase(0, held_.size() - keep);
      return;
    }
    // Start of the answer: "<think>" here (after optional whitespace) opens reasoning.
    const size_t ns = held_.find_first_not_of(" \t\r\n");
    if (ns == std::string::npos) return;  // only whitespace so far
    if (held_.compare(ns, kOpen.size(), kOpen) == 0) {
      held_.erase(0, ns + kOpen.size());
      in_think_ = true;
      continue;
    }
    if (held_.size() - ns < kOpen.size() && kOpen.compare(0, held_.size() - ns, held_, ns) == 0) return;
    decided_ = true;
  }
}

void ThinkSplitter::flush(std::string& reasoning, std::string& content) {
  (in_think_ ? reasoning : content) += held_;
  held_.clear();
}

bool prompt_opens_think(const std::string& prompt) {
  const size_t open = prompt.rfind("<think>");
  if (open == std::string::npos) return false;
  const size_t close = prompt.rfind("</think>");
  return close == std::string::npos || close < open;
}

}  // namespace dsfuse
