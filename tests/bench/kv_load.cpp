// kv-load: a read load for kv-cache, for scripts/bench-state. Several keep-alive connections (one
// request in flight on each, on one epoll thread) send GET /kv/KEY for keys drawn at random: the
// keys `kv-cache --prefill N` fills in (key-0000000000 ... key-<N-1>), and a fixed share of keys
// beyond them, which the cache cannot hold. Every 200 must carry the prefilled value, byte for
// byte. Results are counted per bucket of 100 ms of completion time: requests, hits (200), misses
// (404), errors, the slowest request, and which generation answered (X-Generation).
//
// The load is bounded in time (--duration) and in requests (--max-requests); SIGTERM or SIGINT end
// it early. Either way it stops sending, waits (bounded) for the requests in flight, and writes its
// results to --out as text, one record per line, for awk:
//   start_ms MS           the start, in ms since the epoch (buckets are counted from it)
//   bucket_ms 100
//   B INDEX REQUESTS HITS MISSES ERRORS MAX_US GEN:COUNT,...   one line per bucket with requests
//   L INDEX US:COUNT,...  the bucket's latencies: how many requests took at most US microseconds
//                         (and more than the cell before), in cells about 6% wide
//   T NAME VALUE          totals: requests, hits, misses, errors, wrong_values, connects,
//                         closed_by_server, lat_p50_us, lat_p99_us, lat_p999_us, lat_max_us
//   E REASON... COUNT     errors by reason
// It exits 0 when it ran (errors are reported, not an exit status), 2 on a usage error.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <charconv>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <string_view>
#include <vector>

// GCC 12 reports a false -Wnull-dereference inside CLI11's inlined string handling, as in
// examples/kv-cache/main.cpp.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wnull-dereference"
#include <CLI/CLI.hpp>
#pragma GCC diagnostic pop

#include "cache.h"

namespace {

volatile std::sig_atomic_t g_stop = 0;

std::uint64_t now_ns() {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1'000'000'000U + static_cast<std::uint64_t>(ts.tv_nsec);
}

std::uint64_t epoch_ms() {
  timespec ts{};
  ::clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1000U + static_cast<std::uint64_t>(ts.tv_nsec) / 1'000'000U;
}

struct Options {
  std::uint16_t port = 0;
  std::uint64_t keys = 0;
  std::size_t value_bytes = 64;
  double absent = 0.10;
  int connections = 8;
  double duration_s = 60;
  std::uint64_t max_requests = std::uint64_t{1} << 40;
  double rate = 0;  // Requests per second over all connections; 0: as fast as answers come.
  int timeout_ms = 5000;
  std::uint64_t seed = 1;
  std::string out;
};

constexpr std::uint64_t kBucketMs = 100;

// Latencies in microseconds, in buckets of 1/16 of a power of two (about 6% wide).
class Histogram {
 public:
  void add(std::uint64_t us) {
    ++counts_[index(us)];
    max_ = std::max(max_, us);
    ++n_;
  }
  std::uint64_t percentile(double p) const {
    if (n_ == 0) return 0;
    const auto rank = static_cast<std::uint64_t>(p / 100.0 * static_cast<double>(n_ - 1)) + 1;
    std::uint64_t seen = 0;
    for (std::size_t i = 0; i < counts_.size(); ++i) {
      seen += counts_[i];
      if (seen >= rank) return std::min(upper(i), max_);
    }
    return max_;
  }
  std::uint64_t max() const { return max_; }

  // The cell `us` falls in, and the largest value that cell holds.
  static std::size_t index(std::uint64_t v) {
    if (v < 16) return static_cast<std::size_t>(v);
    const int msb = 63 - __builtin_clzll(v);
    return static_cast<std::size_t>((msb - 3) * 16) + static_cast<std::size_t>((v >> (msb - 4)) & 15);
  }
  static std::uint64_t upper(std::size_t i) {
    if (i < 16) return i;
    const std::size_t msb = i / 16 + 3;
    return ((std::uint64_t{16} | (i % 16)) + 1) << (msb - 4);
  }

