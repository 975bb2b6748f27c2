// Jinja2 filters and tests (plus Hugging Face's tojson), with Jinja2 3.1 semantics.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <unordered_map>

#include "core/error.h"
#include "tokenizer/jinja_builtins.h"
#include "tokenizer/jinja_strings.h"

namespace dsfuse::tmpl {
namespace {

using FilterFn = Value (*)(const Value&, const CallArgs&);
using TestFn = bool (*)(const Value&, const CallArgs&);

const Value* arg(const CallArgs& a, size_t i, const char* name) { return a.get(i, name); }
bool flag(const CallArgs& a, size_t i, const char* name) {
  const Value* v = arg(a, i, name);
  return v && v->truthy();
}
int64_t int_arg(const CallArgs& a, size_t i, const char* name, int64_t def) {
  const Value* v = arg(a, i, name);
  if (!given(v)) return def;
  if (!v->is_int()) fail(cat("argument '", name, "' must be an integer, not ", v->type_name()));
  return v->as_int();
}

int64_t length_of(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::Undefined: return 0;
    case Value::Kind::String: return static_cast<int64_t>(utf8_decode(v.str()).size());
    case Value::Kind::List: return static_cast<int64_t>(v.items().size());
    case Value::Kind::Dict: return static_cast<int64_t>(v.dict_obj().items.size());
    default: fail(cat("object of type '", v.type_name(), "' has no len()"));
  }
}

// Jinja's attribute lookup for map/sort/...: "a.b.0" walks attributes / items.
Value attr_path(const Value& v, const std::string& path) {
  Value cur = v;
  size_t b = 0;
  while (true) {
    size_t e = path.find('.', b);
    std::string part = path.substr(b, e == std::string::npos ? std::string::npos : e - b);
    bool digits = !part.empty() && std::all_of(part.begin(), part.end(), [](char c) { return c >= '0' && c <= '9'; });
    cur = digits ? get_item(cur, Value(static_cast<int64_t>(std::strtoll(part.c_str(), nullptr, 10))))
                 : get_item(cur, Value(part));
    if (e == std::string::npos) return cur;
    b = e + 1;
  }
}

// Sort key of Jinja's case-insensitive comparisons (strings lowered unless case_sensitive).
Value sort_key(const Value& v, bool case_sensitive) {
  if (!case_sensitive && v.is_string()) return Value(str_lower(v.str()));
  return v;
}

CallArgs rest_args(const CallArgs& a, size_t from) {
  CallArgs r;
  for (size_t i = from; i < a.pos.size(); ++i) r.pos.push_back(a.pos[i]);
  r.kw = a.kw;
  return r;
}

// ---------------- filters ----------------

Value f_trim(const Value& v, const CallArgs& a) {
  const Value* c = arg(a, 0, "chars");
  std::string chars = given(c) ? c->to_str() : std::string();
  return Value(py_strip(v.to_str(), given(c) ? &chars : nullptr, 3));
}
Value f_upper(const Value& v, const CallArgs&) { return Value(str_upper(v.to_str())); }
Value f_lower(const Value& v, const CallArgs&) { return Value(str_lower(v.to_str())); }
Value f_title(const Value& v, const CallArgs&) { return Value(jinja_title(v.to_str())); }
Value f_capitalize(const Value& v, const CallArgs&) { return Value(py_capitalize(v.to_str())); }
Value f_length(const Value& v, const CallArgs&) { return Value(length_of(v)); }
Value f_first(const Value& v, const CallArgs&) {
  auto items = iterate(v);
  return items.empty() ? Value::undefined("No first item, sequence was empty.") : items.front();
}
Value f_last(const Value& v, const CallArgs&) {
  auto items = iterate(v);
  return items.empty() ? Value::undefined("No last item, sequence was empty.") : items.back();
}
Value f_join(const Value& v, const CallArgs& a) {
  const Value* d = arg(a, 0, "d");
  const Value* at = arg(a, 1, "attribute");
  std::string sep = given(d) ? d->to_str() : std::string();
  std::string out;
  bool first = true;
  for (const auto& it : iterate(v)) {
    if (!first) out += sep;
    first = false;
    out += (given(at) ? attr_path(it, at->to_str()) : it).to_str();
  }
  return Value(out);
}
Value f_default(const Value& v, const CallArgs& a) {
  const Value* d = arg(a, 0, "default_value");
  bool boolean = flag(a, 1, "boolean");
  if (v.is_undefined() || (boolean && !v.truthy())) return d ? *d : Value(std::string());
  return v;
}
Value f_tojson(const Value& v, const CallArgs& a) {
  // Hugging Face: tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)
  JsonDumpOptions o;
  o.ensure_ascii = flag(a, 0, "ensure_ascii");
  const Value* ind = arg(a, 1, "indent");
  if (given(ind)) {
    if (ind->is_int()) o.indent = static_cast<int>(std::clamp<int64_t>(ind->as_int(), 0, 64));
    else fail("tojson: indent must be an integer");
  }
  const Value* seps = arg(a, 2, "separators");
  if (given(seps)) {
    if (!seps->is_list() || seps->items().size() != 2 || !seps->items()[0].is_string() || !seps->items()[1].is_string())
      fail("tojson: separators must be a pair of strings");
    o.item_sep = seps->items()[0].str();
    o.key_sep = seps->items()[1].str();
    if (o.item_sep.empty()) o.item_sep = std::string(1, '\0');  // keep "" distinct from "default"
  }
  o.sort_keys = flag(a, 3, "sort_keys");
  std::string s = json_dumps(v, o);
  if (given(seps) && seps->items()[0].str().empty()) s.erase(std::remove(s.begin(), s.end(), '\0'), s.end());
  return Value(s);
}
Value f_string(const Value& v, const CallArgs&) { return Value(v.to_str()); }
Value f_int(const Value& v, const CallArgs& a) {
  const Value* d = arg(a, 0, "default");
  Value def = d ? *d : Value(int64_t{0});
  int64_t base = int_arg(a, 1, "base", 10);
  if (v.is_int()) return Value(v.as_int());
  if (v.kind() == Value::Kind::Float) {
    double x = v.as_double();
    if (!std::isfinite(x) || std::fabs(x) >= 9.2e18) return def;
    return Value(static_cast<int64_t>(std::trunc(x)));
  }
  if (v.is_string()) {
    std::string s = py_strip(v.str(), nullptr, 3);
    s.erase(std::remove(s.begin(), s.end(), '_'), s.end());
    if (base < 2 || base > 36) return def;
    errno = 0;
    char* end = nullptr;
    long long r = std::strtoll(s.c_str(), &end, static_cast<int>(base));
    if (!s.empty() && end && *end == '\0' && errno == 0) return Value(static_cast<int64_t>(r));
    double x = std::strtod(s.c_str(), &end);
    if (!s.empty() && end && *end == '\0' && std::isfinite(x) && std::fabs(x) < 9.2e18)
      return Value(static_cast<int64_t>(std::trunc(x)));
  }
  return def;
}
Value f_float(const Value& v, const CallArgs& a) {
  const Value* d = arg(a, 0, "default");
  Value def = d ? *d : Value(0.0);
  if (v.is_number()) return Value(v.as_double());
  if (v.is_string()) {
    std::string s = py_strip(v.str(), nullptr, 3);
    char* end = nullptr;
    double x = std::strtod(s.c_str(), &end);
    if (!s.empty() && end && *end == '\0') return Value(x);
  }
  return def;
}
Value f_list(const Value& v, const CallArgs&) { return Value::list(iterate(v)); }
Value f_items(const Value& v, const CallArgs&) {
  if (v.is_undefined()) return Value::list();
  if (!v.is_dict()) fail(cat("items filter: can only get item pairs from a mapping, not ", v.type_name()));
  std::vector<Value> out;
  for (const auto& [k, x] : v.dict_obj().items) out.push_back(Value::list({Value(k), x}, true));
  return Value::list(std::move(out));
}
Value f_replace(const Value& v, const CallArgs& a) {
  const Value* o = arg(a, 0, "old");
  const Value* n = arg(a, 1, "new");
  if (!o || !n) fail("replace filter needs 'old' and 'new' arguments");
  return Value(py_replace(v.to_str(), o->to_str(), n->to_str(), int_arg(a, 2, "count", -1)));
}
Value f_safe(const Value& v, const CallArgs&) { return Value(v.to_str()); }
Value f_escape(const Value& v, const CallArgs&) { return Value(html_escape(v.to_str())); }
Value f_round(const Value& v, const CallArgs& a) {
  check_defined(v);
  if (!v.is_number()) fail(cat("round filter needs a number, not ", v.type_name()));
  int64_t prec = int_arg(a, 0, "precision", 0);
  const Value* m = arg(a, 1, "method");
  std::string method = given(m) ? m->to_str() : "common";
  double x = v.as_double(), scale = std::pow(10.0, static_cast<double>(std::clamp<int64_t>(prec, -300, 300)));
  double r;
  if (method == "common") r = std::nearbyint(x * scale) / scale;  // half-to-even, like Python's round()
  else if (method == "ceil") r = std::ceil(x * scale) / scale;
  else if (method == "floor") r = std::floor(x * scale) / scale;
  else fail("round filter: method must be 'common', 'ceil' or 'floor'");
  if (method == "common" && v.is_int()) return Value(v.as_int());
  return Value(r);
}
Value f_abs(const Value& v, const CallArgs&) {
  check_defined(v);
  if (v.kind() == Value::Kind::Float) return Value(std::fabs(v.as_double()));
  if (v.is_int()) {
    if (v.as_int() == INT64_MIN) fail("integer overflow in abs");
    return Value(v.as_int() < 0 ? -v.as_int() : v.as_int());
  }
  fail(cat("bad operand type for abs(): '", v.type_name(), "'"));
}
Value f_map(const Value& v, const CallArgs& a) {
  std::vector<Value> out;
  const Value* at = nullptr;
  for (const auto& [k, x] : a.kw)
    if (k == "attribute") at = &x;
  if (at) {
    const Value* def = nullptr;
    for (const auto& [k, x] : a.kw)
      if (k == "default") def = &x;
    for (const auto& it : iterate(v)) {
      Value r = attr_path(it, at->to_str());
      out.push_back(r.is_undefined() && def ? *def : r);
    }
    return Value::list(std::move(out));
  }
  if (a.pos.empty() || !a.pos[0].is_string()) fail("map filter needs a filter name or attribute=");
  CallArgs rest = rest_args(a, 1);
  for (const auto& it : iterate(v)) out.push_back(call_filter(a.pos[0].str(), it, rest));
  return Value::list(std::move(out));
}
Value select_impl(const Value& v, const CallArgs& a, bool by_attr, bool keep) {
  size_t ti = by_attr ? 1 : 0;
  std::string attr;
  if (by_attr) {
    if (a.pos.empty()) fail("selectattr/rejectattr need an attribute name");
    attr = a.pos[0].to_str();
  }
  bool has_test = a.pos.size() > ti;
  std::string test = has_test ? a.pos[ti].to_str() : std::string();
  CallArgs rest = rest_args(a, ti + 1);
  std::vector<Value> out;
  for (const auto& it : iterate(v)) {
    Value x = by_attr ? attr_path(it, attr) : it;
    bool ok = has_test ? call_test(test, x, rest) : x.truthy();
    if (ok == keep) out.push_back(it);
  }
  return Value::list(std::move(out));
}
Value f_select(const Value& v, const CallArgs& a) { return select_impl(v, a, false, true); }
Value f_reject(const Value& v, const CallArgs& a) { return select_impl(v, a, false, false); }
Value f_selectattr(const Value& v, const CallArgs& a) { return select_impl(v, a, true, true); }
Value f_rejectattr(const Value& v, const CallArgs& a) { return select_impl(v, a, true, false); }
Value f_unique(const Value& v, const CallArgs& a) {
  bool cs = flag(a, 0, "case_sensitive");
  const Value* at = arg(a, 1, "attribute");
  std::vector<Value> out, seen;
  for (const auto& it : iterate(v)) {
    Value key = sort_key(given(at) ? attr_path(it, at->to_str()) : it, cs);
    bool dup = false;
    for (const auto& s : seen) dup |= values_equal(s, key);
    if (!dup) {
      seen.push_back(key);
      out.push_back(it);
    }
  }
  return Value::list(std::move(out));
}
Value f_reverse(const Value& v, const CallArgs&) {
  if (v.is_string()) {
    std::u32string u = utf8_decode(v.str());
    std::reverse(u.begin(), u.end());
    return Value(utf8_encode(u));
  }
  auto items = iterate(v);
  std::reverse(items.begin(), items.end());
  return Value::list(std::move(items));
}
Value f_sort(const Value& v, const CallArgs& a) {
  bool rev = flag(a, 0, "reverse"), cs = flag(a, 1, "case_sensitive");
  const Value* at = arg(a, 2, "attribute");
  auto items = iterate(v);
  std::vector<std::pair<Value, Value>> keyed;
  for (auto& it : items) keyed.emplace_back(sort_key(given(at) ? attr_path(it, at->to_str()) : it, cs), it);
  std::stable_sort(keyed.begin(), keyed.end(), [rev](const auto& x, const auto& y) {
    return rev ? value_less(y.first, x.first) : value_less(x.first, y.first);
  });
  std::vector<Value> out;
  for (auto& kv : keyed) out.push_back(kv.second);
  return Value::list(std::move(out));
}
Value f_dictsort(const Value& v, const CallArgs& a) {
  if (!v.is_dict()) fail(cat("dictsort filter needs a dict, not ", v.type_name()));
  bool cs = flag(a, 0, "case_sensitive");
  const Value* by = arg(a, 1, "by");
  bool by_value = given(by) && by->to_str() == "value";
  if (given(by) && !by_value && by->to_str() != "key") fail("dictsort: 'by' must be 'key' or 'value'");
  bool rev = flag(a, 2, "reverse");
  std::vector<Value> pairs = f_items(v, {}).items();
  std::stable_sort(pairs.begin(), pairs.end(), [&](const Value& x, const Value& y) {
    Value kx = sort_key(x.items()[by_value ? 1 : 0], cs), ky = sort_key(y.items()[by_value ? 1 : 0], cs);
    return rev ? value_less(ky, kx) : value_less(kx, ky);
  });
  return Value::list(std::move(pairs));
}
Value f_indent(const Value& v, const CallArgs& a) {
  if (!v.is_string()) fail(cat("indent filter needs a string, not ", v.type_name()));
  const Value* w = arg(a, 0, "width");
  std::string ind = !given(w) ? "    " : w->is_string() ? w->str() : std::string(static_cast<size_t>(std::clamp<int64_t>(w->is_int() ? w->as_int() : 4, 0, 1000)), ' ');
  bool first = flag(a, 1, "first"), blank = flag(a, 2, "blank");
  std::vector<std::string> lines = py_splitlines(v.to_str() + "\n");
  std::string rv;
  for (size_t i = 0; i < lines.size(); ++i) {
    if (i > 0) {
      rv += '\n';
      if (blank || !lines[i].empty()) rv += ind;
    }
    rv += lines[i];
  }
  if (first) rv = ind + rv;
  return Value(rv);
}
Value f_wordcount(const Value& v, const CallArgs&) { return Value(count_words(v.to_str())); }
Value f_sum(const Value& v, const CallArgs& a) {
  const Value* at = arg(a, 0, "attribute");
  const Value* st = arg(a, 1, "start");
  Value acc = st ? *st : Value(int64_t{0});
  for (const auto& it : iterate(v)) acc = binary_op("+", acc, given(at) ? attr_path(it, at->to_str()) : it, size_t{1} << 28);
  return acc;
}
Value minmax(const Value& v, const CallArgs& a, bool want_max) {
  bool cs = flag(a, 0, "case_sensitive");
  const Value* at = arg(a, 1, "attribute");
  Value best, best_key;
  bool have = false;
  for (const auto& it : iterate(v)) {
    Value key = sort_key(given(at) ? attr_path(it, at->to_str()) : it, cs);
    if (!have || (want_max ? value_less(best_key, key) : value_less(key, best_key))) {
      best = it;
      best_key = key;
      have = true;
    }
  }
  return have ? best : Value::undefined("No aggregated item, sequence was empty.");
}
Value f_min(const Value& v, const CallArgs& a) { return minmax(v, a, false); }
Value f_max(const Value& v, const CallArgs& a) { return minmax(v, a, true); }
Value f_format(const Value& v, const CallArgs& a) {
  if (!a.kw.empty() && !a.pos.empty()) fail("format filter: can't handle positional and keyword arguments at the same time");
  return Value(py_percent_format(v.to_str(), a));
}
Value f_pprint(const Value& v, const CallArgs&) { return Value(v.repr()); }
Value f_attr(const Value& v, const CallArgs& a) {
  const Value* n = arg(a, 0, "name");
  if (!n) fail("attr filter needs a name");
  return get_attr(v, n->to_str());
}
Value f_center(const Value& v, const CallArgs& a) {
  std::u32string u = utf8_decode(v.to_str());
  int64_t width = std::clamp<int64_t>(int_arg(a, 0, "width", 80), 0, 100000);
  if (static_cast<int64_t>(u.size()) >= width) return Value(v.to_str());
  size_t marg = static_cast<size_t>(width) - u.size();
  size_t left = marg / 2 + (marg & static_cast<size_t>(width) & 1);
  return Value(std::string(left, ' ') + v.to_str() + std::string(marg - left, ' '));
}

const std::unordered_map<std::string, FilterFn>& filters() {
  static const std::unordered_map<std::string, FilterFn> m = {
      {"trim", f_trim},       {"upper", f_upper},       {"lower", f_lower},         {"title", f_title},
      {"capitalize", f_capitalize}, {"length", f_length}, {"count", f_length},     {"first", f_first},
      {"last", f_last},       {"join", f_join},         {"default", f_default},     {"d", f_default},
      {"tojson", f_tojson},   {"string", f_string},     {"int", f_int},             {"float", f_float},
      {"list", f_list},       {"items", f_items},       {"replace", f_replace},     {"safe", f_safe},
      {"e", f_escape},        {"escape", f_escape},     {"forceescape", f_escape},  {"round", f_round},
      {"abs", f_abs},         {"map", f_map},           {"select", f_select},       {"reject", f_reject},
      {"selectattr", f_selectattr}, {"rejectattr", f_rejectattr}, {"unique", f_unique}, {"reverse", f_reverse},
      {"sort", f_sort},       {"dictsort", f_dictsort}, {"indent", f_indent},       {"wordcount", f_wordcount},
      {"sum", f_sum},         {"min", f_min},           {"max", f_max},             {"format", f_format},
      {"pprint", f_pprint},   {"attr", f_attr},         {"center", f_center},
  };
  return m;
}

// ---------------- tests ----------------

bool t_defined(const Value& v, const CallArgs&) { return !v.is_undefined(); }
bool t_undefined(const Value& v, const CallArgs&) { return v.is_undefined(); }
bool t_none(const Value& v, const CallArgs&) { return v.is_none(); }
bool t_string(const Value& v, const CallArgs&) { return v.is_string(); }
bool t_number(const Value& v, const CallArgs&) { return v.is_number(); }
bool t_integer(const Value& v, const CallArgs&) { return v.kind() == Value::Kind::Int; }
bool t_float(const Value& v, const CallArgs&) { return v.kind() == Value::Kind::Float; }
bool t_mapping(const Value& v, const CallArgs&) { return v.is_dict() && !v.is_namespace(); }
bool t_iterable(const Value& v, const CallArgs&) {
  return v.is_undefined() || v.is_list() || v.is_string() || (v.is_dict() && !v.is_namespace());
}
bool t_sequence(const Value& v, const CallArgs&) { return v.is_undefined() || v.is_list() || v.is_string() || (v.is_dict() && !v.is_namespace()); }
bool t_boolean(const Value& v, const CallArgs&) { return v.is_bool(); }
bool t_true(const Value& v, const CallArgs&) { return v.is_bool() && v.as_bool(); }
bool t_false(const Value& v, const CallArgs&) { return v.is_bool() && !v.as_bool(); }
// Python's `value % n` for the even/odd/divisibleby tests (ints and floats).
double py_mod(const Value& v, double n, const char* test) {
  check_defined(v);
  if (!v.is_number()) fail(cat("test '", test, "' needs a number, not ", v.type_name()));
  if (n == 0) fail(cat("test '", test, "': modulo by zero"));
  if (v.is_int() && n == std::trunc(n) && std::fabs(n) < 9e18) {
    int64_t d = static_cast<int64_t>(n), x = v.as_int();
    if (d == -1) return 0;
    int64_t m = x % d;
    if (m != 0 && ((m < 0) != (d < 0))) m += d;
    return static_cast<double>(m);
  }
  double m = std::fmod(v.as_double(), n);
  if (m != 0 && ((m < 0) != (n < 0))) m += n;
  return m;
}
bool t_even(const Value& v, const CallArgs&) { return py_mod(v, 2, "even") == 0; }
bool t_odd(const Value& v, const CallArgs&) { return py_mod(v, 2, "odd") == 1; }
bool t_divisibleby(const Value& v, const CallArgs& a) {
  const Value* n = arg(a, 0, "num");
  if (!n || !n->is_number()) fail("test 'divisibleby' needs a number argument");
  return py_mod(v, n->as_double(), "divisibleby") == 0;
}
const Value& other(const CallArgs& a, const char* test) {
  const Value* o = a.get(0, "other");
  if (!o) fail(cat("test '", test, "' needs an argument"));
  return *o;
}
bool t_eq(const Value& v, const CallArgs& a) { return compare_op("==", v, other(a, "eq")); }
bool t_ne(const Value& v, const CallArgs& a) { return compare_op("!=", v, other(a, "ne")); }
bool t_lt(const Value& v, const CallArgs& a) { return compare_op("<", v, other(a, "lt")); }
bool t_le(const Value& v, const CallArgs& a) { return compare_op("<=", v, other(a, "le")); }
bool t_gt(const Value& v, const CallArgs& a) { return compare_op(">", v, other(a, "gt")); }
bool t_ge(const Value& v, const CallArgs& a) { return compare_op(">=", v, other(a, "ge")); }
bool t_in(const Value& v, const CallArgs& a) { return contains(other(a, "in"), v); }
bool t_lower(const Value& v, const CallArgs&) { return py_is_class(v.to_str(), "islower"); }
bool t_upper(const Value& v, const CallArgs&) { return py_is_class(v.to_str(), "isupper"); }
bool t_callable(const Value& v, const CallArgs&) { return v.is_func(); }
bool t_sameas(const Value& v, const CallArgs& a) {
  const Value& o = other(a, "sameas");
  if (v.kind() != o.kind()) return false;
  if (v.is_list() || v.is_dict() || v.is_func()) return values_equal(v, o) && v.repr() == o.repr();
  return values_equal(v, o);
}
bool t_escaped(const Value&, const CallArgs&) { return false; }
bool t_filter(const Value& v, const CallArgs&) { return v.is_string() && has_filter(v.str()); }
bool t_test(const Value& v, const CallArgs&) { return v.is_string() && has_test(v.str()); }

const std::unordered_map<std::string, TestFn>& tests() {
  static const std::unordered_map<std::string, TestFn> m = {
      {"defined", t_defined}, {"undefined", t_undefined}, {"none", t_none},       {"string", t_string},
      {"number", t_number},   {"integer", t_integer},     {"float", t_float},     {"mapping", t_mapping},
      {"iterable", t_iterable}, {"sequence", t_sequence}, {"boolean", t_boolean}, {"true", t_true},
      {"false", t_false},     {"even", t_even},           {"odd", t_odd},         {"divisibleby", t_divisibleby},
      {"eq", t_eq},           {"equalto", t_eq},          {"==", t_eq},           {"ne", t_ne},
      {"!=", t_ne},           {"lt", t_lt},               {"lessthan", t_lt},     {"<", t_lt},
      {"le", t_le},           {"<=", t_le},               {"gt", t_gt},           {"greaterthan", t_gt},
      {">", t_gt},            {"ge", t_ge},               {">=", t_ge},           {"in", t_in},
      {"lower", t_lower},     {"upper", t_upper},         {"callable", t_callable}, {"sameas", t_sameas},
      {"escaped", t_escaped}, {"filter", t_filter},       {"test", t_test},
  };
  return m;
}

}  // namespace

bool has_filter(const std::string& name) { return filters().count(name) != 0; }
bool has_test(const std::string& name) { return tests().count(name) != 0; }

Value call_filter(const std::string& name, const Value& v, const CallArgs& args) {
  auto it = filters().find(name);
  if (it == filters().end()) fail(cat("unknown filter '", name, "'"));
  return it->second(v, args);
}

bool call_test(const std::string& name, const Value& v, const CallArgs& args) {
  auto it = tests().find(name);
  if (it == tests().end()) fail(cat("unknown test '", name, "'"));
  return it->second(v, args);
}

}  // namespace dsfuse::tmpl
