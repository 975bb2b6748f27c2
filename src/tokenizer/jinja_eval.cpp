// Tree-walking evaluator of the Jinja subset, with Jinja2's scoping: a for-loop iteration is a new
// scope (assignments inside it do not survive the iteration), `if` is not, macros get their own
// scope over the one they were defined in; namespace() objects carry state across scopes.
#include <unordered_map>

#include "core/error.h"
#include "tokenizer/jinja.h"
#include "tokenizer/jinja_ast.h"
#include "tokenizer/jinja_builtins.h"
#include "tokenizer/jinja_parser.h"

namespace dsfuse::tmpl {
namespace {

struct Scope;
using ScopePtr = std::shared_ptr<Scope>;

struct Scope {
  std::unordered_map<std::string, Value> vars;
  ScopePtr parent;

  const Value* lookup(const std::string& name) const {
    for (const Scope* s = this; s; s = s->parent.get()) {
      auto it = s->vars.find(name);
      if (it != s->vars.end()) return &it->second;
    }
    return nullptr;
  }
};

ScopePtr child_scope(const ScopePtr& parent) {
  auto s = std::make_shared<Scope>();
  s->parent = parent;
  return s;
}

enum class Flow { Normal, Break, Continue };

// Error raised by the template itself (raise_exception): its message is kept verbatim.
class RaisedError : public Error {
 public:
  using Error::Error;
};

class Interp {
 public:
  Interp(std::shared_ptr<const TemplateAst> ast, const RenderLimits& lim) : ast_(std::move(ast)), lim_(lim) {}

  std::string run(const Value& context) {
    auto globals = std::make_shared<Scope>();
    auto gdict = Value::dict();
    add_globals(gdict.dict_obj(), lim_.max_output);
    for (auto& [k, v] : gdict.dict_obj().items) globals->vars[k] = v;
    globals->vars["raise_exception"] = Value::func("raise_exception", [](const CallArgs& a) -> Value {
      const Value* m = a.get(0, "message");
      throw RaisedError(m ? m->to_str() : std::string("raise_exception called"));
    });
    // namespace() objects can be made to contain themselves; they are emptied when rendering ends.
    globals->vars["namespace"] = Value::func("namespace", [this](const CallArgs& a) -> Value {
      Value ns = Value::ns();
      for (const auto& p : a.pos) {
        if (!p.is_dict()) fail(cat("namespace() positional argument must be a dict, got ", p.type_name()));
        for (const auto& [k, v] : p.dict_obj().items) ns.dict_obj().set(k, v);
      }
      for (const auto& [k, v] : a.kw) ns.dict_obj().set(k, v);
      namespaces_.push_back(ns);
      return ns;
    });
    if (context.is_dict())
      for (const auto& [k, v] : context.dict_obj().items) globals->vars[k] = v;
    else if (!context.is_undefined() && !context.is_none())
      fail(cat("template context must be a dict, got ", context.type_name()));
    auto root = child_scope(globals);
    std::string out;
    struct Cleanup {
      Interp& in;
      ~Cleanup() {
        for (auto& ns : in.namespaces_) ns.dict_obj().items.clear();
      }
    } cleanup{*this};
    try {
      Flow f = exec_body(ast_->body, root, out);
      if (f != Flow::Normal) fail("'break'/'continue' outside of a for loop");
    } catch (const RaisedError&) {
      throw;
    } catch (const Error& e) {
      throw Error(cat("template error (line ", line_, "): ", e.what()));
    }
    return out;
  }

 private:
  std::shared_ptr<const TemplateAst> ast_;
  RenderLimits lim_;
  int line_ = 0;
  uint64_t steps_ = 0;
  int call_depth_ = 0;
  std::vector<Value> namespaces_;

  // Bounds the C++ recursion of exec/eval (nested blocks x recursive macro calls).
  int depth_ = 0;
  struct Nest {
    Interp& in;
    explicit Nest(Interp& i) : in(i) {
      if (++in.depth_ > 2500) {
        --in.depth_;
        fail("template recursion too deep (nested blocks and macro calls)");
      }
    }
    ~Nest() { --in.depth_; }
  };

  void step() {
    if (++steps_ > lim_.max_steps) fail(cat("template exceeded ", lim_.max_steps, " loop iterations / macro calls"));
  }

  void emit(std::string& out, const std::string& s) {
    if (out.size() + s.size() > lim_.max_output) fail(cat("template output exceeds ", lim_.max_output, " bytes"));
    out += s;
  }

  // ---------------- statements ----------------

