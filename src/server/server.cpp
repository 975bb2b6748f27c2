#include "server/server.h"

#include <httplib.h>
#include <sys/socket.h>

#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>

#include "core/log.h"

namespace dsfuse::server {

using json = nlohmann::json;
using clock_type = std::chrono::steady_clock;

namespace {

// Events of one request, handed from the engine thread to the HTTP thread.
struct EventQueue {
  std::mutex mu;
  std::condition_variable cv;
  std::deque<EngineEvent> events;
  std::deque<sampling::SampleResult> samples;  // owned copies behind events' piece.sample
  bool finished = false;

  void push(const EngineEvent& ev) {
    std::lock_guard<std::mutex> lk(mu);
    events.push_back(ev);
    if (ev.piece.sample) {
      samples.push_back(*ev.piece.sample);
      events.back().piece.sample = &samples.back();
    }
    cv.notify_one();
  }
  // Waits up to `ms` for the next event.
  bool pop(EngineEvent& out, int ms) {
    std::unique_lock<std::mutex> lk(mu);
    if (!cv.wait_for(lk, std::chrono::milliseconds(ms), [&] { return !events.empty(); })) return false;
    out = std::move(events.front());
    events.pop_front();
    return true;
  }
};

void send_error(httplib::Response& res, int status, const std::string& message, const std::string& type,
                const std::string& param = {}, const std::string& code = {}) {
  res.status = status;
  res.set_content(error_json(message, type, param, code).dump(), "application/json");
}

// Per-request latency bookkeeping for the TTFT / ITL histograms.
struct Timing {
  clock_type::time_point start = clock_type::now(), last{};
  bool first = true;
  void token(Metrics& m) {
    const auto now = clock_type::now();
    if (first) m.ttft.observe(std::chrono::duration<double>(now - start).count());
    else m.itl.observe(std::chrono::duration<double>(now - last).count());
    first = false;
    last = now;
  }
};

}  // namespace

Server::Server(Engine& engine, ModelContext model, ServerOptions opts)
    : engine_(engine), model_(std::move(model)), opts_(std::move(opts)), http_(std::make_unique<httplib::Server>()) {
  const int n = std::max(4, opts_.http_threads);
  http_->new_task_queue = [n] { return new httplib::ThreadPool(static_cast<size_t>(n)); };
  // Remember the listening socket (httplib listens with a backlog of 5; bind() enlarges it).
  http_->set_socket_options([this](int sock) {
    int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
    listen_fd_ = sock;
  });
  routes();
}

Server::~Server() { stop(0); }

int Server::bind() {
  if (opts_.port == 0) port_ = http_->bind_to_any_port(opts_.host);
  else port_ = http_->bind_to_port(opts_.host, opts_.port) ? opts_.port : -1;
  DSFUSE_CHECK(port_ > 0, "cannot listen on ", opts_.host, ":", opts_.port, " (address in use or not permitted)");
  if (listen_fd_ >= 0) ::listen(listen_fd_, SOMAXCONN);  // many clients connecting at once must not be dropped
  return port_;
}

void Server::serve() { http_->listen_after_bind(); }

void Server::stop(double drain_seconds) {
  if (!accepting_.exchange(false) && !http_->is_running()) return;
  engine_.shutdown(drain_seconds);  // finishes or cancels in-flight requests: their handlers return
  http_->stop();
}

void Server::routes() {
  auto& s = *http_;
  s.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
    if (!opts_.api_key.empty() && req.path.rfind("/v1/", 0) == 0) {
      const std::string want = "Bearer " + opts_.api_key;
      if (req.get_header_value("Authorization") != want) {
        send_error(res, 401, "Incorrect API key provided (send \"Authorization: Bearer <key>\")", "invalid_request_error",
                   {}, "invalid_api_key");
        return httplib::Server::HandlerResponse::Handled;
      }
    }
    return httplib::Server::HandlerResponse::Unhandled;
  });
  s.set_error_handler([](const httplib::Request& req, httplib::Response& res) {
    if (res.status == 404 && res.body.empty())
      send_error(res, 404, "no route " + req.method + " " + req.path, "invalid_request_error", {}, "not_found");
  });
  s.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
    std::string what = "internal error";
    try {
      std::rethrow_exception(ep);
    } catch (const std::exception& e) {
      what = e.what();
    }
    send_error(res, 500, what, "server_error");
  });

  s.Get("/health", [this](const httplib::Request&, httplib::Response& res) {
    res.status = accepting_ ? 200 : 503;
    res.set_content(accepting_ ? R"({"status":"ok"})" : R"({"status":"shutting down"})", "application/json");
  });
  s.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
    res.set_content(metrics_.render(engine_.stats()), "text/plain; version=0.0.4");
  });
  s.Get("/v1/models", [this](const httplib::Request&, httplib::Response& res) {
    json m = {{"id", model_.name}, {"object", "model"}, {"created", 0}, {"owned_by", "dsfuse"},
              {"max_model_len", model_.max_context}};
    res.set_content(json{{"object", "list"}, {"data", json::array({m})}}.dump(), "application/json");
  });
  s.Get("/", [](const httplib::Request&, httplib::Response& res) { res.set_content(web_page(), "text/html; charset=utf-8"); });

  auto generate = [this](bool chat) {
    return [this, chat](const httplib::Request& req, httplib::Response& res) {
      if (!accepting_) {
        send_error(res, 503, "the server is shutting down", "server_error");
        metrics_.request_done(503);
        return;
      }
      auto api = std::make_shared<ApiRequest>();
      try {
        *api = parse_request(req.body, chat, model_);
      } catch (const ApiError& e) {
        send_error(res, e.status, e.what(), e.type, e.param, e.code);
        metrics_.request_done(e.status);
        return;
      }
      const std::string id = (chat ? "chatcmpl-" : "cmpl-") + std::to_string(next_id_++);
      const int64_t created = std::chrono::duration_cast<std::chrono::seconds>(
                                  std::chrono::system_clock::now().time_since_epoch()).count();
      auto q = std::make_shared<EventQueue>();
      uint64_t rid = 0;
      try {
        rid = engine_.submit(api->engine, [q](const EngineEvent& ev) { q->push(ev); });
      } catch (const QueueFull& e) {
        res.set_header("Retry-After", "1");
        send_error(res, accepting_ ? 429 : 503, e.what(), accepting_ ? "rate_limit_exceeded" : "server_error");
        metrics_.request_done(res.status);
        return;
      } catch (const Error& e) {
        send_error(res, 400, e.what(), "invalid_request_error");
        metrics_.request_done(400);
        return;
      }
      auto resp = std::make_shared<Response>(*api, model_, id, created);
      auto timing = std::make_shared<Timing>();
      auto finish_metrics = [this, timing](const EngineEvent& ev) {
        metrics_.tokens(ev.prompt_tokens, ev.completion_tokens);
        metrics_.e2e.observe(std::chrono::duration<double>(clock_type::now() - timing->start).count());
      };

      if (!api->stream) {
        // A request that ends within a second gets a plain response (a 500 on engine errors).
        EngineEvent ev;
        bool finished = false;
        const auto until = clock_type::now() + std::chrono::seconds(1);
        while (!finished && clock_type::now() < until) {
          if (!q->pop(ev, 50)) continue;
          if (ev.piece.token >= 0) timing->token(metrics_);
          resp->on_event(ev);
          finished = ev.finished;
        }
        if (finished) {
          finish_metrics(ev);
          if (!ev.error.empty()) {
            send_error(res, 500, ev.error, "server_error");
            metrics_.request_done(500);
            return;
          }
          res.set_content(resp->final_json().dump(-1, ' ', false, json::error_handler_t::replace), "application/json");
          metrics_.request_done(200);
          return;
        }
        // Longer ones: a chunked JSON body that sends a space (leading JSON whitespace) every second while the
        // request runs, so a client that went away is noticed by the failed write and the request cancelled at
        // once, as for streams. (An engine error after this point is an OpenAI error object with status 200.)
        // ("; charset=utf-8" keeps cpp-httplib from gzipping the body, which would hold the spaces back.)
        res.set_chunked_content_provider(
            "application/json; charset=utf-8",
            [this, q, resp, timing, rid, finish_metrics](size_t, httplib::DataSink& sink) {
              const auto t0 = clock_type::now();
              EngineEvent e;
              for (;;) {
                if (q->pop(e, 100)) {
                  if (e.piece.token >= 0) timing->token(metrics_);
                  resp->on_event(e);
                  if (e.finished) break;
                }
                if (clock_type::now() - t0 >= std::chrono::seconds(1)) {  // still running: keep-alive
                  if (!sink.write(" ", 1)) {
                    engine_.cancel(rid);
                    return false;
                  }
                  return true;
                }
              }
              finish_metrics(e);
              const std::string body =
                  e.error.empty() ? resp->final_json().dump(-1, ' ', false, json::error_handler_t::replace)
                                  : error_json(e.error, "server_error", {}, {}).dump();
              metrics_.request_done(e.error.empty() ? 200 : 500);
              if (!sink.write(body.data(), body.size())) return false;
              sink.done();
              return true;
            },
            [this, rid](bool success) {
              if (!success) engine_.cancel(rid);  // connection closed before the end
            });
        return;
      }

      // SSE: one `data: {chunk}` per event, then `data: [DONE]`. A client that goes away cancels the
      // request at once (its KV blocks are freed at the engine's next step).
      res.set_header("Cache-Control", "no-cache");
      res.set_header("X-Accel-Buffering", "no");
      metrics_.request_done(200);
      res.set_chunked_content_provider(
          "text/event-stream",
          [this, q, resp, timing, rid, finish_metrics](size_t, httplib::DataSink& sink) {
            EngineEvent ev;
            while (!q->pop(ev, 100)) {
              if (!sink.is_writable()) {
                engine_.cancel(rid);
                return false;
              }
            }
            if (ev.piece.token >= 0) timing->token(metrics_);
            for (const std::string& c : resp->on_event(ev)) {
              const std::string line = "data: " + c + "\n\n";
              if (!sink.write(line.data(), line.size())) {
                engine_.cancel(rid);
                return false;
              }
            }
            if (ev.finished) {
              finish_metrics(ev);
              if (!ev.error.empty()) {
                const std::string line = "data: " + error_json(ev.error, "server_error", {}, {}).dump() + "\n\n";
                sink.write(line.data(), line.size());
              }
              static const std::string done = "data: [DONE]\n\n";
              sink.write(done.data(), done.size());
              sink.done();
            }
            return true;
          },
          [this, rid](bool success) {
            if (!success) engine_.cancel(rid);  // connection closed before the end
          });
    };
  };
  s.Post("/v1/chat/completions", generate(true));
  s.Post("/v1/completions", generate(false));
}

}  // namespace dsfuse::server
