// sdk-worker: a worker built on the SDK, for the integration tests of the channel and the state
// broker. It serves a little HTTP on its "http" listener, one request per connection:
//
//   GET /            version=LABEL pid=PID generation=N
//   GET /state       entries=N load_nice=N load_on_main=0|1 imported=0|1 schema=V reason=... fds=K cloexec=0|1
//                    (load_nice: the nice value of the thread `load` ran on; load_on_main: whether
//                    that was the main thread; -1 and 0 before any load)
//   GET /data/KEY    the value, or 404
//   GET /config      config=VERSION greeting=VALUE (with --config)
//
// and keeps a section "data" (a map of strings) that it exports and imports.
//
// Flags:
//   --version LABEL        label in responses (default v1)
//   --schemas 1,2          schema versions of section "data" this binary reads and writes
//   --section NAME         call section "data" NAME instead (to import another server's section,
//                          with --import-crash or --import-fail: scripts/bench-soak)
//   --fill N               start with N entries key-I = value-I (when nothing was imported)
//   --pass-fds N           pass N descriptors (memfds) to the next generation as extra-0..
//   --export-fail          the exporter throws half-way through
//   --export-crash         the exporter aborts the process half-way through
//   --import-fail          the importer throws half-way through
//   --import-crash         the importer aborts the process half-way through
//   --raw-hello MIN:MAX    skip the SDK: say hello with these protocol versions, then wait
//   --raw-garbage          skip the SDK: send a datagram that is not a channel frame, then wait
//   --start-delay-ms N     wait N ms before Worker::start() (slow set-up before the hello)
//   --export-delay-ms N    the exporter takes N ms before it writes anything
//   --drain-delay-ms N     keep serving N ms after the drain request before exiting
//   --stream               send the sections over a stream (Section::stream) instead of a memfd
//   --fork-save            save section "data" (and the blob) in a forked process (Section::freeze)
//   --ready-in-active      call ready() in on_active (which waits for it: it never comes)
//   --resumable            Options::resumable: after its drain, wait_for_resume(), and serve
//                          again when it returns true
//   --blob BYTES           also keep a section "blob" of BYTES bytes (a pattern the first
//                          generation writes), in memory the process fills before start(), and
//                          that `load` reads straight into and then checks; /state says blob=N,
//                          the bytes imported and checked (for scripts/bench-state)
//   --config NAME          read configuration NAME (Worker::add_config): lines of key=value, '#'
//                          comments; anything else is refused naming its line
//   --config-refuse WORD   refuse any configuration that contains WORD
//   --config-delay-ms N    the parser takes N ms
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <hotrestart/archive.h>
#include <hotrestart/worker.h>
#include <cereal/types/map.hpp>
#include <cereal/types/string.hpp>

#include <hotrestart/wire/channel.h>

namespace {

struct Flags {
  std::string version = "v1";
  std::vector<std::uint32_t> schemas{1};
  long fill = 0;
  long pass_fds = 0;
  bool export_fail = false;
  bool export_crash = false;
  bool import_fail = false;
  bool import_crash = false;
  std::string section = "data";
  std::string raw_hello;
  bool raw_garbage = false;
  long start_delay_ms = 0;
  long export_delay_ms = 0;
  long drain_delay_ms = 0;
  bool stream = false;
  bool fork_save = false;
  bool ready_in_active = false;
  bool resumable = false;
  std::uint64_t blob = 0;
  std::string config;
  std::string config_refuse;
  long config_delay_ms = 0;
};

struct Settings {
  std::map<std::string, std::string> values;
};

// key=value lines; '#' starts a comment line.
hotrestart::Parsed<Settings> parse_settings(std::string_view bytes, const std::string& refuse, long delay_ms) {
  if (delay_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms));
  if (!refuse.empty() && bytes.find(refuse) != std::string_view::npos)
    return hotrestart::ConfigError{"this binary refuses '" + refuse + "'"};
  Settings s;
  int number = 0;
  while (!bytes.empty()) {
    ++number;
    const auto end = bytes.find('\n');
    std::string_view line = bytes.substr(0, end);
    bytes = end == std::string_view::npos ? std::string_view{} : bytes.substr(end + 1);
    if (line.empty() || line.front() == '#') continue;
    for (char c : line)
      if (static_cast<unsigned char>(c) < 0x20 && c != '\t')
        return hotrestart::ConfigError{"line " + std::to_string(number) + ": not text"};
    const auto eq = line.find('=');
    if (eq == std::string_view::npos || eq == 0)
      return hotrestart::ConfigError{"line " + std::to_string(number) + ": expected key=value"};
    if (line.substr(0, eq) == "ttl" && line.substr(eq + 1).find_first_not_of("0123456789") != std::string_view::npos)
      return hotrestart::ConfigError{"line " + std::to_string(number) + ": ttl: not a number"};
    s.values[std::string(line.substr(0, eq))] = std::string(line.substr(eq + 1));
  }
  return s;
}

