// Python/Jinja2 semantics of operators, attribute access, filters, tests, methods and globals
// used by the evaluator (jinja_eval.cpp). All failures are dsfuse::Error.
#pragma once
#include <string>
#include <vector>

#include "tokenizer/jinja_value.h"

namespace dsfuse::tmpl {

// An optional call argument that was passed and is neither None nor Undefined.
inline bool given(const Value* v) { return v && !v->is_none() && !v->is_undefined(); }

// Raises the Undefined's message ("'x' is undefined") if v is Undefined.
void check_defined(const Value& v);

Value get_attr(const Value& obj, const std::string& name);  // obj.name (methods first, then keys)
Value get_item(const Value& obj, const Value& key);         // obj[key] (keys first, then methods)
Value slice_value(const Value& obj, const Value& start, const Value& stop, const Value& step);
Value binary_op(const std::string& op, const Value& a, const Value& b, size_t max_size);
bool compare_op(const std::string& op, const Value& a, const Value& b);
bool contains(const Value& container, const Value& item);
std::vector<Value> iterate(const Value& v);  // Python iter(): list items, dict keys, string chars
Value call_value(const Value& f, const CallArgs& args);

bool has_filter(const std::string& name);
bool has_test(const std::string& name);
Value call_filter(const std::string& name, const Value& v, const CallArgs& args);
bool call_test(const std::string& name, const Value& v, const CallArgs& args);

// Globals: range, dict, strftime_now (namespace and raise_exception belong to the evaluator,
// jinja_eval.cpp, which tracks namespaces and keeps raise_exception messages verbatim).
void add_globals(DictObj& globals, size_t max_size);

}  // namespace dsfuse::tmpl
