// Operators, attribute access and methods of the Python objects Jinja templates see.
// Filters and tests live in jinja_filters.cpp.
#include <algorithm>
#include <cmath>
#include <ctime>
#include <optional>
#include <utf8proc.h>

#include "core/error.h"
#include "tokenizer/jinja_builtins.h"
#include "tokenizer/jinja_strings.h"

namespace dsfuse::tmpl {

void check_defined(const Value& v) {
  if (v.is_undefined()) fail(v.str().empty() ? std::string("value is undefined") : v.str());
}

static std::string obj_desc(const Value& v) {
  if (v.is_none()) return "'None'";
  return cat("'", v.type_name(), " object'");
}

static int64_t to_index(const Value& v, const char* what) {
  if (!v.is_int()) fail(cat(what, " indices must be integers, not '", v.type_name(), "'"));
  return v.as_int();
}

// ---------------- methods ----------------

static Value method(const std::string& name, Func fn) {
  return Value::func(name, std::move(fn));
}

static const Value& arg_or_fail(const CallArgs& a, size_t i, const char* name, const std::string& fn) {
  const Value* v = a.get(i, name);
  if (!v) fail(cat(fn, "() missing required argument '", name, "'"));
  check_defined(*v);
  return *v;
}

static std::string str_arg(const CallArgs& a, size_t i, const char* name, const std::string& fn) {
  const Value& v = arg_or_fail(a, i, name, fn);
  if (!v.is_string()) fail(cat(fn, "() argument '", name, "' must be str, not ", v.type_name()));
  return v.str();
}

static Value string_method(const Value& self, const std::string& name) {
  const std::string s = self.str();
  auto strip_fn = [s, name](int mode) {
    return [s, name, mode](const CallArgs& a) -> Value {
      const Value* c = a.get(0, "chars");
      if (!given(c)) return Value(py_strip(s, nullptr, mode));
      if (!c->is_string()) fail(cat(name, "() arg must be None or str"));
      return Value(py_strip(s, &c->str(), mode));
    };
  };
  if (name == "strip") return method(name, strip_fn(3));
  if (name == "lstrip") return method(name, strip_fn(1));
  if (name == "rstrip") return method(name, strip_fn(2));
  if (name == "split" || name == "rsplit") {
    bool r = name == "rsplit";
    return method(name, [s, r](const CallArgs& a) -> Value {
      const Value* sep = a.get(0, "sep");
      const Value* mx = a.get(1, "maxsplit");
      int64_t maxsplit = !given(mx) ? -1 : to_index(*mx, "maxsplit");
      std::vector<std::string> parts;
      if (!given(sep)) {
        parts = py_split_ws(s, maxsplit, r);
      } else {
        if (!sep->is_string()) fail("split() separator must be str or None");
        if (sep->str().empty()) fail("split(): empty separator");
        parts = py_split(s, sep->str(), maxsplit, r);
      }
      std::vector<Value> out;
      for (auto& p : parts) out.emplace_back(std::move(p));
      return Value::list(std::move(out));
    });
  }
  if (name == "splitlines")
    return method(name, [s](const CallArgs&) -> Value {
      std::vector<Value> out;
      for (auto& l : py_splitlines(s)) out.emplace_back(std::move(l));
      return Value::list(std::move(out));
    });
  if (name == "startswith" || name == "endswith") {
    bool ends = name == "endswith";
    return method(name, [s, ends, name](const CallArgs& a) -> Value {
      const Value& p = arg_or_fail(a, 0, "prefix", name);
      std::vector<Value> cands = p.is_tuple() ? p.items() : std::vector<Value>{p};
      for (const auto& c : cands) {
        if (!c.is_string()) fail(cat(name, "() argument must be str or a tuple of str, not ", c.type_name()));
        const std::string& x = c.str();
        if (x.size() <= s.size() && (ends ? s.compare(s.size() - x.size(), x.size(), x) == 0 : s.compare(0, x.size(), x) == 0))
          return Value(true);
      }
      return Value(false);
    });
  }
  if (name == "upper") return method(name, [s](const CallArgs&) { return Value(str_upper(s)); });
  if (name == "lower") return method(name, [s](const CallArgs&) { return Value(str_lower(s)); });
  if (name == "title") return method(name, [s](const CallArgs&) { return Value(py_title(s)); });
  if (name == "capitalize") return method(name, [s](const CallArgs&) { return Value(py_capitalize(s)); });
  if (name == "replace")
    return method(name, [s](const CallArgs& a) -> Value {
      std::string old = str_arg(a, 0, "old", "replace"), nw = str_arg(a, 1, "new", "replace");
      const Value* c = a.get(2, "count");
      return Value(py_replace(s, old, nw, !given(c) ? -1 : to_index(*c, "count")));
    });
  if (name == "find" || name == "rfind" || name == "index" || name == "rindex") {
    return method(name, [s, name](const CallArgs& a) -> Value {
      std::string sub = str_arg(a, 0, "sub", name);
      bool rev = name[0] == 'r';
      size_t pos = rev ? s.rfind(sub) : s.find(sub);
      if (pos == std::string::npos) {
        if (name.find("index") != std::string::npos) fail("substring not found");
        return Value(int64_t{-1});
      }
      return Value(static_cast<int64_t>(utf8_decode(s.substr(0, pos)).size()));
    });
  }
  if (name == "count")
    return method(name, [s](const CallArgs& a) -> Value {
      std::string sub = str_arg(a, 0, "sub", "count");
      if (sub.empty()) return Value(static_cast<int64_t>(utf8_decode(s).size() + 1));
      int64_t n = 0;
      for (size_t p = s.find(sub); p != std::string::npos; p = s.find(sub, p + sub.size())) ++n;
      return Value(n);
    });
  if (name == "join")
    return method(name, [s](const CallArgs& a) -> Value {
      const Value& it = arg_or_fail(a, 0, "iterable", "join");
      std::string out;
      bool first = true;
      for (const auto& v : iterate(it)) {
        if (!v.is_string()) fail(cat("join(): sequence item must be str, ", v.type_name(), " found"));
        if (!first) out += s;
        first = false;
        out += v.str();
      }
      return Value(out);
    });
  if (name == "format") return method(name, [s](const CallArgs& a) { return Value(py_str_format(s, a)); });
  if (name == "isdigit" || name == "isalpha" || name == "isalnum" || name == "isspace" || name == "isupper" ||
      name == "islower" || name == "isnumeric" || name == "isdecimal")
    return method(name, [s, name](const CallArgs&) { return Value(py_is_class(s, name)); });
  return Value::undefined(cat("'str object' has no attribute '", name, "'"));
}

static Value dict_method(const Value& self, const std::string& name) {
  if (name == "get")
    return method(name, [self](const CallArgs& a) -> Value {
      const Value* k = a.get(0, "key");
      if (!k) fail("get() missing required argument 'key'");
      check_defined(*k);
      const Value* def = a.get(1, "default");
      const Value* v = k->is_string() ? self.dict_obj().find(k->str()) : self.dict_obj().find(k->to_str());
      if (v) return *v;
      return def ? *def : Value::none();
    });
  if (name == "items" || name == "keys" || name == "values")
    return method(name, [self, name](const CallArgs&) -> Value {
      std::vector<Value> out;
      for (const auto& [k, v] : self.dict_obj().items) {
        if (name == "items") out.push_back(Value::list({Value(k), v}, true));
        else if (name == "keys") out.emplace_back(k);
        else out.push_back(v);
      }
      return Value::list(std::move(out));
    });
  if (name == "copy")
    return method(name, [self](const CallArgs&) -> Value {
      Value d = Value::dict();
      d.dict_obj().items = self.dict_obj().items;
      d.dict_obj().depth = self.dict_obj().depth;
      return d;
    });
  if (name == "update" || name == "pop" || name == "setdefault" || name == "clear" || name == "popitem")
    return method(name, [name](const CallArgs&) -> Value {
      fail(cat("access to attribute '", name, "' of 'dict' object is unsafe (templates cannot modify data)"));
    });
  return Value();
}

static Value list_method(const Value& self, const std::string& name) {
  if (name == "count")
    return method(name, [self](const CallArgs& a) -> Value {
      const Value& x = arg_or_fail(a, 0, "value", "count");
      int64_t n = 0;
      for (const auto& v : self.items()) n += values_equal(v, x);
      return Value(n);
    });
  if (name == "index")
    return method(name, [self](const CallArgs& a) -> Value {
      const Value& x = arg_or_fail(a, 0, "value", "index");
      for (size_t i = 0; i < self.items().size(); ++i)
        if (values_equal(self.items()[i], x)) return Value(static_cast<int64_t>(i));
      fail(cat(x.repr(), " is not in list"));
    });
  if (name == "append" || name == "extend" || name == "pop" || name == "insert" || name == "remove" ||
      name == "sort" || name == "reverse" || name == "clear")
    return method(name, [name](const CallArgs&) -> Value {
      fail(cat("access to attribute '", name, "' of 'list' object is unsafe (templates cannot modify data)"));
    });
  return Value();
}

Value get_attr(const Value& obj, const std::string& name) {
  check_defined(obj);
  if (obj.is_dict()) {
    if (!obj.is_namespace()) {
      Value m = dict_method(obj, name);
      if (!m.is_undefined()) return m;
    }
    if (const Value* v = obj.dict_obj().find(name)) return *v;
    return Value::undefined(cat(obj_desc(obj), " has no attribute '", name, "'"));
  }
  if (obj.is_string()) return string_method(obj, name);
  if (obj.is_list()) {
    Value m = list_method(obj, name);
    if (!m.is_undefined()) return m;
  }
  return Value::undefined(cat(obj_desc(obj), " has no attribute '", name, "'"));
}

Value get_item(const Value& obj, const Value& key) {
  check_defined(obj);
  check_defined(key);
  if (obj.is_dict()) {
    if (const Value* v = obj.dict_obj().find(key.is_string() ? key.str() : key.to_str())) return *v;
    if (key.is_string() && !obj.is_namespace()) {
      Value m = dict_method(obj, key.str());
      if (!m.is_undefined()) return m;
    }
    return Value::undefined(cat(obj_desc(obj), " has no attribute '", key.to_str(), "'"));
  }
  if (obj.is_list() && key.is_int()) {
    int64_t n = static_cast<int64_t>(obj.items().size()), i = key.as_int();
    if (i < 0) i += n;
    if (i < 0 || i >= n) return Value::undefined(cat(obj_desc(obj), " has no element ", key.as_int()));
    return obj.items()[static_cast<size_t>(i)];
  }
  if (obj.is_string() && key.is_int()) {
    std::u32string u = utf8_decode(obj.str());
    int64_t n = static_cast<int64_t>(u.size()), i = key.as_int();
    if (i < 0) i += n;
    if (i < 0 || i >= n) return Value::undefined(cat(obj_desc(obj), " has no element ", key.as_int()));
    return Value(utf8_encode(u.substr(static_cast<size_t>(i), 1)));
  }
  if (key.is_string()) return get_attr(obj, key.str());
  return Value::undefined(cat(obj_desc(obj), " has no element ", key.repr()));
}

// Python slice semantics (start/stop clamped, negative steps walk backwards).
Value slice_value(const Value& obj, const Value& start, const Value& stop, const Value& step) {
  check_defined(obj);
  auto opt = [](const Value& v, const char* what) -> std::optional<int64_t> {
    if (v.is_none() || v.is_undefined()) return std::nullopt;
    if (!v.is_int()) fail(cat("slice ", what, " must be an integer or None, not ", v.type_name()));
    return v.as_int();
  };
  auto st = opt(step, "step");
  int64_t stp = st.value_or(1);
  if (stp == 0) fail("slice step cannot be zero");
  auto do_slice = [&](int64_t n, auto&& take) {
    auto norm = [&](std::optional<int64_t> v, int64_t def) -> int64_t {
      if (!v) return def;
      int64_t x = *v;
      if (x < 0) {
        x += n;
        if (x < 0) x = stp < 0 ? -1 : 0;
      } else if (x >= n) {
        x = stp < 0 ? n - 1 : n;
      }
      return x;
    };
    int64_t b = norm(opt(start, "start"), stp < 0 ? n - 1 : 0);
    int64_t e = norm(opt(stop, "stop"), stp < 0 ? -1 : n);
    if (stp > 0)
      for (int64_t i = b; i < e; i += stp) take(static_cast<size_t>(i));
    else
      for (int64_t i = b; i > e; i += stp) take(static_cast<size_t>(i));
  };
  if (obj.is_list()) {
    std::vector<Value> out;
    do_slice(static_cast<int64_t>(obj.items().size()), [&](size_t i) { out.push_back(obj.items()[i]); });
    return Value::list(std::move(out), obj.is_tuple());
  }
  if (obj.is_string()) {
    std::u32string u = utf8_decode(obj.str()), out;
    do_slice(static_cast<int64_t>(u.size()), [&](size_t i) { out += u[i]; });
    return Value(utf8_encode(out));
  }
  fail(cat("'", obj.type_name(), "' object is not subscriptable"));
}

// ---------------- operators ----------------

static int64_t floordiv(int64_t a, int64_t b) {
  int64_t q = a / b;
  if ((a % b != 0) && ((a < 0) != (b < 0))) --q;
  return q;
}

static Value repeat(const Value& seq, int64_t n, size_t max_size) {
  if (n <= 0) return seq.is_string() ? Value(std::string()) : Value::list({}, seq.is_tuple());
  size_t unit = seq.is_string() ? seq.str().size() : seq.items().size();
  if (unit != 0 && static_cast<uint64_t>(n) > max_size / unit) fail("sequence repetition result too large");
  if (seq.is_string()) {
    std::string out;
    out.reserve(unit * static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) out += seq.str();
    return Value(out);
  }
  std::vector<Value> out;
  for (int64_t i = 0; i < n; ++i) out.insert(out.end(), seq.items().begin(), seq.items().end());
  return Value::list(std::move(out), seq.is_tuple());
}

Value binary_op(const std::string& op, const Value& a, const Value& b, size_t max_size) {
  if (op == "~") {
    std::string s = a.to_str() + b.to_str();
    if (s.size() > max_size) fail("string too large");
    return Value(s);
  }
  check_defined(a);
  check_defined(b);
  auto type_error = [&]() -> Value {
    fail(cat("unsupported operand type(s) for ", op, ": '", a.type_name(), "' and '", b.type_name(), "'"));
  };
  const bool ints = a.is_int() && b.is_int();
  const bool nums = a.is_number() && b.is_number();
  if (op == "+") {
    if (ints) {
      int64_t r;
      if (__builtin_add_overflow(a.as_int(), b.as_int(), &r)) fail("integer overflow in '+'");
      return Value(r);
    }
    if (nums) return Value(a.as_double() + b.as_double());
    if (a.is_string() && b.is_string()) {
      if (a.str().size() + b.str().size() > max_size) fail("string too large");
      return Value(a.str() + b.str());
    }
    if (a.is_list() && b.is_list() && a.is_tuple() == b.is_tuple()) {
      if (a.items().size() + b.items().size() > max_size) fail("list too large");
      std::vector<Value> out = a.items();
      out.insert(out.end(), b.items().begin(), b.items().end());
      return Value::list(std::move(out), a.is_tuple());
    }
    return type_error();
  }
  if (op == "-") {
    if (ints) {
      int64_t r;
      if (__builtin_sub_overflow(a.as_int(), b.as_int(), &r)) fail("integer overflow in '-'");
      return Value(r);
    }
    if (nums) return Value(a.as_double() - b.as_double());
    return type_error();
  }
  if (op == "*") {
    if (ints) {
      int64_t r;
      if (__builtin_mul_overflow(a.as_int(), b.as_int(), &r)) fail("integer overflow in '*'");
      return Value(r);
    }
    if (nums) return Value(a.as_double() * b.as_double());
    if ((a.is_string() || a.is_list()) && b.is_int()) return repeat(a, b.as_int(), max_size);
    if (a.is_int() && (b.is_string() || b.is_list())) return repeat(b, a.as_int(), max_size);
    return type_error();
  }
  if (op == "/") {
    if (!nums) return type_error();
    if (b.as_double() == 0) fail("division by zero");
    return Value(a.as_double() / b.as_double());
  }
  if (op == "//" || op == "%") {
    if (op == "%" && a.is_string()) {
      CallArgs args;
      if (b.is_tuple()) args.pos = b.items();
      else args.pos.push_back(b);
      // Python: a mapping-like right operand (dict, list) may go unused without an error.
      bool may_be_unused = (b.is_dict() || b.is_list()) && !b.is_tuple();
      return Value(py_percent_format(a.str(), args, may_be_unused));
    }
    if (!nums) return type_error();
    if (ints) {
      if (b.as_int() == 0) fail(op == "%" ? "integer modulo by zero" : "integer division by zero");
      if (a.as_int() == INT64_MIN && b.as_int() == -1) fail("integer overflow");
      int64_t q = floordiv(a.as_int(), b.as_int());
      return op == "//" ? Value(q) : Value(a.as_int() - q * b.as_int());
    }
    double x = a.as_double(), y = b.as_double();
    if (y == 0) fail("float division by zero");
    double q = std::floor(x / y);
    if (op == "//") return Value(q);
    double m = std::fmod(x, y);
    if (m != 0 && ((m < 0) != (y < 0))) m += y;
    return Value(m);
  }
  if (op == "**") {
    if (ints && b.as_int() >= 0) {
      int64_t r = 1, base = a.as_int();
      for (int64_t e = b.as_int(); e > 0; --e) {
        if (__builtin_mul_overflow(r, base, &r)) fail("integer overflow in '**'");
        if (r == 0 || r == 1) break;
        if (r == -1) {
          if ((e - 1) % 2 == 1) r = 1;
          break;
        }
      }
      return Value(r);
    }
    if (nums) {
      if (a.as_double() == 0 && b.as_double() < 0) fail("0.0 cannot be raised to a negative power");
      return Value(std::pow(a.as_double(), b.as_double()));
    }
    return type_error();
  }
  fail(cat("unknown operator '", op, "'"));
}

bool contains(const Value& container, const Value& item) {
  if (container.is_undefined()) return false;  // Undefined iterates as empty
  if (container.is_string()) {
    check_defined(item);
    if (!item.is_string()) fail(cat("'in <string>' requires string as left operand, not ", item.type_name()));
    return container.str().find(item.str()) != std::string::npos;
  }
  if (container.is_list()) {
    for (const auto& v : container.items())
      if (values_equal(v, item)) return true;
    return false;
  }
  if (container.is_dict()) return item.is_string() && container.dict_obj().find(item.str()) != nullptr;
  fail(cat("argument of type '", container.type_name(), "' is not iterable"));
}

bool compare_op(const std::string& op, const Value& a, const Value& b) {
  if (op == "==") return values_equal(a, b);
  if (op == "!=") return !values_equal(a, b);
  if (op == "in") return contains(b, a);
  if (op == "notin") return !contains(b, a);
  check_defined(a);
  check_defined(b);
  if (op == "<") return value_less(a, b);
  if (op == ">") return value_less(b, a);
  if (op == "<=") return !value_less(b, a);
  if (op == ">=") return !value_less(a, b);
  fail(cat("unknown comparison '", op, "'"));
}

std::vector<Value> iterate(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::Undefined: return {};  // Jinja's default Undefined iterates as empty
    case Value::Kind::List: return v.items();
    case Value::Kind::Dict: {
      if (v.is_namespace()) fail("'Namespace' object is not iterable");
      std::vector<Value> keys;
      for (const auto& kv : v.dict_obj().items) keys.emplace_back(kv.first);
      return keys;
    }
    case Value::Kind::String: {
      std::vector<Value> out;
      for (char32_t c : utf8_decode(v.str())) out.emplace_back(utf8_encode(std::u32string(1, c)));
      return out;
    }
    default: fail(cat("'", v.type_name(), "' object is not iterable"));
  }
}