std::mutex data_mutex;
std::map<std::string, std::string> data;

[[noreturn]] void usage(const std::string& why) {
  std::fprintf(stderr, "sdk-worker: %s\n", why.c_str());
  std::exit(64);
}

Flags parse(int argc, char** argv) {
  Flags f;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) usage(a + " needs a value");
      return argv[++i];
    };
    if (a == "--version") {
      f.version = value();
    } else if (a == "--section") {
      f.section = value();
    } else if (a == "--schemas") {
      f.schemas.clear();
      const std::string list = value();
      for (std::size_t at = 0; at < list.size();) {
        const auto comma = list.find(',', at);
        f.schemas.push_back(static_cast<std::uint32_t>(std::stoul(list.substr(at, comma - at))));
        at = comma == std::string::npos ? list.size() : comma + 1;
      }
    } else if (a == "--fill") {
      f.fill = std::stol(value());
    } else if (a == "--pass-fds") {
      f.pass_fds = std::stol(value());
    } else if (a == "--export-fail") {
      f.export_fail = true;
    } else if (a == "--export-crash") {
      f.export_crash = true;
    } else if (a == "--import-fail") {
      f.import_fail = true;
    } else if (a == "--import-crash") {
      f.import_crash = true;
    } else if (a == "--raw-hello") {
      f.raw_hello = value();
    } else if (a == "--raw-garbage") {
      f.raw_garbage = true;
    } else if (a == "--start-delay-ms") {
      f.start_delay_ms = std::stol(value());
    } else if (a == "--export-delay-ms") {
      f.export_delay_ms = std::stol(value());
    } else if (a == "--drain-delay-ms") {
      f.drain_delay_ms = std::stol(value());
    } else if (a == "--stream") {
      f.stream = true;
    } else if (a == "--fork-save") {
      f.fork_save = true;
    } else if (a == "--ready-in-active") {
      f.ready_in_active = true;
    } else if (a == "--resumable") {
      f.resumable = true;
    } else if (a == "--blob") {
      f.blob = std::stoull(value());
    } else if (a == "--config") {
      f.config = value();
    } else if (a == "--config-refuse") {
      f.config_refuse = value();
    } else if (a == "--config-delay-ms") {
      f.config_delay_ms = std::stol(value());
    } else {
      usage("unknown flag " + a);
    }
  }
  return f;
}

// Schema 1 stores the map; schema 2 also stores the version label that wrote it, so that the two
// layouts really differ.
// Where the last `load` ran (GET /state).
std::atomic<int> load_nice{-1};
std::atomic<bool> load_on_main{false};

void save(const Flags& f, std::uint32_t version, std::ostream& out) {
  if (f.export_delay_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(f.export_delay_ms));
  std::lock_guard lock(data_mutex);
  hotrestart::OutputArchive archive(out);
  if (version >= 2) archive(std::string("written by ") + f.version);
  if (f.export_fail || f.export_crash) {
    archive(std::uint64_t{data.size()});
    out.flush();  // What was written reaches the next generation (a stream sends it).
    if (f.export_crash) std::abort();
    throw std::runtime_error("the exporter failed on purpose");
  }
  archive(data);
}

void load(const Flags& f, std::uint32_t version, std::istream& in) {
  errno = 0;
  load_nice = ::getpriority(PRIO_PROCESS, static_cast<id_t>(::gettid()));
  load_on_main = ::gettid() == ::getpid();
  hotrestart::InputArchive archive(in);
  if (version >= 2) {
    std::string writer;
    archive(writer);
  }
  if (f.import_crash) std::abort();
  if (f.import_fail) throw std::runtime_error("the importer failed on purpose");
  std::map<std::string, std::string> staging;
  archive(staging);
  if (!archive.at_end()) throw std::runtime_error("bytes left after the data");
  std::lock_guard lock(data_mutex);
  data.swap(staging);
}

