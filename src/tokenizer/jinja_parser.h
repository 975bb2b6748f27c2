// Parser of the Jinja subset: tokens (jinja_lexer) -> AST (jinja_ast). Operator precedence follows
// Jinja2's parser; unsupported tags (extends, include, import, ...) fail with their name and line.
#pragma once
#include <string>

#include "tokenizer/jinja_ast.h"

namespace dsfuse::tmpl {

TemplateAst parse_template(const std::string& source);

}  // namespace dsfuse::tmpl
