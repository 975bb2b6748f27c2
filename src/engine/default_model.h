// Where the embedded default model lives: found next to the installed binary or in the source tree.
#pragma once
#include <filesystem>
#include <vector>

namespace dsfuse {

// Candidate directories, in order: $DSFUSE_DEFAULT_MODEL; <exe>/../share/dsfuse/models/default;
// <exe>/models/default; the source tree's models/default (compiled in).
std::vector<std::filesystem::path> default_model_candidates();
// The first candidate holding config.json; throws an Error listing where it looked.
std::filesystem::path default_model_dir();

}  // namespace dsfuse