// With --fork-save: the section's save runs in a child forked under the data's lock.
std::function<void(const hotrestart::SnapshotFork&)> freeze(const Flags& f) {
  if (!f.fork_save) return {};
  return [](const hotrestart::SnapshotFork& fork) {
    std::lock_guard lock(data_mutex);
    fork();
  };
}

// The blob: BYTES of a pattern, in memory taken (and touched) before start(), as a server that
// sizes its memory at start-up would.
char* blob_memory = nullptr;
std::uint64_t blob_checked = 0;

std::uint64_t blob_word(std::uint64_t i) {
  return i * 0x9E3779B97F4A7C15ULL + 7;
}

void blob_fill(std::uint64_t bytes) {
  auto* words = reinterpret_cast<std::uint64_t*>(blob_memory);
  for (std::uint64_t i = 0; i < bytes / 8; ++i)
    words[i] = blob_word(i);
}

void blob_save(std::uint64_t bytes, std::ostream& out) {
  hotrestart::OutputArchive archive(out);
  archive(bytes, cereal::binary_data(blob_memory, static_cast<std::size_t>(bytes)));
}

// Reads in place (this worker only keeps the blob; it serves nothing from it), then checks one
// word in every 4 KiB.
void blob_load(std::uint64_t capacity, std::istream& in) {
  hotrestart::InputArchive archive(in);
  std::uint64_t bytes = 0;
  archive(bytes);
  if (bytes != capacity)
    throw std::runtime_error("the blob is " + std::to_string(bytes) + " bytes, not " + std::to_string(capacity));
  archive(cereal::binary_data(blob_memory, static_cast<std::size_t>(bytes)));
  if (!archive.at_end()) throw std::runtime_error("bytes left after the blob");
  const auto* words = reinterpret_cast<const std::uint64_t*>(blob_memory);
  for (std::uint64_t i = 0; i < bytes / 8; i += 512) {
    if (words[i] != blob_word(i)) throw std::runtime_error("the blob differs at word " + std::to_string(i));
  }
  blob_checked = bytes;
}

// The raw modes skip the SDK and speak to the supervisor on the channel directly, as a broken or
// hostile worker might. The rollback's drain signal must not cut the report of the answer short.
int raw_channel(const char* flag) {
  const char* env = std::getenv("HOTRESTART_CHANNEL_FD");
  if (env == nullptr) usage(std::string(flag) + " needs a supervisor");
  ::signal(SIGTERM, SIG_IGN);
  return std::atoi(env);
}

// Reports whether the supervisor's answer on `fd` was a refusal: exit status 3 if it was.
int report_answer(int fd) {
  auto answer = hotrestart::wire::receive_message(fd, hotrestart::wire::Blocking::Yes);
  if (answer) {
    if (const auto* refuse = std::get_if<hotrestart::wire::Refuse>(&answer->message)) {
      std::fprintf(stderr, "sdk-worker: refused: %s\n", refuse->reason.c_str());
      return 3;
    }
  }
  std::fprintf(stderr, "sdk-worker: not refused\n");
  return 0;
}

// Sends bytes that are not a channel frame.
int raw_garbage() {
  const int fd = raw_channel("--raw-garbage");
  const char junk[] = "GET / HTTP/1.1\r\n\r\n this is not a channel frame at all, but long enough to pass as one";
  if (::send(fd, junk, sizeof junk, MSG_NOSIGNAL) < 0) return 1;
  return report_answer(fd);
}

// Says hello with protocol versions MIN:MAX.
int raw_hello(const std::string& range) {
  const int fd = raw_channel("--raw-hello");
  hotrestart::wire::Hello hello;
  hello.min_version = static_cast<std::uint16_t>(std::stoul(range.substr(0, range.find(':'))));
  hello.max_version = static_cast<std::uint16_t>(std::stoul(range.substr(range.find(':') + 1)));
  hello.pid = static_cast<std::int32_t>(::getpid());
  hello.sdk = "raw";
  if (auto ok = hotrestart::wire::send_message(fd, hello, {}, hotrestart::wire::Blocking::Yes); !ok) {
    std::fprintf(stderr, "sdk-worker: hello: %s\n", ok.error().text().c_str());
    return 1;
  }
  return report_answer(fd);
}

