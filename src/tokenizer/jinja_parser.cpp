#include "tokenizer/jinja_parser.h"

#include <algorithm>
#include <charconv>
#include <cstdlib>
#include <initializer_list>

#include "core/error.h"
#include "tokenizer/jinja_lexer.h"

namespace dsfuse::tmpl {
namespace {

constexpr int kMaxDepth = 400;  // nesting of expressions and blocks (keeps the C++ stack bounded)

class Parser {
 public:
  explicit Parser(std::vector<Token> toks) : t_(std::move(toks)) {}

  TemplateAst parse() {
    TemplateAst ast;
    parse_body(ast.body, {});
    return ast;
  }

 private:
  std::vector<Token> t_;
  std::vector<std::pair<std::string, int>> open_;  // enclosing block tags and their lines
  size_t p_ = 0;
  int depth_ = 0;

  struct DepthGuard {
    Parser& p;
    explicit DepthGuard(Parser& parser) : p(parser) {
      if (++p.depth_ > kMaxDepth) p.error("template nested too deeply");
    }
    ~DepthGuard() { --p.depth_; }
  };

  const Token& cur() const { return t_[p_]; }
  const Token& peek(size_t k = 1) const { return t_[std::min(p_ + k, t_.size() - 1)]; }
  Token next() {
    Token t = t_[p_];
    if (p_ + 1 < t_.size()) ++p_;
    return t;
  }
  bool is_op(const char* op) const { return cur().type == Tok::Op && cur().value == op; }
  bool is_name(const char* n) const { return cur().type == Tok::Name && cur().value == n; }
  bool accept_op(const char* op) {
    if (!is_op(op)) return false;
    next();
    return true;
  }
  bool accept_name(const char* n) {
    if (!is_name(n)) return false;
    next();
    return true;
  }
  std::string describe(const Token& t) const {
    if (t.type == Tok::Op || t.type == Tok::Name) return "'" + t.value + "'";
    return tok_name(t.type);
  }
  [[noreturn]] void error(const std::string& msg) const {
    fail(cat("template syntax error (line ", cur().line, "): ", msg));
  }
  void expect_op(const char* op) {
    if (!accept_op(op)) error(cat("expected '", op, "', got ", describe(cur())));
  }
  std::string expect_name() {
    if (cur().type != Tok::Name) error(cat("expected a name, got ", describe(cur())));
    return next().value;
  }
  void expect_block_end(const char* tag) {
    if (cur().type != Tok::BlockEnd) error(cat("expected end of '", tag, "' tag '%}', got ", describe(cur())));
    next();
  }

  // Records the height of `e` from its children; long operator chains (a+b+c+...) would otherwise
  // build trees deep enough to overflow the evaluator's stack.
  ExprPtr sized(ExprPtr e) {
    int d = 0;
    for (const auto& a : e->args)
      if (a) d = std::max(d, a->depth);
    for (const auto& kv : e->kwargs) d = std::max(d, kv.second->depth);
    for (const auto& kv : e->pairs) d = std::max({d, kv.first->depth, kv.second->depth});
    e->depth = d + 1;
    if (e->depth > kMaxDepth) error("expression nested too deeply");
    return e;
  }

  ExprPtr make(ExprKind k, int line) {
    auto e = std::make_unique<Expr>();
    e->kind = k;
    e->line = line;
    return e;
  }

  // ---------------- statements ----------------

  // Parses until a block tag whose name is in `ends` (consumed up to and including the name) or EOF.
  std::string parse_body(Body& body, std::initializer_list<const char*> ends) {
    DepthGuard g(*this);
    int open_line = cur().line;
    while (true) {
      const Token& tk = cur();
      if (tk.type == Tok::Eof) {
        if (ends.size() == 0) return "";
        std::string want;
        for (const char* e : ends) want += std::string(want.empty() ? "" : " or ") + "'" + e + "'";
        if (!open_.empty())
          fail(cat("template syntax error (line ", open_.back().second, "): unclosed '", open_.back().first,
                   "' block, expected ", want, " before the end of the template"));
        fail(cat("template syntax error (line ", open_line, "): unclosed block, expected ", want,
                 " before the end of the template"));
      }
      if (tk.type == Tok::Text) {
        auto s = std::make_unique<Stmt>();
        s->kind = StmtKind::Text;
        s->line = tk.line;
        s->text = tk.value;
        body.push_back(std::move(s));
        next();
      } else if (tk.type == Tok::VarBegin) {
        next();
        auto s = std::make_unique<Stmt>();
        s->kind = StmtKind::Output;
        s->line = tk.line;
        s->expr = parse_tuple(true);
        if (cur().type != Tok::VarEnd) error(cat("expected end of print statement '}}', got ", describe(cur())));
        next();
        body.push_back(std::move(s));
      } else if (tk.type == Tok::BlockBegin) {
        next();
        if (cur().type != Tok::Name) error(cat("expected a tag name after '{%', got ", describe(cur())));
        std::string name = cur().value;
        for (const char* e : ends)
          if (name == e) {
            next();
            return name;
          }
        if (name.rfind("end", 0) == 0 || name == "elif" || name == "else") {
          if (open_.empty()) error(cat("unexpected '", name, "' tag: no block is open"));
          std::string want;
          for (const char* e : ends) want += std::string(want.empty() ? "" : " or ") + "'" + e + "'";
          error(cat("unexpected '", name, "' tag: the innermost open block is '", open_.back().first,
                    "' (line ", open_.back().second, "), expected ", want));
        }
        body.push_back(parse_statement());
      } else {
        error(cat("unexpected ", describe(tk)));
      }
    }
  }

