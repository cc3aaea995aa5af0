// reload-bench: the configuration reload of a running kv-cache, for scripts/bench-config. kv-cache
// names in every answer the configuration version it served under (X-Config-Version).
//
//   reload-bench live --port P --file F --control C --mode watch|reload --saves N
//     For each of N saves, writes a new configuration next to F and renames it onto F, then (mode
//     reload) runs `hotrestart reload`; meanwhile one keep-alive connection asks GET /kv/probe
//     again and again. The time from the rename to the first answer under the new version is one
//     sample. Baselines from the same run: the time of one such GET, and of `hotrestart status`.
//   reload-bench load --port P --file F --control C --reloads N --connections K --keys M
//     K threads each read random keys of kv-cache's --prefill on a keep-alive connection of their
//     own, while N reloads are made one after another (`hotrestart reload`). Counts failed
//     requests (an exchange that failed, or an answer other than 200), and answers whose
//     configuration version is older than one already seen on the same connection.
//
// Prints "RESULT key value" lines; exit status 0, 1 when a request failed or a version went back
// (load) or a save was never seen (live), 2 on a usage error.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

double ms_since(Clock::time_point t) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t).count();
}

// One keep-alive connection to 127.0.0.1:PORT; GET only.
class Client {
 public:
  explicit Client(std::uint16_t port) : port_(port) {}
  ~Client() {
    if (fd_ >= 0) ::close(fd_);
  }
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  struct Answer {
    int status = 0;             // 0: the exchange failed.
    std::int64_t version = -1;  // X-Config-Version.
    bool reconnected = false;   // This answer came on a new connection.
  };

  Answer get(const std::string& path) {
    Answer a;
    if (fd_ < 0) {
      if (!connect()) return a;
      a.reconnected = true;
    }
    const std::string request = "GET " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    if (::send(fd_, request.data(), request.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(request.size())) {
      drop();
      return a;
    }
    std::string in;
    std::size_t header_end = std::string::npos;
    std::size_t length = 0;
    bool closing = false;
    while (header_end == std::string::npos || in.size() < header_end + 4 + length) {
      pollfd p{fd_, POLLIN, 0};
      char buf[8192];
      if (::poll(&p, 1, 5000) <= 0) {
        drop();
        return a;
      }
      const ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
      if (n <= 0) {
        drop();
        return a;
      }
      in.append(buf, static_cast<std::size_t>(n));
      if (header_end == std::string::npos && (header_end = in.find("\r\n\r\n")) != std::string::npos) {
        std::string head = in.substr(0, header_end);
        for (char& c : head)
          c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
        a.status = std::atoi(head.c_str() + 9);
        if (const auto cl = head.find("content-length:"); cl != std::string::npos)
          length = std::strtoul(head.c_str() + cl + 15, nullptr, 10);
        if (const auto cv = head.find("x-config-version:"); cv != std::string::npos)
          a.version = std::strtoll(head.c_str() + cv + 17, nullptr, 10);
        closing = head.find("connection: close") != std::string::npos;
      }
    }
    if (closing) drop();
    return a;
  }

 private:
  bool connect() {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port_);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd_ < 0 || ::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
      drop();
      return false;
    }
    const int one = 1;
    ::setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return true;
  }
  void drop() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

  std::uint16_t port_;
  int fd_ = -1;
};

// Runs a command and waits for it; its exit status (or -1).
int run(const std::vector<std::string>& argv) {
  std::vector<char*> args;
  for (const auto& a : argv)
    args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  const pid_t pid = ::fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    // Its answer is not what is measured.
    std::freopen("/dev/null", "w", stdout);
    ::execvp(args[0], args.data());
    ::_exit(127);
  }
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

// Writes `text` beside `file` and renames it onto `file`, as an editor saves; returns the time of
// the rename.
Clock::time_point save(const std::string& file, const std::string& text) {
  const std::string temp = file + ".bench-new";
  {
    std::ofstream out(temp, std::ios::trunc);
    out << text;
  }
  const auto t = Clock::now();
  if (::rename(temp.c_str(), file.c_str()) != 0) std::perror("rename");
  return t;
}

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const auto i = static_cast<std::size_t>(p / 100.0 * static_cast<double>(v.size() - 1) + 0.5);
  return v[std::min(i, v.size() - 1)];
}

struct Args {
  std::string command;
  std::uint16_t port = 0;
  std::string file, control, hotrestart = "hotrestart", mode = "watch";
  int saves = 100, reloads = 1000, connections = 8, keys = 1000;
};

[[noreturn]] void usage(const std::string& why) {
  std::fprintf(stderr, "reload-bench: %s\n", why.c_str());
  std::exit(2);
}

