// Subcommand registry of the `dsfuse` executable. Each tools/cmd_*.cpp registers itself:
//   DSFUSE_COMMAND("logits", "write logits of token ids to safetensors", run_logits);
// The function receives argv starting at the subcommand name and returns the exit code.
#pragma once
#include <string>
#include <vector>

namespace dsfuse::cli {

using CommandFn = int (*)(int argc, char** argv);

struct Command {
  const char* name;
  const char* help;
  CommandFn fn;
};

bool register_command(const Command& c);
const std::vector<Command>& commands();

}  // namespace dsfuse::cli

#define DSFUSE_CONCAT_(a, b) a##b
#define DSFUSE_CONCAT(a, b) DSFUSE_CONCAT_(a, b)
#define DSFUSE_COMMAND(name, help, fn) \
  static const bool DSFUSE_CONCAT(dsfuse_cmd_reg_, __LINE__) = ::dsfuse::cli::register_command({name, help, fn})