  StmtPtr parse_statement() {
    int line = cur().line;
    std::string name = next().value;
    auto s = std::make_unique<Stmt>();
    s->line = line;
    open_.emplace_back(name, line);
    struct Pop {
      std::vector<std::pair<std::string, int>>& v;
      ~Pop() { v.pop_back(); }
    } pop{open_};
    if (name == "if") {
      s->kind = StmtKind::If;
      ExprPtr cond = parse_tuple(true);
      expect_block_end("if");
      while (true) {
        Body b;
        std::string end = parse_body(b, {"elif", "else", "endif"});
        s->branches.emplace_back(std::move(cond), std::move(b));
        if (end == "elif") {
          cond = parse_tuple(true);
          expect_block_end("elif");
          continue;
        }
        if (end == "else") {
          expect_block_end("else");
          parse_body(s->else_body, {"endif"});
        }
        expect_block_end("endif");
        break;
      }
    } else if (name == "for") {
      s->kind = StmtKind::For;
      parse_targets(s->targets);
      if (!accept_name("in")) error(cat("expected 'in' in for loop, got ", describe(cur())));
      s->expr = parse_tuple(false);
      if (accept_name("if")) s->cond = parse_tuple(true);
      if (is_name("recursive")) error("unsupported construct: recursive for loop");
      expect_block_end("for");
      std::string end = parse_body(s->body, {"else", "endfor"});
      if (end == "else") {
        expect_block_end("else");
        parse_body(s->else_body, {"endfor"});
      }
      expect_block_end("endfor");
    } else if (name == "set") {
      std::string first = expect_name();
      if (accept_op(".")) {
        s->kind = StmtKind::Set;
        s->targets.push_back(first);
        s->attr = expect_name();
        expect_op("=");
        s->expr = parse_tuple(true);
        expect_block_end("set");
      } else {
        s->targets.push_back(first);
        while (accept_op(",")) {
          if (cur().type != Tok::Name) break;
          s->targets.push_back(expect_name());
        }
        if (accept_op("=")) {
          s->kind = StmtKind::Set;
          s->expr = parse_tuple(true);
          expect_block_end("set");
        } else {
          s->kind = StmtKind::SetBlock;
          if (s->targets.size() != 1) error("block set takes a single name");
          if (is_op("|")) s->expr = parse_filter_chain(nullptr);
          expect_block_end("set");
          parse_body(s->body, {"endset"});
          expect_block_end("endset");
        }
      }
    } else if (name == "macro") {
      s->kind = StmtKind::Macro;
      s->text = expect_name();
      parse_params(s->params);
      expect_block_end("macro");
      parse_body(s->body, {"endmacro"});
      if (cur().type == Tok::Name) next();  // {% endmacro name %}
      expect_block_end("endmacro");
    } else if (name == "call") {
      s->kind = StmtKind::CallBlock;
      if (is_op("(")) parse_params(s->params);
      s->expr = parse_expression(true);
      if (s->expr->kind != ExprKind::Call) error("expected a call expression in 'call' block");
      expect_block_end("call");
      parse_body(s->body, {"endcall"});
      expect_block_end("endcall");
    } else if (name == "filter") {
      s->kind = StmtKind::FilterBlock;
      s->expr = parse_filter_chain(nullptr, /*leading_pipe=*/false);
      expect_block_end("filter");
      parse_body(s->body, {"endfilter"});
      expect_block_end("endfilter");
    } else if (name == "break" || name == "continue") {
      s->kind = name == "break" ? StmtKind::Break : StmtKind::Continue;
      expect_block_end(name.c_str());
    } else if (name == "with") {
      s->kind = StmtKind::With;
      while (cur().type != Tok::BlockEnd) {
        if (!s->params.empty()) expect_op(",");
        std::string n = expect_name();
        expect_op("=");
        s->params.emplace_back(n, parse_expression(true));
      }
      expect_block_end("with");
      parse_body(s->body, {"endwith"});
      expect_block_end("endwith");
    } else if (name == "generation") {  // Hugging Face's AssistantTracker extension: renders its body
      s->kind = StmtKind::Scope;
      expect_block_end("generation");
      parse_body(s->body, {"endgeneration"});
      expect_block_end("endgeneration");
    } else {
      fail(cat("template syntax error (line ", line, "): unsupported or unknown tag '", name, "'"));
    }
    return s;
  }

