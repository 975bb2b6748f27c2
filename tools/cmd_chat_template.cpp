// `dsfuse chat-template`: render a tokenizer's chat template for each line of a JSONL file.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <string>

#include "cli.h"
#include "core/error.h"
#include "tokenizer/chat_template.h"

namespace {

int run_chat_template(int argc, char** argv) {
  CLI::App app{"Render tokenizer_config.json's chat_template (as transformers' apply_chat_template does).\n"
               "Each input line: {\"messages\": [...], \"add_generation_prompt\": bool, ...extra variables};\n"
               "each output line: {\"rendered\": \"...\"}.",
               "dsfuse chat-template"};
  std::string tokenizer, jsonl = "-";
  app.add_option("--tokenizer", tokenizer, "tokenizer/checkpoint directory or tokenizer_config.json")->required();
  app.add_option("--jsonl", jsonl, "input JSONL file ('-' = stdin)");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  auto tmpl = dsfuse::tmpl::ChatTemplate::from_tokenizer_config(tokenizer);
  std::ifstream file;
  if (jsonl != "-") {
    file.open(jsonl, std::ios::binary);
    DSFUSE_CHECK(file, "cannot open ", jsonl);
  }
  std::istream& in = jsonl == "-" ? std::cin : file;
  std::string line;
  size_t lineno = 0;
  while (std::getline(in, line)) {
    ++lineno;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    nlohmann::ordered_json req;
    try {
      req = nlohmann::ordered_json::parse(line);
    } catch (const std::exception& e) {
      dsfuse::fail(dsfuse::cat(jsonl, ":", lineno, ": invalid JSON: ", e.what()));
    }
    DSFUSE_CHECK(req.is_object() && req.contains("messages"), jsonl, ":", lineno,
                 ": expected an object with \"messages\"");
    bool agp = false;
    if (req.contains("add_generation_prompt")) {
      DSFUSE_CHECK(req["add_generation_prompt"].is_boolean(), jsonl, ":", lineno,
                   ": \"add_generation_prompt\" must be a boolean");
      agp = req["add_generation_prompt"].get<bool>();
    }
    nlohmann::ordered_json extra = nlohmann::ordered_json::object();
    for (auto it = req.begin(); it != req.end(); ++it)
      if (it.key() != "messages" && it.key() != "add_generation_prompt" && it.key() != "rendered")
        extra[it.key()] = it.value();
    std::string out;
    try {
      out = tmpl.render(req["messages"], agp, extra);
    } catch (const dsfuse::Error& e) {
      dsfuse::fail(dsfuse::cat(jsonl, ":", lineno, ": ", e.what()));
    }
    nlohmann::ordered_json res = {{"rendered", out}};
    std::string s = res.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    std::fwrite(s.data(), 1, s.size(), stdout);
    std::fputc('\n', stdout);
  }
  return 0;
}

}  // namespace

DSFUSE_COMMAND("chat-template", "render a tokenizer's chat template for JSONL conversations", run_chat_template);
