// dsfuse error type: every user-facing failure is an Error with a message naming what is wrong
// (file, tensor, field, request). Never abort on bad input.
#pragma once
#include <stdexcept>
#include <string>

namespace dsfuse {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& msg) : std::runtime_error(msg) {}
};

// Concatenate any streamable values into one message.
template <typename... Args>
std::string cat(const Args&... args);

[[noreturn]] void fail(const std::string& msg);

}  // namespace dsfuse

#include <sstream>
namespace dsfuse {
template <typename... Args>
std::string cat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}
}  // namespace dsfuse

#define DSFUSE_CHECK(cond, ...)                                   \
  do {                                                            \
    if (!(cond)) ::dsfuse::fail(::dsfuse::cat(__VA_ARGS__));      \
  } while (0)