  void parse_targets(std::vector<std::string>& targets) {
    bool paren = accept_op("(");
    targets.push_back(expect_name());
    while (accept_op(",")) {
      if (cur().type != Tok::Name) break;
      targets.push_back(expect_name());
    }
    if (paren) expect_op(")");
  }

  void parse_params(std::vector<std::pair<std::string, ExprPtr>>& params) {
    expect_op("(");
    while (!is_op(")")) {
      if (!params.empty()) expect_op(",");
      if (is_op(")")) break;
      std::string n = expect_name();
      ExprPtr def;
      if (accept_op("=")) def = parse_expression(true);
      params.emplace_back(n, std::move(def));
    }
    expect_op(")");
  }

  // ---------------- expressions ----------------

  ExprPtr parse_tuple(bool with_condexpr) {
    int line = cur().line;
    ExprPtr first = parse_expression(with_condexpr);
    if (!is_op(",")) return first;
    auto t = make(ExprKind::Tuple, line);
    t->args.push_back(std::move(first));
    while (accept_op(",")) {
      if (cur().type == Tok::BlockEnd || cur().type == Tok::VarEnd || is_op(")") || is_name("in") || is_op("="))
        break;
      t->args.push_back(parse_expression(with_condexpr));
    }
    return sized(std::move(t));
  }

  ExprPtr parse_expression(bool with_condexpr) {
    DepthGuard g(*this);
    return with_condexpr ? parse_condexpr() : parse_or();
  }

  ExprPtr parse_condexpr() {
    int line = cur().line;
    ExprPtr e = parse_or();
    while (accept_name("if")) {
      auto c = make(ExprKind::CondExpr, line);
      ExprPtr cond = parse_or();
      ExprPtr other;
      if (accept_name("else")) other = parse_condexpr();
      c->args.push_back(std::move(e));
      c->args.push_back(std::move(cond));
      c->args.push_back(std::move(other));
      e = sized(std::move(c));
    }
    return e;
  }

  ExprPtr binary(ExprKind k, ExprPtr a, ExprPtr b, int line, std::string op = {}) {
    auto e = make(k, line);
    e->name = std::move(op);
    e->args.push_back(std::move(a));
    e->args.push_back(std::move(b));
    return sized(std::move(e));
  }

  ExprPtr parse_or() {
    ExprPtr e = parse_and();
    while (is_name("or")) {
      int line = next().line;
      e = binary(ExprKind::Or, std::move(e), parse_and(), line);
    }
    return e;
  }

  ExprPtr parse_and() {
    ExprPtr e = parse_not();
    while (is_name("and")) {
      int line = next().line;
      e = binary(ExprKind::And, std::move(e), parse_not(), line);
    }
    return e;
  }

  ExprPtr parse_not() {
    if (is_name("not")) {
      DepthGuard g(*this);
      int line = next().line;
      auto e = make(ExprKind::Not, line);
      e->args.push_back(parse_not());
      return sized(std::move(e));
    }
    return parse_compare();
  }

  ExprPtr parse_compare() {
    int line = cur().line;
    ExprPtr e = parse_math1();
    ExprPtr cmp;
    while (true) {
      std::string op;
      if (cur().type == Tok::Op && (cur().value == "==" || cur().value == "!=" || cur().value == "<" ||
                                    cur().value == ">" || cur().value == "<=" || cur().value == ">=")) {
        op = next().value;
      } else if (is_name("in")) {
        next();
        op = "in";
      } else if (is_name("not") && peek().type == Tok::Name && peek().value == "in") {
        next();
        next();
        op = "notin";
      } else {
        break;
      }
      if (!cmp) {
        cmp = make(ExprKind::Compare, line);
        cmp->args.push_back(std::move(e));
      }
      cmp->ops.push_back(op);
      cmp->args.push_back(parse_math1());
    }
    return cmp ? sized(std::move(cmp)) : std::move(e);
  }

