#include "core/error.h"

namespace dsfuse {
void fail(const std::string& msg) { throw Error(msg); }
}  // namespace dsfuse
