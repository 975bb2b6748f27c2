// Text post-processing of a generated stream: stop strings (with hold-back of partial matches) and the
// split of reasoning models' `<think>…</think>` text from the answer.
#pragma once
#include <string>
#include <vector>

namespace dsfuse {

// Holds back text that may be the start of a stop string; reports the first full match.
class StopMatcher {
 public:
  explicit StopMatcher(std::vector<std::string> stops);
  // Adds decoded text; returns the text now safe to emit. After a match, stopped() is true and the
  // returned text ends right before the stop string.
  std::string push(const std::string& text);
  std::string flush();  // at the end: whatever was held back (no match)
  bool stopped() const { return stopped_; }

 private:
  std::vector<std::string> stops_;
  std::string held_;
  bool stopped_ = false;
};

// Splits streamed text into reasoning (inside <think>…</think>) and content; tags split across pieces
// are handled. `start_in_reasoning`: the prompt already opened <think> (R1 templates end with it).
class ThinkSplitter {
 public:
  explicit ThinkSplitter(bool start_in_reasoning = false) : in_think_(start_in_reasoning) {}
  void push(const std::string& text, std::string& reasoning, std::string& content);
  void flush(std::string& reasoning, std::string& content);
  bool in_reasoning() const { return in_think_; }

 private:
  bool in_think_;
  bool decided_ = false;  // the answer has started: no more tags are interpreted
  std::string held_;
};

// True when the last "<think>" in `prompt` is not closed by a later "</think>".
bool prompt_opens_think(const std::string& prompt);

}  // namespace dsfuse
