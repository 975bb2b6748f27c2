// The OpenAI-compatible HTTP server: routes, SSE streaming, auth, metrics, graceful shutdown. It talks to
// the engine only through submit()/cancel() and per-request event queues.
#pragma once
#include <atomic>
#include <memory>
#include <string>

#include "engine/engine.h"
#include "server/metrics.h"
#include "server/openai.h"

namespace httplib {
class Server;
}

namespace dsfuse::server {

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8000;  // 0: any free port (see Server::port())
  std::string api_key;  // non-empty: /v1/* needs "Authorization: Bearer <key>"
  int http_threads = 96;  // each streaming request holds one
};

class Server {
 public:
  Server(Engine& engine, ModelContext model, ServerOptions opts);
  ~Server();
  // Binds (throws Error naming host:port when it cannot); returns the bound port.
  int bind();
  void serve();  // blocks until stop()
  // Stops accepting generation requests (503), lets the engine drain for `drain_seconds`, then stops the
  // listener. Safe to call from any thread (e.g. a signal watcher).
  void stop(double drain_seconds = 5);
  int port() const { return port_; }
  Metrics& metrics() { return metrics_; }

 private:
  void routes();
  Engine& engine_;
  ModelContext model_;
  ServerOptions opts_;
  Metrics metrics_;
  std::unique_ptr<httplib::Server> http_;
  std::atomic<bool> accepting_{true};
  std::atomic<uint64_t> next_id_{1};
  int port_ = 0;
  int listen_fd_ = -1;
};

// The static chat page served at "/".
const char* web_page();

}  // namespace dsfuse::server
