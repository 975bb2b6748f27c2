#include "tokenizer/jinja_strings.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <utf8proc.h>

#include "core/error.h"

namespace dsfuse::tmpl {

namespace {

bool is_cased(char32_t c) {
  auto cat = utf8proc_category(static_cast<utf8proc_int32_t>(c));
  return cat == UTF8PROC_CATEGORY_LU || cat == UTF8PROC_CATEGORY_LL || cat == UTF8PROC_CATEGORY_LT;
}
bool is_alpha(char32_t c) {
  auto cat = utf8proc_category(static_cast<utf8proc_int32_t>(c));
  return cat >= UTF8PROC_CATEGORY_LU && cat <= UTF8PROC_CATEGORY_LO;
}
bool is_digit_cp(char32_t c) {
  return utf8proc_category(static_cast<utf8proc_int32_t>(c)) == UTF8PROC_CATEGORY_ND;
}
bool is_numeric_cp(char32_t c) {
  auto cat = utf8proc_category(static_cast<utf8proc_int32_t>(c));
  return cat == UTF8PROC_CATEGORY_ND || cat == UTF8PROC_CATEGORY_NL || cat == UTF8PROC_CATEGORY_NO;
}
char32_t up(char32_t c) { return static_cast<char32_t>(utf8proc_toupper(static_cast<utf8proc_int32_t>(c))); }
char32_t low(char32_t c) { return static_cast<char32_t>(utf8proc_tolower(static_cast<utf8proc_int32_t>(c))); }
char32_t titlec(char32_t c) { return static_cast<char32_t>(utf8proc_totitle(static_cast<utf8proc_int32_t>(c))); }

}  // namespace

std::string py_strip(const std::string& s, const std::string* chars, int mode) {
  std::u32string u = utf8_decode(s);
  std::u32string set = chars ? utf8_decode(*chars) : std::u32string();
  auto strip_it = [&](char32_t c) { return chars ? set.find(c) != std::u32string::npos : py_isspace(c); };
  size_t b = 0, e = u.size();
  if (mode & 1)
    while (b < e && strip_it(u[b])) ++b;
  if (mode & 2)
    while (e > b && strip_it(u[e - 1])) --e;
  return utf8_encode(u.substr(b, e - b));
}

std::vector<std::string> py_split_ws(const std::string& s, int64_t maxsplit, bool from_right) {
  std::u32string u = utf8_decode(s);
  std::vector<std::string> out;
  if (!from_right) {
    size_t i = 0, n = u.size();
    while (true) {
      while (i < n && py_isspace(u[i])) ++i;
      if (i >= n) break;
      if (maxsplit >= 0 && static_cast<int64_t>(out.size()) >= maxsplit) {
        size_t e = n;
        while (e > i && py_isspace(u[e - 1])) --e;
        out.push_back(utf8_encode(u.substr(i, e - i)));
        break;
      }
      size_t j = i;
      while (j < n && !py_isspace(u[j])) ++j;
      out.push_back(utf8_encode(u.substr(i, j - i)));
      i = j;
    }
    return out;
  }
  size_t e = u.size();
  while (true) {
    while (e > 0 && py_isspace(u[e - 1])) --e;
    if (e == 0) break;
    if (maxsplit >= 0 && static_cast<int64_t>(out.size()) >= maxsplit) {
      size_t b = 0;
      while (b < e && py_isspace(u[b])) ++b;
      out.push_back(utf8_encode(u.substr(b, e - b)));
      break;
    }
    size_t j = e;
    while (j > 0 && !py_isspace(u[j - 1])) --j;
    out.push_back(utf8_encode(u.substr(j, e - j)));
    e = j;
  }
  std::reverse(out.begin(), out.end());
  return out;
}

std::vector<std::string> py_split(const std::string& s, const std::string& sep, int64_t maxsplit, bool from_right) {
  std::vector<std::string> out;
  if (!from_right) {
    size_t pos = 0;
    while (maxsplit < 0 || static_cast<int64_t>(out.size()) < maxsplit) {
      size_t f = s.find(sep, pos);
      if (f == std::string::npos) break;
      out.push_back(s.substr(pos, f - pos));
      pos = f + sep.size();
    }
    out.push_back(s.substr(pos));
    return out;
  }
  size_t end = s.size();
  while (maxsplit < 0 || static_cast<int64_t>(out.size()) < maxsplit) {
    if (end < sep.size()) break;
    size_t f = s.rfind(sep, end - sep.size());
    if (f == std::string::npos) break;
    out.push_back(s.substr(f + sep.size(), end - f - sep.size()));
    end = f;
  }
  out.push_back(s.substr(0, end));
  std::reverse(out.begin(), out.end());
  return out;
}

std::vector<std::string> py_splitlines(const std::string& s) {
  std::u32string u = utf8_decode(s);
  std::vector<std::string> out;
  size_t b = 0, i = 0;
  auto is_break = [](char32_t c) {
    return c == '\n' || c == '\r' || c == 0x0b || c == 0x0c || c == 0x1c || c == 0x1d || c == 0x1e || c == 0x85 ||
           c == 0x2028 || c == 0x2029;
  };
  while (i < u.size()) {
    if (is_break(u[i])) {
      out.push_back(utf8_encode(u.substr(b, i - b)));
      if (u[i] == '\r' && i + 1 < u.size() && u[i + 1] == '\n') ++i;
      b = ++i;
    } else {
      ++i;
    }
  }
  if (b < u.size()) out.push_back(utf8_encode(u.substr(b)));
  return out;
}

std::string py_replace(const std::string& s, const std::string& old, const std::string& nw, int64_t count) {
  if (old.empty()) {  // Python inserts `nw` between every character (and at both ends)
    std::u32string u = utf8_decode(s);
    std::string out;
    int64_t n = 0;
    for (size_t i = 0; i <= u.size(); ++i) {
      if (count < 0 || n < count) {
        out += nw;
        ++n;
      }
      if (i < u.size()) out += utf8_encode(u.substr(i, 1));
    }
    return out;
  }
  std::string out;
  size_t pos = 0;
  int64_t n = 0;
  while (count < 0 || n < count) {
    size_t f = s.find(old, pos);
    if (f == std::string::npos) break;
    out.append(s, pos, f - pos);
    out += nw;
    pos = f + old.size();
    ++n;
  }
  out.append(s, pos, std::string::npos);
  return out;
}

std::string str_upper(const std::string& s) {
  std::u32string u = utf8_decode(s);
  for (auto& c : u) c = up(c);
  return utf8_encode(u);
}

std::string str_lower(const std::string& s) {
  std::u32string u = utf8_decode(s);
  for (auto& c : u) c = low(c);
  return utf8_encode(u);
}

std::string py_title(const std::string& s) {
  std::u32string u = utf8_decode(s);
  bool prev_cased = false;
  for (auto& c : u) {
    if (is_cased(c)) {
      c = prev_cased ? low(c) : titlec(c);
      prev_cased = true;
    } else {
      prev_cased = false;
    }
  }
  return utf8_encode(u);
}

std::string py_capitalize(const std::string& s) {
  std::u32string u = utf8_decode(s);
  for (size_t i = 0; i < u.size(); ++i) u[i] = i == 0 ? titlec(u[i]) : low(u[i]);
  return utf8_encode(u);
}

std::string jinja_title(const std::string& s) {
  // "".join(item[0].upper() + item[1:].lower() for item in re.split(r"([-\s({\[<]+)", s) if item)
  std::u32string u = utf8_decode(s), out;
  auto is_sep = [](char32_t c) { return c == '-' || py_isspace(c) || c == '(' || c == '{' || c == '[' || c == '<'; };
  size_t i = 0;
  while (i < u.size()) {
    size_t j = i;
    bool sep = is_sep(u[i]);
    while (j < u.size() && is_sep(u[j]) == sep) ++j;
    for (size_t k = i; k < j; ++k) out += k == i ? up(u[k]) : low(u[k]);
    i = j;
  }
  return utf8_encode(out);
}

bool py_is_class(const std::string& s, const std::string& m) {
  std::u32string u = utf8_decode(s);
  if (u.empty()) return false;
  if (m == "isupper" || m == "islower") {
    bool any_cased = false;
    for (char32_t c : u) {
      if (!is_cased(c)) continue;
      any_cased = true;
      if (m == "isupper" ? low(c) == c && up(c) != c : up(c) == c && low(c) != c) return false;
    }
    return any_cased;
  }
  for (char32_t c : u) {
    bool ok = m == "isdigit" || m == "isdecimal" ? is_digit_cp(c)
              : m == "isnumeric"                 ? is_numeric_cp(c)
              : m == "isalpha"                   ? is_alpha(c)
              : m == "isalnum"                   ? is_alpha(c) || is_numeric_cp(c)
                                                 : py_isspace(c);
    if (!ok) return false;
  }
  return true;
}

std::string py_str_format(const std::string& fmt, const CallArgs& args) {
  std::string out;
  size_t auto_idx = 0;
  for (size_t i = 0; i < fmt.size(); ++i) {
    char c = fmt[i];
    if (c == '}') {
      if (i + 1 < fmt.size() && fmt[i + 1] == '}') {
        out += '}';
        ++i;
        continue;
      }
      fail("str.format(): single '}' encountered in format string");
    }
    if (c != '{') {
      out += c;
      continue;
    }
    if (i + 1 < fmt.size() && fmt[i + 1] == '{') {
      out += '{';
      ++i;
      continue;
    }
    size_t e = fmt.find('}', i);
    if (e == std::string::npos) fail("str.format(): single '{' encountered in format string");
    std::string field = fmt.substr(i + 1, e - i - 1);
    i = e;
    char conv = 0;
    if (size_t bang = field.find('!'); bang != std::string::npos) {
      conv = bang + 1 < field.size() ? field[bang + 1] : 0;
      field.resize(bang);
    }
    if (field.find(':') != std::string::npos) fail("str.format(): format specs are not supported");
    const Value* v = nullptr;
    if (field.empty()) {
      v = auto_idx < args.pos.size() ? &args.pos[auto_idx] : nullptr;
      ++auto_idx;
    } else if (std::all_of(field.begin(), field.end(), [](char d) { return d >= '0' && d <= '9'; })) {
      size_t k = std::stoul(field.substr(0, 9));
      v = k < args.pos.size() ? &args.pos[k] : nullptr;
    } else {
      for (const auto& [k, val] : args.kw)
        if (k == field) v = &val;
    }
    if (!v) fail(cat("str.format(): no argument for field '{", field, "}'"));
    out += conv == 'r' ? v->repr() : v->to_str();
  }
  return out;
}

std::string py_percent_format(const std::string& fmt, const CallArgs& args, bool may_be_unused) {
  std::string out;
  size_t k = 0;
  auto next_arg = [&]() -> const Value& {
    if (k >= args.pos.size()) fail("not enough arguments for format string");
    return args.pos[k++];
  };
  for (size_t i = 0; i < fmt.size(); ++i) {
    if (fmt[i] != '%') {
      out += fmt[i];
      continue;
    }
    if (++i >= fmt.size()) fail("incomplete format");
    int prec = -1;
    if (fmt[i] == '.') {
      prec = 0;
      while (++i < fmt.size() && fmt[i] >= '0' && fmt[i] <= '9') prec = std::min(prec * 10 + (fmt[i] - '0'), 100);
      if (i >= fmt.size()) fail("incomplete format");
    }
    char c = fmt[i];
    if (c == '%') {
      out += '%';
    } else if (c == 's') {
      out += next_arg().to_str();
    } else if (c == 'r') {
      out += next_arg().repr();
    } else if (c == 'd' || c == 'i') {
      const Value& v = next_arg();
      if (!v.is_number()) fail(cat("%d format: a real number is required, not ", v.type_name()));
      out += v.is_int() ? std::to_string(v.as_int()) : std::to_string(static_cast<int64_t>(std::trunc(v.as_double())));
    } else if (c == 'f') {
      const Value& v = next_arg();
      if (!v.is_number()) fail(cat("%f format: a real number is required, not ", v.type_name()));
      char buf[160];
      std::snprintf(buf, sizeof buf, "%.*f", prec < 0 ? 6 : prec, v.as_double());
      out += buf;
    } else {
      fail(cat("unsupported format character '", std::string(1, c), "'"));
    }
  }
  if (k < args.pos.size() && !(may_be_unused && k == 0)) fail("not all arguments converted during string formatting");
  return out;
}

std::string html_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&#34;"; break;
      case '\'': out += "&#39;"; break;
      default: out += c;
    }
  }
  return out;
}

int64_t count_words(const std::string& s) {
  int64_t n = 0;
  bool in_word = false;
  for (char32_t c : utf8_decode(s)) {
    bool w = c == '_' || is_alpha(c) || is_numeric_cp(c);
    if (w && !in_word) ++n;
    in_word = w;
  }
  return n;
}

}  // namespace dsfuse::tmpl
