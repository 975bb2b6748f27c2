// AST of the Jinja subset: expressions and statements produced by jinja_parser, run by jinja_eval.
#pragma once
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "tokenizer/jinja_value.h"

namespace dsfuse::tmpl {

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

enum class ExprKind {
  Literal,   // value
  Name,      // name
  List,      // args
  Tuple,     // args
  Dict,      // kwargs-like pairs in `pairs`
  GetAttr,   // args[0].name
  GetItem,   // args[0][args[1]]
  Slice,     // args[0][args[1]:args[2]:args[3]] (null children = omitted)
  Call,      // args[0](args[1..], kwargs)
  Filter,    // args[0] | name(args[1..], kwargs)
  Test,      // args[0] is [not] name(args[1..], kwargs)
  Not,       // not args[0]
  Neg,       // -args[0]
  Pos,       // +args[0]
  Binary,    // args[0] <name> args[1]: + - * / // % ** ~
  Compare,   // args[0] ops[0] args[1] ops[1] args[2] ... (chained)
  And,
  Or,
  CondExpr,  // args[0] if args[1] else args[2] (args[2] may be null)
};

struct Expr {
  ExprKind kind;
  int line = 0;
  std::string name;
  Value value;
  std::vector<ExprPtr> args;
  std::vector<std::pair<std::string, ExprPtr>> kwargs;
  std::vector<std::pair<ExprPtr, ExprPtr>> pairs;  // dict literal
  std::vector<std::string> ops;                    // compare operators
  bool negated = false;                            // `is not`
  int depth = 1;                                   // height of this subtree (bounded by the parser)
};

struct Stmt;
using StmtPtr = std::unique_ptr<Stmt>;
using Body = std::vector<StmtPtr>;

enum class StmtKind {
  Text,         // text
  Output,       // {{ expr }}
  If,           // branches (cond, body) ...; else_body
  For,          // targets in expr [if cond]: body; else_body
  Set,          // targets (or target_obj.attr) = expr
  SetBlock,     // {% set x %}body{% endset %} (optional filter in `filter`)
  Macro,        // name(params) body
  CallBlock,    // {% call [(params)] macro(args) %}body{% endcall %}
  FilterBlock,  // {% filter f %}body{% endfilter %}
  Break,
  Continue,
  Scope,        // body run as is (generation blocks)
  With,         // {% with a = x, b = y %}body{% endwith %}: params hold the assignments
};

struct Stmt {
  StmtKind kind;
  int line = 0;
  std::string text;
  ExprPtr expr;    // output / for iterable / set value / call expression / filter (Filter node with null subject)
  ExprPtr cond;    // for-loop filter
  std::vector<std::string> targets;  // for / set targets (one name or a tuple of names)
  std::string attr;                  // set ns.attr
  std::vector<std::pair<ExprPtr, Body>> branches;
  Body body, else_body;
  std::vector<std::pair<std::string, ExprPtr>> params;  // macro / call params (default may be null)
};

struct TemplateAst {
  Body body;
};

}  // namespace dsfuse::tmpl