  ExprPtr parse_math1() {
    ExprPtr e = parse_concat();
    while (is_op("+") || is_op("-")) {
      Token op = next();
      e = binary(ExprKind::Binary, std::move(e), parse_concat(), op.line, op.value);
    }
    return e;
  }

  ExprPtr parse_concat() {
    ExprPtr e = parse_math2();
    while (is_op("~")) {
      Token op = next();
      e = binary(ExprKind::Binary, std::move(e), parse_math2(), op.line, "~");
    }
    return e;
  }

  ExprPtr parse_math2() {
    ExprPtr e = parse_pow();
    while (is_op("*") || is_op("/") || is_op("//") || is_op("%")) {
      Token op = next();
      e = binary(ExprKind::Binary, std::move(e), parse_pow(), op.line, op.value);
    }
    return e;
  }

  ExprPtr parse_pow() {
    ExprPtr e = parse_unary(true);
    while (is_op("**")) {
      Token op = next();
      e = binary(ExprKind::Binary, std::move(e), parse_unary(true), op.line, "**");
    }
    return e;
  }

  ExprPtr parse_unary(bool with_filter) {
    DepthGuard g(*this);
    int line = cur().line;
    ExprPtr e;
    if (is_op("-") || is_op("+")) {
      bool neg = next().value == "-";
      e = make(neg ? ExprKind::Neg : ExprKind::Pos, line);
      e->args.push_back(parse_unary(false));
      e = sized(std::move(e));
    } else {
      e = parse_primary();
    }
    e = parse_postfix(std::move(e));
    if (with_filter) e = parse_filter_expr(std::move(e));
    return e;
  }

  ExprPtr parse_primary() {
    const Token tk = cur();
    if (tk.type == Tok::Name) {
      next();
      const std::string& v = tk.value;
      auto lit = make(ExprKind::Literal, tk.line);
      if (v == "true" || v == "True") lit->value = Value(true);
      else if (v == "false" || v == "False") lit->value = Value(false);
      else if (v == "none" || v == "None") lit->value = Value::none();
      else {
        auto n = make(ExprKind::Name, tk.line);
        n->name = v;
        return n;
      }
      return lit;
    }
    if (tk.type == Tok::String) {
      std::string s;
      while (cur().type == Tok::String) s += next().value;  // adjacent literals concatenate
      auto lit = make(ExprKind::Literal, tk.line);
      lit->value = Value(s);
      return lit;
    }
    if (tk.type == Tok::Int || tk.type == Tok::Float) {
      next();
      auto lit = make(ExprKind::Literal, tk.line);
      if (tk.type == Tok::Int) {
        int64_t v = 0;
        auto r = std::from_chars(tk.value.data(), tk.value.data() + tk.value.size(), v);
        if (r.ec != std::errc()) error(cat("integer literal out of range: ", tk.value));
        lit->value = Value(v);
      } else {
        lit->value = Value(std::strtod(tk.value.c_str(), nullptr));
      }
      return lit;
    }
    if (tk.type == Tok::Op && tk.value == "(") {
      next();
      if (accept_op(")")) {
        auto t = make(ExprKind::Tuple, tk.line);
        return t;
      }
      ExprPtr e = parse_expression(true);
      if (is_op(",")) {
        auto t = make(ExprKind::Tuple, tk.line);
        t->args.push_back(std::move(e));
        while (accept_op(",")) {
          if (is_op(")")) break;
          t->args.push_back(parse_expression(true));
        }
        e = sized(std::move(t));
      }
      expect_op(")");
      return e;
    }
    if (tk.type == Tok::Op && tk.value == "[") {
      next();
      auto l = make(ExprKind::List, tk.line);
      while (!is_op("]")) {
        if (!l->args.empty()) expect_op(",");
        if (is_op("]")) break;
        l->args.push_back(parse_expression(true));
      }
      expect_op("]");
      return sized(std::move(l));
    }
    if (tk.type == Tok::Op && tk.value == "{") {
      next();
      auto d = make(ExprKind::Dict, tk.line);
      while (!is_op("}")) {
        if (!d->pairs.empty()) expect_op(",");
        if (is_op("}")) break;
        ExprPtr k = parse_expression(true);
        expect_op(":");
        ExprPtr v = parse_expression(true);
        d->pairs.emplace_back(std::move(k), std::move(v));
      }
      expect_op("}");
      return sized(std::move(d));
    }
    error(cat("unexpected ", describe(tk), " in expression"));
  }