hotrestart::Config<Settings>* settings = nullptr;

std::string respond(const std::string& path, const Flags& f, const hotrestart::Worker& worker, int& status) {
  status = 200;
  if (path == "/config" && settings != nullptr) {
    thread_local auto reader = settings->reader();
    auto snapshot = reader.get();
    std::string greeting;
    if (snapshot) {
      auto it = snapshot->values.find("greeting");
      if (it != snapshot->values.end()) greeting = it->second;
    }
    return "config=" + std::to_string(snapshot.version()) + " greeting=" + greeting + "\n";
  }
  if (path == "/") {
    return "version=" + f.version + " pid=" + std::to_string(::getpid()) +
           " generation=" + std::to_string(worker.generation()) + "\n";
  }
  if (path == "/state") {
    std::size_t entries = 0;
    {
      std::lock_guard lock(data_mutex);
      entries = data.size();
    }
    std::string out = "entries=" + std::to_string(entries) + " load_nice=" + std::to_string(load_nice.load()) +
                      " load_on_main=" + (load_on_main.load() ? "1" : "0");
    if (f.blob > 0) out += " blob=" + std::to_string(blob_checked);
    for (const auto& s : worker.imported()) {
      if (s.name == "blob") continue;
      out += " imported=" + std::string(s.imported ? "1" : "0") + " schema=" + std::to_string(s.version);
      if (!s.reason.empty()) out += " reason=" + s.reason;
    }
    return out + "\n";
  }
  if (path.starts_with("/data/")) {
    std::lock_guard lock(data_mutex);
    auto it = data.find(path.substr(6));
    if (it != data.end()) return it->second;
    status = 404;
    return "not found\n";
  }
  status = 404;
  return "not found\n";
}

void serve_one(int conn, const Flags& f, const hotrestart::Worker& worker) {
  std::string request;
  char buf[4096];
  while (request.find("\r\n\r\n") == std::string::npos && request.size() < 16384) {
    pollfd p{conn, POLLIN, 0};
    if (::poll(&p, 1, 5000) <= 0) return;
    const ssize_t n = ::read(conn, buf, sizeof buf);
    if (n <= 0) return;
    request.append(buf, static_cast<std::size_t>(n));
  }
  const auto sp1 = request.find(' ');
  const auto sp2 = request.find(' ', sp1 + 1);
  const std::string path = sp1 == std::string::npos ? "/" : request.substr(sp1 + 1, sp2 - sp1 - 1);
  int status = 200;
  const std::string body = respond(path, f, worker, status);
  const std::string reply = "HTTP/1.1 " + std::to_string(status) + (status == 200 ? " OK" : " Not Found") +
                            "\r\nContent-Length: " + std::to_string(body.size()) + "\r\nConnection: close\r\n\r\n" +
                            body;
  [[maybe_unused]] auto w = ::write(conn, reply.data(), reply.size());
  ::shutdown(conn, SHUT_WR);
  while (::read(conn, buf, sizeof buf) > 0) {
  }
}

}  // namespace