Args parse(int argc, char** argv) {
  Args a;
  if (argc < 2) usage("live or load?");
  a.command = argv[1];
  for (int i = 2; i < argc; ++i) {
    const std::string flag = argv[i];
    if (i + 1 >= argc) usage(flag + " needs a value");
    const std::string value = argv[++i];
    const auto number = [&] {
      char* end = nullptr;
      const long n = std::strtol(value.c_str(), &end, 10);
      if (*end != '\0' || n <= 0 || n > 10'000'000) usage(flag + " takes a positive number");
      return static_cast<int>(n);
    };
    if (flag == "--port")
      a.port = static_cast<std::uint16_t>(number());
    else if (flag == "--file")
      a.file = value;
    else if (flag == "--control")
      a.control = value;
    else if (flag == "--hotrestart")
      a.hotrestart = value;
    else if (flag == "--mode")
      a.mode = value;
    else if (flag == "--saves")
      a.saves = number();
    else if (flag == "--reloads")
      a.reloads = number();
    else if (flag == "--connections")
      a.connections = number();
    else if (flag == "--keys")
      a.keys = number();
    else
      usage("unknown flag " + flag);
  }
  if (a.port == 0 || a.file.empty() || a.control.empty()) usage("--port, --file and --control are needed");
  if (a.command != "live" && a.command != "load") usage("live or load?");
  if (a.mode != "watch" && a.mode != "reload") usage("--mode is watch or reload");
  return a;
}

int live(const Args& a) {
  Client probe(a.port);
  const auto first = probe.get("/kv/probe");
  if (first.status == 0 || first.version < 0) usage("kv-cache does not answer with X-Config-Version");
  std::int64_t version = first.version;
  std::vector<double> samples, gets, statuses;
  int missed = 0;
  for (int i = 0; i < a.saves; ++i) {
    // A value that differs at each save, so that every save is a new version.
    const auto t0 = save(a.file, "max-value-bytes " + std::to_string(100'000 + i) + "\n");
    if (a.mode == "reload") run({a.hotrestart, "reload", "--control", a.control});
    bool seen = false;
    while (ms_since(t0) < 5000) {
      const auto g0 = Clock::now();
      const auto answer = probe.get("/kv/probe");
      gets.push_back(ms_since(g0));
      if (answer.version > version) {
        samples.push_back(ms_since(t0));
        version = answer.version;
        seen = true;
        break;
      }
    }
    if (!seen) ++missed;
    // The supervisor's own round trip from a new process, as a reload's is.
    if (i % 10 == 0) {
      const auto s0 = Clock::now();
      run({a.hotrestart, "status", "--control", a.control, "--json"});
      statuses.push_back(ms_since(s0));
    }
  }
  std::printf("RESULT saves %d\nRESULT missed %d\n", a.saves, missed);
  std::printf("RESULT save_to_live_p50_ms %.2f\nRESULT save_to_live_p99_ms %.2f\nRESULT save_to_live_max_ms %.2f\n",
              percentile(samples, 50), percentile(samples, 99), percentile(samples, 100));
  std::printf("RESULT get_p50_ms %.3f\nRESULT status_command_p50_ms %.2f\n", percentile(gets, 50),
              percentile(statuses, 50));
  return missed == 0 ? 0 : 1;
}

int load(const Args& a) {
  std::atomic<bool> stop{false};
  std::atomic<std::uint64_t> ok{0}, failed{0}, regressions{0}, reconnects{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < a.connections; ++t) {
    threads.emplace_back([&, t] {
      Client client(a.port);
      std::mt19937 rng(static_cast<unsigned>(t));
      std::int64_t seen = -1;
      char key[64];
      while (!stop.load()) {
        std::snprintf(key, sizeof key, "/kv/key-%010u", static_cast<unsigned>(rng() % static_cast<unsigned>(a.keys)));
        const auto answer = client.get(key);
        if (answer.status != 200) {
          ++failed;
          continue;
        }
        ++ok;
        if (answer.reconnected) {
          ++reconnects;
          seen = -1;  // Another connection: its versions start afresh.
        }
        if (answer.version < seen) ++regressions;
        seen = std::max(seen, answer.version);
      }
    });
  }
  int reload_failures = 0;
  std::vector<double> reloads;
  const auto started = Clock::now();
  for (int i = 0; i < a.reloads; ++i) {
    save(a.file, "max-value-bytes " + std::to_string(200'000 + i) + "\n");
    const auto r0 = Clock::now();
    if (run({a.hotrestart, "reload", "--control", a.control}) != 0) ++reload_failures;
    reloads.push_back(ms_since(r0));
  }
  const double seconds = ms_since(started) / 1000;
  stop = true;
  for (auto& t : threads)
    t.join();
  std::printf("RESULT reloads %d\nRESULT reload_failures %d\nRESULT seconds %.1f\n", a.reloads, reload_failures,
              seconds);
  std::printf("RESULT reload_command_p50_ms %.2f\nRESULT reload_command_p99_ms %.2f\n", percentile(reloads, 50),
              percentile(reloads, 99));
  std::printf("RESULT requests_ok %llu\nRESULT requests_failed %llu\nRESULT version_regressions %llu\n",
              static_cast<unsigned long long>(ok.load()), static_cast<unsigned long long>(failed.load()),
              static_cast<unsigned long long>(regressions.load()));
  std::printf("RESULT reconnects %llu\n", static_cast<unsigned long long>(reconnects.load()));
  return failed == 0 && regressions == 0 && reload_failures == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  const Args a = parse(argc, argv);
  return a.command == "live" ? live(a) : load(a);
}
