// Lexer of the Jinja subset: splits template source into text and tag tokens, applying whitespace
// control exactly like Jinja2 with trim_blocks=True, lstrip_blocks=True (Hugging Face's settings):
// `{%-`/`-%}` strip, `{%+`/`+%}` keep, a newline after a block/comment tag is dropped, and spaces
// before a block/comment tag alone on its line are dropped. One trailing newline of the source is
// dropped (keep_trailing_newline=False) and \r\n / \r become \n.
#pragma once
#include <string>
#include <vector>

namespace dsfuse::tmpl {

enum class Tok { Text, VarBegin, VarEnd, BlockBegin, BlockEnd, Name, Int, Float, String, Op, Eof };

struct Token {
  Tok type;
  std::string value;  // text, name, operator, or decoded string literal
  int line;
};

const char* tok_name(Tok t);

struct LexOptions {
  bool trim_blocks = true;
  bool lstrip_blocks = true;
};

std::vector<Token> lex(const std::string& source, const LexOptions& opt = {});

}  // namespace dsfuse::tmpl
