// Values of the Jinja interpreter (dsfuse::tmpl), modelled on the Python objects Jinja2 works with:
// Undefined, None, bool, int, float, str, list/tuple, dict/namespace and callables. Lists and dicts
// are shared (reference semantics, like Python); strings are UTF-8 and measured in code points.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace dsfuse::tmpl {

class Value;

struct CallArgs {
  std::vector<Value> pos;
  std::vector<std::pair<std::string, Value>> kw;
  // Positional i, else keyword `name`, else nullptr.
  const Value* get(size_t i, std::string_view name) const;
};

using Func = std::function<Value(const CallArgs&)>;

// Lists/dicts may nest at most this deep: deeper values (built by a template in a loop, or passed
// in as JSON) would overflow the stack of the recursive printers, comparisons and destructors.
constexpr int kMaxValueDepth = 512;

struct ListObj {
  std::vector<Value> items;
  bool tuple = false;
  int depth = 1;  // nesting height, see kMaxValueDepth
};

struct DictObj {
  std::vector<std::pair<std::string, Value>> items;  // insertion order, like a Python dict
  bool is_namespace = false;
  int depth = 1;  // nesting height (an upper bound), see kMaxValueDepth
  const Value* find(std::string_view key) const;
  Value* find(std::string_view key);
  void set(const std::string& key, Value v);
  void append(std::string key, Value v);  // no duplicate check (caller guarantees a new key)
};

struct FuncObj {
  std::string name;
  Func fn;
};

class Value {
 public:
  enum class Kind : uint8_t { Undefined, None, Bool, Int, Float, String, List, Dict, Func };

  Value() = default;  // Undefined
  Value(bool b) : kind_(Kind::Bool), b_(b) {}
  Value(int v) : kind_(Kind::Int), i_(v) {}
  Value(int64_t v) : kind_(Kind::Int), i_(v) {}
  Value(double v) : kind_(Kind::Float), f_(v) {}
  Value(std::string s) : kind_(Kind::String), s_(std::move(s)) {}
  Value(const char* s) : kind_(Kind::String), s_(s) {}

  static Value undefined(std::string hint = {});
  static Value none();
  static Value list(std::vector<Value> items = {}, bool tuple = false);
  static Value dict();
  static Value ns();  // namespace(): a dict whose attributes can be assigned with {% set ns.x = ... %}
  static Value func(std::string name, Func fn);
  static Value from_json(const nlohmann::ordered_json& j);

  Kind kind() const { return kind_; }
  bool is_undefined() const { return kind_ == Kind::Undefined; }
  bool is_none() const { return kind_ == Kind::None; }
  bool is_bool() const { return kind_ == Kind::Bool; }
  bool is_int() const { return kind_ == Kind::Int || kind_ == Kind::Bool; }  // Python: bool is an int
  bool is_number() const { return kind_ == Kind::Int || kind_ == Kind::Float || kind_ == Kind::Bool; }
  bool is_string() const { return kind_ == Kind::String; }
  bool is_list() const { return kind_ == Kind::List; }
  bool is_tuple() const { return kind_ == Kind::List && list_->tuple; }
  bool is_dict() const { return kind_ == Kind::Dict; }
  bool is_namespace() const { return kind_ == Kind::Dict && dict_->is_namespace; }
  bool is_func() const { return kind_ == Kind::Func; }

  bool as_bool() const { return b_; }
  int64_t as_int() const { return kind_ == Kind::Bool ? (b_ ? 1 : 0) : i_; }
  double as_double() const { return kind_ == Kind::Float ? f_ : static_cast<double>(as_int()); }
  const std::string& str() const { return s_; }  // the string; for Undefined, the name that was missing
  std::vector<Value>& items() const { return list_->items; }
  DictObj& dict_obj() const { return *dict_; }
  const FuncObj& func_obj() const { return *func_; }
  int nest_depth() const;  // 0 for scalars, 1 + deepest child for lists/dicts

  bool truthy() const;
  std::string to_str() const;  // Python str(): what {{ x }} prints
  std::string repr() const;    // Python repr()
  std::string type_name() const;
  nlohmann::ordered_json to_json() const;  // Undefined/functions throw

 private:
  Kind kind_ = Kind::Undefined;
  bool b_ = false;
  int64_t i_ = 0;
  double f_ = 0;
  std::string s_;
  std::shared_ptr<ListObj> list_;
  std::shared_ptr<DictObj> dict_;
  std::shared_ptr<FuncObj> func_;
};

bool values_equal(const Value& a, const Value& b);
// Python ordering (<): numbers, strings, lists/tuples lexicographically. Throws for other mixes.
bool value_less(const Value& a, const Value& b);

// Python float repr: shortest round-trip digits, "1.0", "1e-05", "1e+16", "inf", "nan".
std::string py_float_repr(double d);

struct JsonDumpOptions {
  int indent = -1;  // -1: no newlines (", " and ": ")
  bool sort_keys = false;
  bool ensure_ascii = false;
  std::string item_sep;  // empty: Python's default for the indent mode
  std::string key_sep;
};
// json.dumps as Hugging Face's tojson filter calls it (ensure_ascii=False by default).
std::string json_dumps(const Value& v, const JsonDumpOptions& opt = {});

// UTF-8 helpers (invalid bytes are treated as U+FFFD-like single units, never crash).
std::u32string utf8_decode(std::string_view s);
std::string utf8_encode(std::u32string_view s);
bool py_isspace(char32_t c);

}  // namespace dsfuse::tmpl
