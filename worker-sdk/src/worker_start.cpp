// Start-up: how start() finds out which mode it runs in and sets the worker up for it. Under the
// supervisor (HOTRESTART_CHANNEL_FD) it says hello, receives the listeners, imports the previous
// generation's state and starts the SDK thread; under systemd it takes LISTEN_FDS; by hand, and in
// the stub, it binds `fallback_listen` itself. It owns the checks of the sections declared, and
// runs on the application's thread.
#include <fcntl.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <cstdlib>
#include <string_view>

#include <hotrestart/base/address.h>
#include "configs.h"
#include "importer.h"
#include "worker_impl.h"

namespace hotrestart {
namespace {

using sdk::receive_until;

constexpr const char* kSdkName = "hotrestart-worker 0.1";

bool parse_int(std::string_view text, int& out) {
  const auto* end = text.data() + text.size();
  auto [ptr, ec] = std::from_chars(text.data(), end, out);
  return ec == std::errc() && ptr == end;
}

void set_cloexec(int fd) {
  const int flags = ::fcntl(fd, F_GETFD);
  if (flags >= 0) ::fcntl(fd, F_SETFD, flags | FD_CLOEXEC);
}

// How many listening sockets systemd's socket activation passed to this process at fd 3.., or 0
// when LISTEN_PID and LISTEN_FDS do not say so.
int systemd_listen_fds() {
  const char* listen_pid = std::getenv("LISTEN_PID");
  const char* listen_fds = std::getenv("LISTEN_FDS");
  int pid = 0;
  int count = 0;
  if (listen_pid != nullptr && listen_fds != nullptr && parse_int(listen_pid, pid) && pid == ::getpid() &&
      parse_int(listen_fds, count) && count > 0) {
    return count;
  }
  return 0;
}

// Whether the supervisor's variables are this process's own: it sets LISTEN_PID to the pid of the
// process it started. (Without LISTEN_PID, nothing says otherwise.)
bool started_by_supervisor() {
  const char* listen_pid = std::getenv("LISTEN_PID");
  int pid = 0;
  return listen_pid == nullptr || (parse_int(listen_pid, pid) && pid == ::getpid());
}

// Programs this worker starts must not take the listeners for theirs.
void forget_systemd_environment() {
  for (const char* v : {"LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"})
    ::unsetenv(v);
}

Result<Fd> bind_listener(const std::string& spec) {
  auto host_port = parse_host_port(spec);
  if (!host_port) return host_port.error();
  auto addr = numeric_address(host_port.value());
  if (!addr) return addr.error();
  Fd fd(::socket(addr->family(), SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) return Error::from_errno("socket");
  const int one = 1;
  ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (::bind(fd.get(), addr->get(), addr->length) != 0) return Error::from_errno("bind");
  if (::listen(fd.get(), SOMAXCONN) != 0) return Error::from_errno("listen");
  return fd;
}

// Every section starts cold, for `reason`.
void all_cold(const std::vector<Section>& sections, const std::string& reason, std::vector<ImportedSection>& imported) {
  for (const auto& s : sections)
    imported.push_back({s.name, false, 0, 0, reason});
}

}  // namespace

Status Worker::Impl::check_sections() const {
  for (std::size_t i = 0; i < sections.size(); ++i) {
    const Section& s = sections[i];
    if (!wire::valid_name(s.name) || s.name.size() > 64) {
      return Error::message("section name '" + s.name + "' is not valid (1-64 of A-Z a-z 0-9 . _ -)");
    }
    if (s.versions.empty() || s.versions.size() > wire::kMaxVersions) {
      return Error::message("section '" + s.name + "' needs 1 to 64 schema versions");
    }
    if (std::find(s.versions.begin(), s.versions.end(), 0U) != s.versions.end()) {
      return Error::message("section '" + s.name + "': schema versions start at 1");
    }
    if (!s.save && !s.load && !s.save_arena && !s.load_arena) {
      return Error::message("section '" + s.name + "' has neither save nor load");
    }
    for (std::size_t j = 0; j < i; ++j) {
      if (sections[j].name == s.name) return Error::message("section '" + s.name + "' is added twice");
    }
  }
  return {};
}

std::string Worker::Impl::start() {
  if (started) return "hotrestart::Worker::start() was called twice";
  started = true;
  if (auto ok = check_sections(); !ok) return ok.error().text();
  if (auto ok = sdk::check_configs(configs); !ok) return ok.error().text();
  const auto deadline = Clock::now() + options.start_timeout;

  const char* channel_env = std::getenv("HOTRESTART_CHANNEL_FD");
  if (channel_env != nullptr && !started_by_supervisor()) {
    // A process the worker started (a helper run before the real server is exec'd) inherits the
    // worker's environment, but the channel, the listeners and the notify socket are the main
    // process's: a hello or a READY=1 from here would speak for a server that has not started.
    // It runs as if no supervisor were there, and passes none of it on.
    for (const char* v :
         {"HOTRESTART_CHANNEL_FD", "HOTRESTART_REJOIN", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"})
      ::unsetenv(v);
    forget_systemd_environment();
    channel_env = nullptr;
  }
  if (channel_env != nullptr) {
    int fd = -1;
    if (!parse_int(channel_env, fd) || fd < 3) {
      return std::string("HOTRESTART_CHANNEL_FD='") + channel_env + "' is not a descriptor number";
    }
    ::unsetenv("HOTRESTART_CHANNEL_FD");  // Programs this worker starts must not take it for theirs.
    if (const char* rejoin = std::getenv("HOTRESTART_REJOIN")) rejoin_path = rejoin;
    ::unsetenv("HOTRESTART_REJOIN");
    mode = Mode::Supervised;
    if (auto ok = start_supervised(fd, deadline); !ok) return "cannot start under the supervisor: " + ok.error().text();
    return {};
  }
  // Without a supervisor nobody cuts over: the generation is active from the start.
  if (const int count = systemd_listen_fds(); count > 0) {
    mode = Mode::Systemd;
    if (auto ok = start_systemd(count); !ok) return ok.error().text();
    become_active();
    return {};
  }
  mode = Mode::Standalone;
  if (const char* ns = std::getenv("NOTIFY_SOCKET")) notify_socket = ns;
  all_cold(sections, "started without a supervisor", imported);
  if (auto ok = start_standalone(); !ok) return ok.error().text();
  become_active();
  return {};
}

std::string Worker::Impl::start_stub(std::uint64_t number) {
  if (started) return "hotrestart::Worker::start() was called twice";
  started = true;
  if (auto ok = check_sections(); !ok) return ok.error().text();
  mode = Mode::Stub;
  generation = number;
  all_cold(sections, "first generation", imported);
  if (auto ok = start_standalone(); !ok) return ok.error().text();
  return {};
}

Status Worker::Impl::start_standalone() {
  for (const auto& [name, address] : options.fallback_listen) {
    auto fd = bind_listener(address);
    if (!fd) return fd.error().context("listener " + name + " (" + address + ")");
    listeners.emplace_back(name, std::move(fd).value());
  }
  return {};
}

Status Worker::Impl::start_systemd(int count) {
  std::vector<std::string> names;
  if (const char* env = std::getenv("LISTEN_FDNAMES")) {
    std::string_view rest = env;
    while (!rest.empty()) {
      const auto colon = rest.find(':');
      names.emplace_back(rest.substr(0, colon));
      rest = colon == std::string_view::npos ? std::string_view{} : rest.substr(colon + 1);
    }
  }
  for (int i = 0; i < count; ++i) {
    const int fd = 3 + i;
    set_cloexec(fd);
    std::string name = i < static_cast<int>(names.size()) && !names[i].empty() ? names[i] : "unknown";
    listeners.emplace_back(std::move(name), Fd(fd));
  }
  forget_systemd_environment();
  if (const char* ns = std::getenv("NOTIFY_SOCKET")) notify_socket = ns;
  all_cold(sections, "no supervisor channel (systemd mode)", imported);
  return {};
}

// ---------------------------------------------------------------------------------------------
// Under the supervisor

Status Worker::Impl::start_supervised(int channel_fd, Clock::time_point deadline) {
  struct stat st {};
  int type = 0;
  socklen_t type_len = sizeof type;
  if (::fstat(channel_fd, &st) != 0 || !S_ISSOCK(st.st_mode) ||
      ::getsockopt(channel_fd, SOL_SOCKET, SO_TYPE, &type, &type_len) != 0 || type != SOCK_SEQPACKET) {
    return Error::message("HOTRESTART_CHANNEL_FD=" + std::to_string(channel_fd) + " is not a seqpacket socket");
  }
  set_cloexec(channel_fd);
  channel.adopt(Fd(channel_fd));
  if (const char* ns = std::getenv("NOTIFY_SOCKET")) notify_socket = ns;

  auto announced = handshake(deadline);
  if (!announced) return announced.error();
  if (auto ok = receive_listeners(announced.value(), deadline); !ok) return ok;
  // The same sockets were inherited at fd 3.. for workers without the SDK; this worker has its
  // own copies now, so the inherited ones are closed rather than leaked.
  if (const int count = systemd_listen_fds(); count > 0 && 3 + count <= channel_fd) {
    for (int fd = 3; fd < 3 + count; ++fd)
      ::close(fd);
  }
  forget_systemd_environment();
  auto begin = receive_configs(deadline);
  if (!begin) return begin.error();
  if (auto ok = import_previous(std::move(begin).value(), deadline); !ok) return ok;
  return start_thread();
}

// Says hello with the sections this worker imports and exports, and takes the supervisor's
// welcome: this worker's generation. Returns how many listeners the supervisor announced.
wire::Hello Worker::Impl::make_hello() const {
  wire::Hello hello;
  hello.pid = static_cast<std::int32_t>(::getpid());
  hello.sdk = kSdkName;
  hello.resumable = options.resumable;
  hello.configs = sdk::configs_held(configs);
  for (const auto& s : sections) {
    if (s.load || s.load_arena) hello.imports.push_back({s.name, s.versions, static_cast<bool>(s.load_arena)});
    if (s.save || s.save_arena) hello.exports.push_back({s.name, s.versions, static_cast<bool>(s.save_arena)});
  }
  return hello;
}

Result<std::uint32_t> Worker::Impl::handshake(Clock::time_point deadline) {
  const wire::Hello hello = make_hello();
  if (auto ok = wire::send_message(channel.fd(), hello, {}, wire::Blocking::Yes); !ok)
    return ok.error().context("hello");

  auto welcome_msg = receive_until(channel.fd(), deadline, "the supervisor's welcome");
  if (!welcome_msg) return welcome_msg.error();
  if (const auto* refuse = std::get_if<wire::Refuse>(&welcome_msg->message)) {
    return Error::message("the supervisor refused this worker: " + refuse->reason);
  }
  const auto* welcome = std::get_if<wire::Welcome>(&welcome_msg->message);
  if (welcome == nullptr) {
    return Error::message(std::string("expected welcome, got ") +
                          std::string(wire::type_name(wire::type_of(welcome_msg->message))));
  }
  generation = welcome->generation;
  return welcome->listeners;
}

// The listeners, in batches of at most 253.
Status Worker::Impl::receive_listeners(std::uint32_t count, Clock::time_point deadline) {
  while (listeners.size() < count) {
    auto batch = receive_until(channel.fd(), deadline, "the listening sockets");
    if (!batch) return batch.error();
    const auto* names = std::get_if<wire::Listeners>(&batch->message);
    if (names == nullptr) return Error::message("expected listeners from the supervisor");
    if (listeners.size() + names->names.size() > count) {
      return Error::message("the supervisor sent more listeners than it announced");
    }
    for (std::size_t i = 0; i < names->names.size(); ++i) {
      listeners.emplace_back(names->names[i], std::move(batch->fds[i]));
    }
  }
  return {};
}

Result<wire::Received> Worker::Impl::receive_configs(Clock::time_point deadline) {
  for (;;) {
    auto next = receive_until(channel.fd(), deadline, "the state transfer plan");
    if (!next) return next.error();
    if (const auto* prepare = std::get_if<wire::ConfigPrepare>(&next->message)) {
      auto answer = sdk::prepare_config(configs, *prepare, std::move(next->fds.at(0)), options.max_config_bytes);
      channel.send(answer);
      if (!answer.ok) {
        return Error::message("configuration '" + answer.name + "' version " + std::to_string(answer.version) +
                              " is refused: " + answer.reason);
      }
    } else if (const auto* commit = std::get_if<wire::ConfigCommit>(&next->message)) {
      auto answer = sdk::commit_config(configs, *commit);
      channel.send(answer);
      if (!answer.ok) {
        return Error::message("configuration '" + commit->name + "' version " + std::to_string(commit->version) +
                              " could not be committed: it was not prepared");
      }
    } else {
      return next;
    }
  }
}

// Takes the supervisor's plan and imports what the previous generation sends over the peer link
// attached to it (nothing, for a first generation), reporting each section to the supervisor.
Status Worker::Impl::import_previous(wire::Received received, Clock::time_point deadline) {
  auto* begin = &received;
  const auto* plan = std::get_if<wire::BeginImport>(&begin->message);
  if (plan == nullptr) return Error::message("expected begin-import from the supervisor");
  wire::TransferTotals totals;
  if (plan->from_generation == 0) {
    for (const auto& s : sections) {
      if (s.load || s.load_arena) {
        imported.push_back({s.name, false, 0, 0, plan->note.empty() ? "no previous generation" : plan->note});
      }
    }
  } else {
    peer_in = std::move(begin->fds.at(0));
    auto import = [&] {
      totals = import_from(peer_in.get(), plan->plan, deadline,
                           [this](const wire::SectionReport& r) { channel.send(wire::SectionImported{r}); });
    };
    if (sdk::transfer_nice() > 0) {
      // On a thread of its own at the transfer's priority, so that the generation that serves
      // meanwhile keeps its CPU; `load` runs there.
      std::thread importer([&] {
        sdk::lower_priority_for_transfer();
        import();
      });
      importer.join();
    } else {
      import();
    }
  }
  channel.send(wire::ImportFinished{totals});
  return {};
}

wire::TransferTotals Worker::Impl::import_from(int peer, const std::vector<wire::SectionVersions>& plan,
                                               Clock::time_point deadline,
                                               const std::function<void(const wire::SectionReport&)>& report) {
  auto outcome = sdk::Importer(sections, options.max_section_bytes, handover).import_from(peer, plan, deadline, report);
  fds_received += outcome.received_fds.size();
  for (auto& fd : outcome.received_fds)
    received_fds.push_back(std::move(fd));
  for (auto& section : outcome.sections)
    imported.push_back(std::move(section));
  return outcome.totals;
}

Status Worker::Impl::start_thread() {
  reserve_fd.reset(::open("/dev/null", O_RDONLY | O_CLOEXEC));
  auto efd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (efd < 0) return Error::from_errno("eventfd");
  wake_fd.reset(efd);
  thread = std::thread([this] { run_thread(); });
  return {};
}

}  // namespace hotrestart