 private:
  std::array<std::uint64_t, 64 * 16> counts_{};
  std::uint64_t max_ = 0;
  std::uint64_t n_ = 0;
};

struct Bucket {
  std::uint64_t requests = 0;
  std::uint64_t hits = 0;
  std::uint64_t misses = 0;
  std::uint64_t errors = 0;
  std::uint64_t max_us = 0;
  std::map<std::uint64_t, std::uint64_t> generations;
  std::map<std::size_t, std::uint64_t> latency;  // Histogram cell -> requests.
};

struct Connection {
  int fd = -1;
  bool connecting = false;
  bool busy = false;  // A request is in flight.
  std::string out;
  std::size_t out_done = 0;
  std::string in;
  std::uint64_t sent_ns = 0;
  std::uint64_t key = 0;  // Index of the key asked for.
};

class Load {
 public:
  explicit Load(Options o)
      : opts_(std::move(o)), rng_(opts_.seed), conns_(static_cast<std::size_t>(opts_.connections)) {}

  int run() {
    epoll_ = ::epoll_create1(EPOLL_CLOEXEC);
    if (epoll_ < 0) return fail("epoll_create1");
    start_ns_ = now_ns();
    start_ms_ = epoch_ms();
    const std::uint64_t end_ns = start_ns_ + static_cast<std::uint64_t>(opts_.duration_s * 1e9);
    tokens_ = 1;
    last_refill_ns_ = start_ns_;
    for (auto& c : conns_)
      open(c);
    std::array<epoll_event, 64> events{};
    bool sending = true;
    std::uint64_t drain_deadline = 0;
    for (;;) {
      const std::uint64_t now = now_ns();
      if (sending && (now >= end_ns || started_ >= opts_.max_requests || g_stop != 0)) {
        sending = false;
        drain_deadline = now + static_cast<std::uint64_t>(opts_.timeout_ms) * 1'000'000U;
      }
      if (!sending && (in_flight() == 0 || now >= drain_deadline)) break;
      expire(now);
      if (sending) send_some(now);
      // A short wait, so that the rate's tokens and the deadlines are looked at every millisecond.
      const int n = ::epoll_wait(epoll_, events.data(), static_cast<int>(events.size()), 1);
      if (n < 0 && errno != EINTR) return fail("epoll_wait");
      for (int i = 0; i < n; ++i)
        on_event(conns_[events[static_cast<std::size_t>(i)].data.u64], events[static_cast<std::size_t>(i)].events);
    }
    for (auto& c : conns_) {
      if (c.busy) error(c, "no answer before the end of the run");
      if (c.fd >= 0) ::close(c.fd);
      c.fd = -1;
    }
    ::close(epoll_);
    return write_out();
  }

 private:
  int fail(const char* what) {
    std::fprintf(stderr, "kv-load: %s: %s\n", what, std::strerror(errno));
    return 1;
  }

  std::size_t in_flight() const {
    return static_cast<std::size_t>(
        std::count_if(conns_.begin(), conns_.end(), [](const Connection& c) { return c.busy; }));
  }