  ExprPtr parse_postfix(ExprPtr e) {
    while (true) {
      int line = cur().line;
      if (is_op(".")) {
        next();
        auto g = make(ExprKind::GetAttr, line);
        if (cur().type == Tok::Name) {
          g->name = next().value;
        } else if (cur().type == Tok::Int) {  // foo.0 is foo[0]
          g->kind = ExprKind::GetItem;
          g->args.push_back(std::move(e));
          auto lit = make(ExprKind::Literal, line);
          lit->value = Value(static_cast<int64_t>(std::strtoll(next().value.c_str(), nullptr, 10)));
          g->args.push_back(std::move(lit));
          e = sized(std::move(g));
          continue;
        } else {
          error(cat("expected an attribute name after '.', got ", describe(cur())));
        }
        g->args.push_back(std::move(e));
        e = sized(std::move(g));
      } else if (is_op("[")) {
        next();
        e = sized(parse_subscript(std::move(e), line));
        expect_op("]");
      } else if (is_op("(")) {
        e = parse_call(std::move(e));
      } else {
        return e;
      }
    }
  }

  ExprPtr parse_subscript(ExprPtr obj, int line) {
    ExprPtr parts[3];
    bool is_slice = false;
    int idx = 0;
    if (!is_op(":")) parts[0] = parse_expression(true);
    while (is_op(":") && idx < 2) {
      next();
      is_slice = true;
      ++idx;
      if (!is_op(":") && !is_op("]")) parts[idx] = parse_expression(true);
    }
    if (!is_slice) {
      if (is_op(",")) error("tuple subscripts are not supported");
      auto g = make(ExprKind::GetItem, line);
      g->args.push_back(std::move(obj));
      g->args.push_back(std::move(parts[0]));
      return g;
    }
    auto s = make(ExprKind::Slice, line);
    s->args.push_back(std::move(obj));
    for (auto& p : parts) s->args.push_back(std::move(p));
    return s;
  }

  void parse_call_args(Expr& call) {
    expect_op("(");
    bool first = true;
    while (!is_op(")")) {
      if (!first) expect_op(",");
      first = false;
      if (is_op(")")) break;
      if (is_op("*") || is_op("**")) error("unsupported construct: *args / **kwargs in call");
      if (cur().type == Tok::Name && peek().type == Tok::Op && peek().value == "=") {
        std::string k = next().value;
        next();
        call.kwargs.emplace_back(k, parse_expression(true));
      } else {
        if (!call.kwargs.empty()) error("positional argument after keyword argument");
        call.args.push_back(parse_expression(true));
      }
    }
    expect_op(")");
  }

  ExprPtr parse_call(ExprPtr callee) {
    auto c = make(ExprKind::Call, cur().line);
    c->args.push_back(std::move(callee));
    parse_call_args(*c);
    return sized(std::move(c));
  }

  // `| f(args) | g ...` applied to `subject` (null subject: a filter block/set-block filter).
  ExprPtr parse_filter_chain(ExprPtr subject, bool leading_pipe = true) {
    bool first = true;
    while ((first && !leading_pipe) || is_op("|")) {
      if (!(first && !leading_pipe)) next();
      first = false;
      DepthGuard g(*this);
      auto f = make(ExprKind::Filter, cur().line);
      f->name = expect_name();
      while (is_op(".")) {
        next();
        f->name += "." + expect_name();
      }
      f->args.push_back(std::move(subject));
      if (is_op("(")) parse_call_args(*f);
      subject = sized(std::move(f));
    }
    return subject;
  }

  ExprPtr parse_filter_expr(ExprPtr e) {
    while (true) {
      if (is_op("|")) {
        e = parse_filter_chain(std::move(e));
      } else if (is_name("is")) {
        DepthGuard g(*this);
        int line = next().line;
        auto t = make(ExprKind::Test, line);
        t->negated = accept_name("not");
        t->name = expect_name();
        t->args.push_back(std::move(e));
        if (is_op("(")) {
          parse_call_args(*t);
        } else if ((cur().type == Tok::Name || cur().type == Tok::String || cur().type == Tok::Int ||
                    cur().type == Tok::Float || is_op("[") || is_op("{")) &&
                   !is_name("else") && !is_name("or") && !is_name("and")) {
          if (is_name("is")) error("cannot chain multiple tests with 'is'");
          t->args.push_back(parse_postfix(parse_primary()));
        }
        e = sized(std::move(t));
      } else if (is_op("(")) {
        e = parse_call(std::move(e));
      } else {
        return e;
      }
    }
  }
};

}  // namespace

TemplateAst parse_template(const std::string& source) { return Parser(lex(source)).parse(); }

}  // namespace dsfuse::tmpl