Value call_value(const Value& f, const CallArgs& args) {
  check_defined(f);
  if (!f.is_func()) fail(cat("'", f.type_name(), "' object is not callable"));
  return f.func_obj().fn(args);
}

// ---------------- globals ----------------

void add_globals(DictObj& g, size_t max_size) {
  g.set("range", Value::func("range", [max_size](const CallArgs& a) -> Value {
    if (a.pos.empty() || a.pos.size() > 3) fail("range() expects 1 to 3 integer arguments");
    for (const auto& v : a.pos)
      if (!v.is_int()) fail(cat("range() argument must be an integer, not '", v.type_name(), "'"));
    int64_t start = 0, stop, step = 1;
    if (a.pos.size() == 1) {
      stop = a.pos[0].as_int();
    } else {
      start = a.pos[0].as_int();
      stop = a.pos[1].as_int();
      if (a.pos.size() == 3) step = a.pos[2].as_int();
    }
    if (step == 0) fail("range() arg 3 must not be zero");
    std::vector<Value> out;
    for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) {
      if (out.size() >= max_size / 16 || out.size() >= 10'000'000) fail("range() too large");
      out.emplace_back(i);
      if ((step > 0 && i > INT64_MAX - step) || (step < 0 && i < INT64_MIN - step)) break;
    }
    return Value::list(std::move(out));
  }));
  g.set("dict", Value::func("dict", [](const CallArgs& a) -> Value {
    Value d = Value::dict();
    for (const auto& p : a.pos) {
      if (!p.is_dict()) fail("dict() positional argument must be a dict");
      for (const auto& [k, v] : p.dict_obj().items) d.dict_obj().set(k, v);
    }
    for (const auto& [k, v] : a.kw) d.dict_obj().set(k, v);
    return d;
  }));
  g.set("strftime_now", Value::func("strftime_now", [](const CallArgs& a) -> Value {
    const Value& f = arg_or_fail(a, 0, "format", "strftime_now");
    if (!f.is_string()) fail("strftime_now() format must be a string");
    std::time_t t = std::time(nullptr);
    std::tm tm{};
    localtime_r(&t, &tm);
    std::string out(256 + f.str().size() * 8, '\0');
    size_t n = std::strftime(out.data(), out.size(), f.str().c_str(), &tm);
    out.resize(n);
    return Value(out);
  }));
}

}  // namespace dsfuse::tmpl