  Flow exec_body(const Body& body, const ScopePtr& scope, std::string& out) {
    for (const auto& s : body) {
      Flow f = exec(*s, scope, out);
      if (f != Flow::Normal) return f;
    }
    return Flow::Normal;
  }

  Flow exec(const Stmt& s, const ScopePtr& scope, std::string& out) {
    Nest nest(*this);
    line_ = s.line;
    switch (s.kind) {
      case StmtKind::Text: emit(out, s.text); return Flow::Normal;
      case StmtKind::Output: {
        Value v = eval(*s.expr, scope);
        emit(out, v.to_str());
        return Flow::Normal;
      }
      case StmtKind::If:
        for (const auto& [cond, body] : s.branches)
          if (eval(*cond, scope).truthy()) return exec_body(body, scope, out);
        return exec_body(s.else_body, scope, out);
      case StmtKind::For: return exec_for(s, scope, out);
      case StmtKind::Set: {
        Value v = eval(*s.expr, scope);
        if (!s.attr.empty()) {
          const Value* ns = scope->lookup(s.targets[0]);
          if (!ns || !ns->is_namespace())
            fail(cat("cannot assign attribute '", s.attr, "' on '", s.targets[0], "': not a namespace object"));
          ns->dict_obj().set(s.attr, std::move(v));
        } else {
          assign(s.targets, v, *scope);
        }
        return Flow::Normal;
      }
      case StmtKind::SetBlock: {
        std::string buf;
        Flow f = exec_body(s.body, scope, buf);
        if (f != Flow::Normal) return f;
        Value v(buf);
        if (s.expr) v = apply_filters(*s.expr, v, scope);
        scope->vars[s.targets[0]] = v;
        return Flow::Normal;
      }
      case StmtKind::Macro: scope->vars[s.text] = make_macro(s, scope, s.text); return Flow::Normal;
      case StmtKind::CallBlock: {
        const Expr& call = *s.expr;
        Value caller = make_macro(s, scope, "caller");
        Value fn = eval(*call.args[0], scope);
        CallArgs args = eval_args(call, scope, 1);
        args.kw.emplace_back("caller", caller);
        emit(out, call_value(fn, args).to_str());
        return Flow::Normal;
      }
      case StmtKind::FilterBlock: {
        std::string buf;
        Flow f = exec_body(s.body, scope, buf);
        emit(out, apply_filters(*s.expr, Value(buf), scope).to_str());
        return f;
      }
      case StmtKind::Break: return Flow::Break;
      case StmtKind::Continue: return Flow::Continue;
      case StmtKind::Scope: return exec_body(s.body, scope, out);
      case StmtKind::With: {
        auto inner = child_scope(scope);
        for (const auto& [name, e] : s.params) inner->vars[name] = eval(*e, scope);
        return exec_body(s.body, inner, out);
      }
    }
    return Flow::Normal;
  }

  static void assign(const std::vector<std::string>& targets, const Value& v, Scope& scope) {
    if (targets.size() == 1) {
      scope.vars[targets[0]] = v;
      return;
    }
    std::vector<Value> items = iterate(v);
    if (items.size() != targets.size())
      fail(cat("cannot unpack ", items.size(), " values into ", targets.size(), " names"));
    for (size_t i = 0; i < targets.size(); ++i) scope.vars[targets[i]] = items[i];
  }

  Flow exec_for(const Stmt& s, const ScopePtr& scope, std::string& out) {
    Value seq = eval(*s.expr, scope);
    std::vector<Value> items = iterate(seq);
    if (s.cond) {  // `for x in xs if cond`: filtered before the loop variables are computed
      std::vector<Value> kept;
      for (const auto& it : items) {
        step();
        auto tmp = child_scope(scope);
        assign(s.targets, it, *tmp);
        if (eval(*s.cond, tmp).truthy()) kept.push_back(it);
      }
      items = std::move(kept);
    }
    if (items.empty()) return exec_body(s.else_body, scope, out);
    const int64_t n = static_cast<int64_t>(items.size());
    for (int64_t i = 0; i < n; ++i) {
      step();
      auto iter_scope = child_scope(scope);
      assign(s.targets, items[static_cast<size_t>(i)], *iter_scope);
      Value loop = Value::dict();
      auto& d = loop.dict_obj();
      d.set("index", Value(i + 1));
      d.set("index0", Value(i));
      d.set("revindex", Value(n - i));
      d.set("revindex0", Value(n - i - 1));
      d.set("first", Value(i == 0));
      d.set("last", Value(i == n - 1));
      d.set("length", Value(n));
      d.set("depth", Value(1));
      d.set("depth0", Value(0));
      d.set("previtem", i > 0 ? items[static_cast<size_t>(i - 1)] : Value::undefined("there is no previous item"));
      d.set("nextitem", i + 1 < n ? items[static_cast<size_t>(i + 1)] : Value::undefined("there is no next item"));
      d.set("cycle", Value::func("loop.cycle", [i](const CallArgs& a) -> Value {
              if (a.pos.empty()) fail("loop.cycle() needs at least one argument");
              return a.pos[static_cast<size_t>(i) % a.pos.size()];
            }));
      iter_scope->vars["loop"] = loop;
      Flow f = exec_body(s.body, iter_scope, out);
      if (f == Flow::Break) break;
    }
    return Flow::Normal;
  }