int main(int argc, char** argv) {
  const Flags f = parse(argc, argv);
  if (!f.raw_hello.empty()) return raw_hello(f.raw_hello);
  if (f.raw_garbage) return raw_garbage();
  ::signal(SIGPIPE, SIG_IGN);

  if (f.start_delay_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(f.start_delay_ms));
  hotrestart::Worker worker({.fallback_listen = {{"http", "127.0.0.1:0"}}, .resumable = f.resumable});
  // Accepting waits for on_active too, as the docs say: a generation that accepted before the
  // cutover and was then rolled back would reset those connections.
  std::atomic<bool> active{!f.ready_in_active};
  if (f.ready_in_active)
    worker.on_active([&worker, &active] {
      worker.ready();
      active = true;
    });
  worker.add_section({.name = f.section,
                      .versions = f.schemas,
                      .save = [&f](std::uint32_t v, std::ostream& out) { save(f, v, out); },
                      .load = [&f](std::uint32_t v, std::istream& in) { load(f, v, in); },
                      .apply_delta = {},
                      .stream = f.stream,
                      .freeze = freeze(f)});
  if (f.blob > 0) {
    void* memory = ::mmap(nullptr, f.blob, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (memory == MAP_FAILED || f.blob % 8 != 0) usage("--blob: cannot map " + std::to_string(f.blob) + " bytes");
    blob_memory = static_cast<char*>(memory);
    std::memset(blob_memory, 0, f.blob);  // Touched now, as memory the server sizes at start-up.
    worker.add_section({.name = "blob",
                        .versions = {1},
                        .save = [&f](std::uint32_t, std::ostream& out) { blob_save(f.blob, out); },
                        .load = [&f](std::uint32_t, std::istream& in) { blob_load(f.blob, in); },
                        .stream = f.stream,
                        .freeze = freeze(f)});
  }
  hotrestart::Config<Settings> config(
      [&f](std::string_view bytes) { return parse_settings(bytes, f.config_refuse, f.config_delay_ms); });
  if (!f.config.empty()) {
    settings = &config;
    worker.add_config(f.config, config);
  }
  std::atomic<long> drain_at_ms{0};
  worker.on_drain([&] {
    drain_at_ms = static_cast<long>(
        std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now().time_since_epoch())
            .count());
  });
  if (auto error = worker.start(); !error.empty()) {
    std::fprintf(stderr, "sdk-worker: %s\n", error.c_str());
    return 1;
  }
  if (f.blob > 0 && blob_checked == 0) blob_fill(f.blob);
  {
    std::lock_guard lock(data_mutex);
    if (data.empty()) {
      for (long i = 0; i < f.fill; ++i)
        data["key-" + std::to_string(i)] = "value-" + std::to_string(i);
    }
  }
  for (long i = 0; i < f.pass_fds; ++i) {
    hotrestart::Fd memfd(::memfd_create("sdk-worker-extra", MFD_CLOEXEC));
    if (!memfd || !worker.pass_fd("extra-" + std::to_string(i), memfd.get())) {
      std::fprintf(stderr, "sdk-worker: cannot pass descriptor %ld\n", i);
      return 1;
    }
  }
  // What the previous generation passed: every one must be close-on-exec.
  int received = 0;
  int cloexec = 1;
  for (int i = 0;; ++i) {
    hotrestart::Fd fd = worker.take_fd("extra-" + std::to_string(i));
    if (!fd) break;
    ++received;
    if ((::fcntl(fd.get(), F_GETFD) & FD_CLOEXEC) == 0) cloexec = 0;
  }
  std::fprintf(stderr, "sdk-worker %s: generation %llu, received %d descriptor(s), cloexec=%d\n", f.version.c_str(),
               static_cast<unsigned long long>(worker.generation()), received, cloexec);
  for (const auto& s : worker.imported()) {
    std::fprintf(stderr, "sdk-worker %s: section %s: %s\n", f.version.c_str(), s.name.c_str(),
                 s.imported ? ("imported, schema " + std::to_string(s.version)).c_str() : s.reason.c_str());
  }

  auto now_ms = [] {
    return static_cast<long>(
        std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now().time_since_epoch())
            .count());
  };
  // Serves until the drain (and, resumed, again until the next one).
  for (;;) {
    hotrestart::Fd listener = worker.take_listener("http");
    if (!listener) {
      std::fprintf(stderr, "sdk-worker: no listener named http\n");
      return 1;
    }
    // Non-blocking, because another generation may accept the connection poll() announced.
    ::fcntl(listener.get(), F_SETFL, ::fcntl(listener.get(), F_GETFL) | O_NONBLOCK);
    drain_at_ms = 0;
    if (!f.ready_in_active) worker.ready();
    while (drain_at_ms.load() == 0 || now_ms() < drain_at_ms.load() + f.drain_delay_ms) {
      pollfd p{listener.get(), POLLIN, 0};
      if (!active.load()) {
        ::poll(nullptr, 0, 50);
        continue;
      }
      if (::poll(&p, 1, 50) <= 0) continue;
      hotrestart::Fd conn(::accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
      if (conn) serve_one(conn.get(), f, worker);
    }
    // Draining: close this generation's copy of the listener (never shutdown()).
    listener.reset();
    std::fprintf(stderr, "sdk-worker %s: drained\n", f.version.c_str());
    if (!worker.wait_for_resume()) break;
    std::fprintf(stderr, "sdk-worker %s: resumed\n", f.version.c_str());
  }
  return 0;
}
