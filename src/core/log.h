// Structured, quiet-by-default logging: `level=info msg="..." key=value` lines on stderr.
// DSFUSE_LOG=debug|info|warn|error sets the threshold (default warn).
#pragma once
#include <string>

namespace dsfuse::log {

enum class Level { Debug = 0, Info = 1, Warn = 2, Error = 3 };

Level threshold();
void set_threshold(Level l);
void write(Level l, const std::string& msg);

inline void debug(const std::string& m) { write(Level::Debug, m); }
inline void info(const std::string& m) { write(Level::Info, m); }
inline void warn(const std::string& m) { write(Level::Warn, m); }
inline void error(const std::string& m) { write(Level::Error, m); }

// A progress line on stderr for long work (loading, quantizing, training), shown only when stderr is a
// terminal or DSFUSE_PROGRESS=1; `done`/`total` in arbitrary units.
class Progress {
 public:
  Progress(std::string what, double total);
  void update(double done);
  void finish();
  ~Progress();

 private:
  std::string what_;
  double total_;
  bool enabled_;
  bool finished_ = false;
  int last_pct_ = -1;
};

}  // namespace dsfuse::log