  // A macro (or a call block's `caller`) as a callable value closing over its defining scope.
  Value make_macro(const Stmt& s, const ScopePtr& scope, const std::string& name) {
    const Stmt* def = &s;
    std::weak_ptr<Scope> weak = scope;  // a strong capture would make a cycle through scope->vars
    return Value::func(name, [this, def, weak, name](const CallArgs& a) -> Value {
      ScopePtr scope = weak.lock();
      if (!scope) fail(cat("macro '", name, "' called after the scope it was defined in ended"));
      if (call_depth_ >= lim_.max_call_depth) fail(cat("macro '", name, "' nested deeper than ", lim_.max_call_depth, " calls"));
      step();
      auto ms = child_scope(scope);
      std::vector<Value> varargs;
      for (size_t i = 0; i < a.pos.size(); ++i) {
        if (i < def->params.size()) ms->vars[def->params[i].first] = a.pos[i];
        else varargs.push_back(a.pos[i]);
      }
      Value kwargs = Value::dict();
      for (const auto& [k, v] : a.kw) {
        bool is_param = false;
        for (const auto& p : def->params) is_param |= p.first == k;
        if (is_param || k == "caller") ms->vars[k] = v;
        else kwargs.dict_obj().set(k, v);
      }
      for (size_t i = a.pos.size(); i < def->params.size(); ++i) {
        const auto& [pname, pdef] = def->params[i];
        if (ms->vars.count(pname)) continue;
        ms->vars[pname] = pdef ? eval(*pdef, ms) : Value::undefined(cat("'", pname, "' is undefined"));
      }
      ms->vars["varargs"] = Value::list(std::move(varargs), true);
      ms->vars["kwargs"] = kwargs;
      std::string buf;
      ++call_depth_;
      int saved_line = line_;
      try {
        Flow f = exec_body(def->body, ms, buf);
        if (f != Flow::Normal) fail("'break'/'continue' outside of a for loop");
      } catch (...) {
        --call_depth_;
        throw;
      }
      --call_depth_;
      line_ = saved_line;
      return Value(buf);
    });
  }

  // ---------------- expressions ----------------

  CallArgs eval_args(const Expr& e, const ScopePtr& scope, size_t first) {
    CallArgs a;
    for (size_t i = first; i < e.args.size(); ++i) a.pos.push_back(eval(*e.args[i], scope));
    for (const auto& [k, v] : e.kwargs) a.kw.emplace_back(k, eval(*v, scope));
    return a;
  }

  // Applies a Filter chain whose innermost subject is null (filter blocks) to `v`.
  Value apply_filters(const Expr& f, const Value& v, const ScopePtr& scope) {
    Value subject = f.args[0] ? apply_filters(*f.args[0], v, scope) : v;
    CallArgs a = eval_args(f, scope, 1);
    line_ = f.line;
    return call_filter(f.name, subject, a);
  }