  void open(Connection& c) {
    c = Connection{};
    c.fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c.fd < 0) return;
    const int one = 1;
    ::setsockopt(c.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(opts_.port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(c.fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0 && errno != EINPROGRESS) {
      ++errors_by_reason_[std::string("connect: ") + std::strerror(errno)];
      ::close(c.fd);
      c.fd = -1;
      return;
    }
    c.connecting = true;
    c.sent_ns = now_ns();  // Bounds the connect, as it bounds a request later.
    ++connects_;
    epoll_event ev{};
    ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP;
    ev.data.u64 = static_cast<std::uint64_t>(&c - conns_.data());
    ::epoll_ctl(epoll_, EPOLL_CTL_ADD, c.fd, &ev);
  }

  void reopen(Connection& c) {
    if (c.fd >= 0) ::close(c.fd);  // Closing removes it from the epoll set.
    open(c);
  }

  // Sends a request on every idle connection the rate allows.
  void send_some(std::uint64_t now) {
    if (opts_.rate > 0) {
      // At most 10 ms worth of requests (or one per connection) at once: a stall of the server is
      // not followed by a burst that makes up for it.
      const double burst = std::max(static_cast<double>(conns_.size()), opts_.rate / 100);
      tokens_ = std::min(burst, tokens_ + static_cast<double>(now - last_refill_ns_) * opts_.rate / 1e9);
      last_refill_ns_ = now;
    }
    for (auto& c : conns_) {
      if (c.fd < 0) {
        reopen(c);  // A connect that failed at once: try again (every 2 ms at most).
        continue;
      }
      if (c.busy || c.connecting || started_ >= opts_.max_requests) continue;
      if (opts_.rate > 0) {
        if (tokens_ < 1) return;
        tokens_ -= 1;
      }
      start_request(c, now);
    }
  }

  void start_request(Connection& c, std::uint64_t now) {
    const bool absent = std::uniform_real_distribution<double>(0, 1)(rng_) < opts_.absent;
    c.key = absent ? opts_.keys + std::uniform_int_distribution<std::uint64_t>(0, opts_.keys)(rng_)
                   : std::uniform_int_distribution<std::uint64_t>(0, opts_.keys - 1)(rng_);
    c.out = "GET /kv/" + kv::prefill_key(c.key) + " HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    c.out_done = 0;
    c.in.clear();
    c.busy = true;
    c.sent_ns = now;
    ++started_;
    flush(c);
  }

  void flush(Connection& c) {
    while (c.out_done < c.out.size()) {
      const ssize_t n = ::send(c.fd, c.out.data() + c.out_done, c.out.size() - c.out_done, MSG_NOSIGNAL);
      if (n < 0) {
        if (errno == EAGAIN) return;
        return error(c, std::string("send: ") + std::strerror(errno));
      }
      c.out_done += static_cast<std::size_t>(n);
    }
  }

  void on_event(Connection& c, std::uint32_t events) {
    if (c.fd < 0) return;
    if (c.connecting) {
      int err = 0;
      socklen_t len = sizeof err;
      ::getsockopt(c.fd, SOL_SOCKET, SO_ERROR, &err, &len);
      if (err != 0) {
        ++errors_by_reason_[std::string("connect: ") + std::strerror(err)];
        return reopen(c);
      }
      if ((events & EPOLLOUT) == 0) return;
      c.connecting = false;
      epoll_event ev{};
      ev.events = EPOLLIN | EPOLLRDHUP;
      ev.data.u64 = static_cast<std::uint64_t>(&c - conns_.data());
      ::epoll_ctl(epoll_, EPOLL_CTL_MOD, c.fd, &ev);
      return;
    }
    if (c.busy && c.out_done < c.out.size()) flush(c);
    if ((events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) == 0) return;
    char buf[16384];
    for (;;) {
      const ssize_t n = ::recv(c.fd, buf, sizeof buf, 0);
      if (n > 0) {
        if (!c.busy) return error(c, "bytes nobody asked for");
        c.in.append(buf, static_cast<std::size_t>(n));
        if (!parse(c)) return;
        continue;
      }
      if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
      // The server closed (or reset) the connection: an error only with a request in flight.
      if (c.busy) return error(c, n == 0 ? "closed before the answer" : std::string("recv: ") + std::strerror(errno));
      ++closed_by_server_;
      return reopen(c);
    }
  }

  // Takes a complete answer off c.in, if there is one. Returns false when the connection was
  // closed or replaced meanwhile.
  bool parse(Connection& c) {
    const std::size_t head_end = c.in.find("\r\n\r\n");
    if (head_end == std::string::npos) return true;
    const std::string_view head(c.in.data(), head_end);
    if (head.size() < 12 || !head.starts_with("HTTP/1.1 ")) {
      error(c, "not an HTTP/1.1 answer");
      return false;
    }
    int status = 0;
    std::from_chars(head.data() + 9, head.data() + 12, status);
    std::size_t length = 0;
    bool have_length = false;
    bool close = false;
    std::uint64_t generation = 0;
    for (std::size_t at = head.find("\r\n"); at != std::string_view::npos && at < head.size();) {
      const std::size_t next = head.find("\r\n", at + 2);
      const std::string_view line = head.substr(at + 2, (next == std::string_view::npos ? head.size() : next) - at - 2);
      at = next;
      const std::size_t colon = line.find(':');
      if (colon == std::string_view::npos) continue;
      std::string name(line.substr(0, colon));
      std::transform(name.begin(), name.end(), name.begin(), [](unsigned char ch) { return std::tolower(ch); });
      std::string_view value = line.substr(colon + 1);
      while (!value.empty() && value.front() == ' ')
        value.remove_prefix(1);
      if (name == "content-length") {
        have_length = std::from_chars(value.data(), value.data() + value.size(), length).ec == std::errc();
      } else if (name == "connection") {
        close = value.starts_with("close");
      } else if (name == "x-generation") {
        std::from_chars(value.data(), value.data() + value.size(), generation);
      }
    }
    if (!have_length) {
      error(c, "an answer without Content-Length");
      return false;
    }
    if (c.in.size() < head_end + 4 + length) return true;
    const std::string_view body(c.in.data() + head_end + 4, length);
    const std::uint64_t now = now_ns();
    const std::uint64_t us = (now - c.sent_ns) / 1000;
    Bucket& b = bucket(now);
    ++b.requests;
    b.max_us = std::max(b.max_us, us);
    ++b.generations[generation];
    ++b.latency[Histogram::index(us)];
    latency_.add(us);
    ++completed_;
    bool ok = true;
    if (status == 200 && c.key < opts_.keys) {
      kv::prefill_value(c.key, opts_.value_bytes, expected_);
      if (body == expected_) {
        ++b.hits;
      } else {
        ok = false;
        ++wrong_values_;
        ++errors_by_reason_["a 200 with the wrong value"];
      }
    } else if (status == 404 && body == "not found\n") {
      ++b.misses;
    } else {
      ok = false;
      ++errors_by_reason_[status == 200 ? "a 200 for a key that was never stored" : "status " + std::to_string(status)];
    }
    if (!ok) ++b.errors;
    c.in.erase(0, head_end + 4 + length);
    c.busy = false;
    if (!c.in.empty()) {
      error(c, "bytes after the answer");
      return false;
    }
    if (close) {
      ++closed_by_server_;
      reopen(c);
      return false;
    }
    return true;
  }

  // A request that failed: counted in the bucket of now, and the connection starts over.
  void error(Connection& c, const std::string& why) {
    if (c.busy) {
      Bucket& b = bucket(now_ns());
      ++b.errors;
      ++b.requests;
      ++completed_;
    }
    ++errors_by_reason_[why];
    reopen(c);
  }

  void expire(std::uint64_t now) {
    const auto limit = static_cast<std::uint64_t>(opts_.timeout_ms) * 1'000'000U;
    for (auto& c : conns_) {
      if (c.busy && now - c.sent_ns > limit) error(c, "no answer within --timeout");
      if (c.connecting && now - c.sent_ns > limit) {
        ++errors_by_reason_["connect: no answer within --timeout"];
        reopen(c);
      }
    }
  }

  Bucket& bucket(std::uint64_t now) {
    const std::size_t i = static_cast<std::size_t>((now - start_ns_) / (kBucketMs * 1'000'000U));
    if (i >= buckets_.size()) buckets_.resize(i + 1);
    return buckets_[i];
  }

  int write_out() {
    std::uint64_t requests = 0, hits = 0, misses = 0, errors = 0;
    for (const auto& b : buckets_) {
      requests += b.requests;
      hits += b.hits;
      misses += b.misses;
      errors += b.errors;
    }
    std::string text = "start_ms " + std::to_string(start_ms_) + "\nbucket_ms " + std::to_string(kBucketMs) + "\n";
    for (std::size_t i = 0; i < buckets_.size(); ++i) {
      const Bucket& b = buckets_[i];
      if (b.requests == 0) continue;
      text += "B " + std::to_string(i) + " " + std::to_string(b.requests) + " " + std::to_string(b.hits) + " " +
              std::to_string(b.misses) + " " + std::to_string(b.errors) + " " + std::to_string(b.max_us) + " ";
      std::string gens;
      for (const auto& [g, n] : b.generations)
        gens += (gens.empty() ? "" : ",") + std::to_string(g) + ":" + std::to_string(n);
      text += gens + "\n";
      std::string cells;
      for (const auto& [cell, n] : b.latency)
        cells += (cells.empty() ? "" : ",") + std::to_string(Histogram::upper(cell)) + ":" + std::to_string(n);
      text += "L " + std::to_string(i) + " " + cells + "\n";
    }
    const std::pair<const char*, std::uint64_t> totals[] = {
        {"requests", requests},
        {"hits", hits},
        {"misses", misses},
        {"errors", errors},
        {"wrong_values", wrong_values_},
        {"connects", connects_},
        {"closed_by_server", closed_by_server_},
        {"lat_p50_us", latency_.percentile(50)},
        {"lat_p99_us", latency_.percentile(99)},
        {"lat_p999_us", latency_.percentile(99.9)},
        {"lat_max_us", latency_.max()},
    };
    for (const auto& [name, v] : totals)
      text += std::string("T ") + name + " " + std::to_string(v) + "\n";
    for (const auto& [why, n] : errors_by_reason_)
      text += "E " + why + " " + std::to_string(n) + "\n";
    std::ofstream f(opts_.out);
    f << text;
    f.close();
    if (!f) {
      std::fprintf(stderr, "kv-load: cannot write %s\n", opts_.out.c_str());
      return 1;
    }
    std::printf("kv-load: %llu requests, %llu hits, %llu misses, %llu errors, p99 %llu us, max %llu us\n",
                static_cast<unsigned long long>(requests), static_cast<unsigned long long>(hits),
                static_cast<unsigned long long>(misses), static_cast<unsigned long long>(errors),
                static_cast<unsigned long long>(latency_.percentile(99)),
                static_cast<unsigned long long>(latency_.max()));
    return 0;
  }

  Options opts_;
  std::mt19937_64 rng_;
  std::vector<Connection> conns_;
  int epoll_ = -1;
  std::uint64_t start_ns_ = 0;
  std::uint64_t start_ms_ = 0;
  double tokens_ = 0;
  std::uint64_t last_refill_ns_ = 0;
  std::uint64_t started_ = 0;
  std::uint64_t completed_ = 0;
  std::uint64_t connects_ = 0;
  std::uint64_t closed_by_server_ = 0;
  std::uint64_t wrong_values_ = 0;
  std::vector<Bucket> buckets_;
  Histogram latency_;
  std::string expected_;
  std::map<std::string, std::uint64_t> errors_by_reason_;
};

}  // namespace

int main(int argc, char** argv) {
  Options o;
  CLI::App app{"kv-load: random GETs of kv-cache's prefilled keys (and absent ones), counted per 100 ms."};
  app.add_option("--port", o.port, "Port of kv-cache on 127.0.0.1")->required();
  app.add_option("--keys", o.keys, "Prefilled keys (kv-cache --prefill N)")
      ->required()
      ->check(CLI::Range(1ULL, 1ULL << 32));
  app.add_option("--value-bytes", o.value_bytes, "Size of the prefilled values (--prefill-value-bytes)")
      ->capture_default_str();
  app.add_option("--absent", o.absent, "Share of requests for keys that were never stored")
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
  app.add_option("--connections", o.connections, "Keep-alive connections")
      ->check(CLI::Range(1, 1000))
      ->capture_default_str();
  app.add_option("--duration", o.duration_s, "Seconds at most")->check(CLI::Range(0.1, 3600.0))->capture_default_str();
  app.add_option("--max-requests", o.max_requests, "Requests at most")->capture_default_str();
  app.add_option("--rate", o.rate, "Requests per second over all connections (0: as fast as they are answered)")
      ->check(CLI::Range(0.0, 1e7))
      ->capture_default_str();
  app.add_option("--timeout", o.timeout_ms, "Milliseconds a request may take before it counts as an error")
      ->check(CLI::Range(1, 600'000))
      ->capture_default_str();
  app.add_option("--seed", o.seed, "Seed of the key choice")->capture_default_str();
  app.add_option("--out", o.out, "File for the results")->required();
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }
  // SIGTERM and SIGINT end the run early, with results.
  struct sigaction sa {};
  sa.sa_handler = [](int) { g_stop = 1; };
  ::sigaction(SIGTERM, &sa, nullptr);
  ::sigaction(SIGINT, &sa, nullptr);
  std::signal(SIGPIPE, SIG_IGN);
  return Load(std::move(o)).run();
}
