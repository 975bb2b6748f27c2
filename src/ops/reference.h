// Scalar reference implementations of every backend op: plain loops, no threads, no tiling.
// They define what each op means; tests check every fast backend against them.
#pragma once
#include <memory>

#include "backend/backend.h"

namespace dsfuse {

std::unique_ptr<Backend> make_reference_backend();

}  // namespace dsfuse