  Value eval(const Expr& e, const ScopePtr& scope) {
    Nest nest(*this);
    line_ = e.line;
    switch (e.kind) {
      case ExprKind::Literal: return e.value;
      case ExprKind::Name: {
        const Value* v = scope->lookup(e.name);
        return v ? *v : Value::undefined(cat("'", e.name, "' is undefined"));
      }
      case ExprKind::List:
      case ExprKind::Tuple: {
        std::vector<Value> items;
        for (const auto& a : e.args) items.push_back(eval(*a, scope));
        return Value::list(std::move(items), e.kind == ExprKind::Tuple);
      }
      case ExprKind::Dict: {
        Value d = Value::dict();
        for (const auto& [k, v] : e.pairs) {
          Value key = eval(*k, scope);
          check_defined(key);
          d.dict_obj().set(key.to_str(), eval(*v, scope));
        }
        return d;
      }
      case ExprKind::GetAttr: return get_attr(eval(*e.args[0], scope), e.name);
      case ExprKind::GetItem: {
        Value obj = eval(*e.args[0], scope);
        return get_item(obj, eval(*e.args[1], scope));
      }
      case ExprKind::Slice: {
        Value obj = eval(*e.args[0], scope);
        Value parts[3];
        for (int i = 0; i < 3; ++i) parts[i] = e.args[1 + i] ? eval(*e.args[1 + i], scope) : Value::none();
        return slice_value(obj, parts[0], parts[1], parts[2]);
      }
      case ExprKind::Call: {
        Value fn = eval(*e.args[0], scope);
        CallArgs a = eval_args(e, scope, 1);
        line_ = e.line;
        return call_value(fn, a);
      }
      case ExprKind::Filter: {
        if (!e.args[0]) fail("filter without a subject");
        Value subject = eval(*e.args[0], scope);
        CallArgs a = eval_args(e, scope, 1);
        line_ = e.line;
        return call_filter(e.name, subject, a);
      }
      case ExprKind::Test: {
        Value subject = eval(*e.args[0], scope);
        CallArgs a = eval_args(e, scope, 1);
        line_ = e.line;
        return Value(call_test(e.name, subject, a) != e.negated);
      }
      case ExprKind::Not: return Value(!eval(*e.args[0], scope).truthy());
      case ExprKind::Neg:
      case ExprKind::Pos: {
        Value v = eval(*e.args[0], scope);
        check_defined(v);
        if (!v.is_number()) fail(cat("bad operand type for unary ", e.kind == ExprKind::Neg ? "-" : "+", ": '", v.type_name(), "'"));
        if (e.kind == ExprKind::Pos) return v.is_bool() ? Value(v.as_int()) : v;
        if (v.kind() == Value::Kind::Float) return Value(-v.as_double());
        if (v.as_int() == INT64_MIN) fail("integer overflow");
        return Value(-v.as_int());
      }
      case ExprKind::Binary: {
        Value a = eval(*e.args[0], scope);
        Value b = eval(*e.args[1], scope);
        line_ = e.line;
        return binary_op(e.name, a, b, lim_.max_output);
      }
      case ExprKind::Compare: {
        Value left = eval(*e.args[0], scope);
        for (size_t i = 0; i < e.ops.size(); ++i) {
          Value right = eval(*e.args[i + 1], scope);
          line_ = e.line;
          if (!compare_op(e.ops[i], left, right)) return Value(false);
          left = std::move(right);
        }
        return Value(true);
      }
      case ExprKind::And: {
        Value a = eval(*e.args[0], scope);
        return a.truthy() ? eval(*e.args[1], scope) : a;
      }
      case ExprKind::Or: {
        Value a = eval(*e.args[0], scope);
        return a.truthy() ? a : eval(*e.args[1], scope);
      }
      case ExprKind::CondExpr:
        if (eval(*e.args[1], scope).truthy()) return eval(*e.args[0], scope);
        if (e.args[2]) return eval(*e.args[2], scope);
        return Value::undefined("the inline if-expression on line " + std::to_string(e.line) +
                                " evaluated to false and no else section was defined.");
    }
    return Value();
  }
};

// Jinja2 rejects unknown filters and tests when it compiles a template; so do we.
void check_names(const Expr* e) {
  if (!e) return;
  if (e->kind == ExprKind::Filter && !has_filter(e->name))
    fail(cat("template error (line ", e->line, "): unknown filter '", e->name, "'"));
  if (e->kind == ExprKind::Test && !has_test(e->name))
    fail(cat("template error (line ", e->line, "): unknown test '", e->name, "'"));
  for (const auto& a : e->args) check_names(a.get());
  for (const auto& kv : e->kwargs) check_names(kv.second.get());
  for (const auto& kv : e->pairs) {
    check_names(kv.first.get());
    check_names(kv.second.get());
  }
}

void check_names(const Body& body) {
  for (const auto& s : body) {
    check_names(s->expr.get());
    check_names(s->cond.get());
    for (const auto& [c, b] : s->branches) {
      check_names(c.get());
      check_names(b);
    }
    for (const auto& p : s->params) check_names(p.second.get());
    check_names(s->body);
    check_names(s->else_body);
  }
}

}  // namespace

Template::Template(const std::string& source)
    : ast_(std::make_shared<const TemplateAst>(parse_template(source))) {
  check_names(ast_->body);
}

std::string Template::render(const Value& context) const { return Interp(ast_, limits).run(context); }

std::string Template::render(const nlohmann::ordered_json& context) const {
  return render(Value::from_json(context));
}

}  // namespace dsfuse::tmpl
