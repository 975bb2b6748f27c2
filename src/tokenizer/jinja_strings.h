// Python str semantics over UTF-8 (code points, Unicode whitespace and case) for the Jinja
// interpreter: strip/split/title/format and friends.
#pragma once
#include <string>
#include <vector>

#include "tokenizer/jinja_value.h"

namespace dsfuse::tmpl {

// mode: 1 = left, 2 = right, 3 = both. chars == nullptr strips Unicode whitespace.
std::string py_strip(const std::string& s, const std::string* chars, int mode);
std::vector<std::string> py_split_ws(const std::string& s, int64_t maxsplit, bool from_right);
std::vector<std::string> py_split(const std::string& s, const std::string& sep, int64_t maxsplit, bool from_right);
std::vector<std::string> py_splitlines(const std::string& s);
std::string py_replace(const std::string& s, const std::string& old, const std::string& nw, int64_t count);
std::string str_upper(const std::string& s);
std::string str_lower(const std::string& s);
std::string py_title(const std::string& s);       // str.title()
std::string py_capitalize(const std::string& s);  // str.capitalize()
std::string jinja_title(const std::string& s);    // the `title` filter (splits on [-\s({\[<]+)
bool py_is_class(const std::string& s, const std::string& method);  // isdigit, isalpha, ...
std::string py_str_format(const std::string& fmt, const CallArgs& args);      // "{} {name}".format(...)
std::string py_percent_format(const std::string& fmt, const CallArgs& args,
                              bool may_be_unused = false);  // "%s %d" % (...)
std::string html_escape(const std::string& s);                                 // markupsafe.escape
int64_t count_words(const std::string& s);                                     // len(re.findall(r"\w+", s))

}  // namespace dsfuse::tmpl
