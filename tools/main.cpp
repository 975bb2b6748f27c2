// dsfuse: command-line front end. Subcommands live in tools/cmd_*.cpp.
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <exception>

#include "cli.h"
#include "core/error.h"

namespace dsfuse::cli {

static std::vector<Command>& registry() {
  static std::vector<Command> r;
  return r;
}

bool register_command(const Command& c) {
  registry().push_back(c);
  return true;
}

const std::vector<Command>& commands() {
  auto& r = registry();
  std::sort(r.begin(), r.end(), [](const Command& a, const Command& b) { return std::strcmp(a.name, b.name) < 0; });
  return r;
}

}  // namespace dsfuse::cli

static void usage(FILE* f) {
  std::fprintf(f, "dsfuse %s - DeepSeek-family inference engine\n\nusage: dsfuse <command> [options]\n\ncommands:\n",
               DSFUSE_VERSION);
  for (const auto& c : dsfuse::cli::commands()) std::fprintf(f, "  %-14s %s\n", c.name, c.help);
  std::fprintf(f, "\n`dsfuse <command> --help` describes each command.\n");
}

int main(int argc, char** argv) {
  if (argc < 2) {
    usage(stderr);
    return 2;
  }
  if (!std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h") || !std::strcmp(argv[1], "help")) {
    usage(stdout);
    return 0;
  }
  if (!std::strcmp(argv[1], "--version")) {
    std::printf("dsfuse %s\n", DSFUSE_VERSION);
    return 0;
  }
  for (const auto& c : dsfuse::cli::commands()) {
    if (!std::strcmp(c.name, argv[1])) {
      try {
        return c.fn(argc - 1, argv + 1);
      } catch (const std::exception& e) {
        std::fprintf(stderr, "dsfuse %s: error: %s\n", c.name, e.what());
        return 1;
      }
    }
  }
  std::fprintf(stderr, "dsfuse: unknown command '%s'\n\n", argv[1]);
  usage(stderr);
  return 2;
}
