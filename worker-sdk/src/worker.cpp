#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <istream>
#include <sstream>

#include <hotrestart/base/address.h>

#include <hotrestart/wire/section.h>
#include <hotrestart/wire/stream.h>
#include "arena_access.h"
#include "arena_section.h"
#include "worker_impl.h"

namespace hotrestart {
namespace {

constexpr const char* kSdkName = "hotrestart-worker 0.1";

// The SDK reports to stderr, like the rest of a worker's diagnostics, so that the supervisor's
// log and the terminal show it.
__attribute__((format(printf, 1, 2))) void say(const char* format, ...) {
  char line[1024];
  va_list args;
  va_start(args, format);
  std::vsnprintf(line, sizeof line, format, args);
  va_end(args);
  std::fprintf(stderr, "hotrestart-worker[%d]: %s\n", static_cast<int>(::getpid()), line);
}

std::uint64_t micros_since(std::chrono::steady_clock::time_point t) {
  return static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - t).count());
}

int ms_until(std::chrono::steady_clock::time_point deadline) {
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
  return static_cast<int>(std::clamp<std::int64_t>(left.count(), 0, 24 * 3600 * 1000));
}

std::string versions_text(const std::vector<std::uint32_t>& versions) {
  std::string out;
  for (auto v : versions)
    out += (out.empty() ? "" : ", ") + std::to_string(v);
  return "[" + out + "]";
}

bool parse_int(std::string_view text, int& out) {
  const auto* end = text.data() + text.size();
  auto [ptr, ec] = std::from_chars(text.data(), end, out);
  return ec == std::errc() && ptr == end;
}

void set_cloexec(int fd) {
  const int flags = ::fcntl(fd, F_GETFD);
  if (flags >= 0) ::fcntl(fd, F_SETFD, flags | FD_CLOEXEC);
}

// Receives one message from `fd`, waiting no later than `deadline`.
Result<wire::Received> receive_until(int fd, std::chrono::steady_clock::time_point deadline, const char* waiting_for) {
  for (;;) {
    if (!wire::wait_readable(fd, ms_until(deadline))) {
      return Error::message(std::string("timed out waiting for ") + waiting_for);
    }
    auto r = wire::receive_message(fd, wire::Blocking::No);
    if (!r && r.error().code() == EAGAIN) continue;
    return r;
  }
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

// A datagram in systemd's notify format to `path` ('@' = abstract namespace).
void sd_notify_to(const std::string& path, std::string_view message) {
  sockaddr_un addr{};
  if (path.empty() || path.size() >= sizeof addr.sun_path) return;
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.data(), path.size());
  auto len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + path.size());
  if (addr.sun_path[0] == '@') {
    addr.sun_path[0] = '\0';
  } else {
    ++len;
  }
  Fd fd(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  if (!fd) return;
  ::sendto(fd.get(), message.data(), message.size(), MSG_NOSIGNAL, reinterpret_cast<const sockaddr*>(&addr), len);
}

const Section* find_section(const std::vector<Section>& sections, std::string_view name) {
  for (const auto& s : sections) {
    if (s.name == name) return &s;
  }
  return nullptr;
}

// Why a section offered serialized (`how`: "serialized" or "streamed") in schema `version` cannot
// go to its `load`, or "" when it can.
std::string cannot_load(const Section* section, std::uint32_t version, std::string_view how) {
  if (section == nullptr) return "offered a section this generation does not import";
  if (!section->load)
    return "offered the section " + std::string(how) + ", and this generation imports it only as an arena";
  if (std::find(section->versions.begin(), section->versions.end(), version) == section->versions.end())
    return "offered schema version " + std::to_string(version) + ", which this generation cannot read";
  return {};
}

// Runs the section's `load`: "" when it returned, otherwise why it failed.
std::string run_load(const Section& section, std::uint32_t version, std::istream& in) {
  try {
    section.load(version, in);
    return {};
  } catch (const std::exception& e) {
    return std::string("its load function failed: ") + e.what();
  } catch (...) {
    return "its load function failed with an unknown exception";
  }
}

// The newest version both sides know, or 0.
std::uint32_t negotiate(const std::vector<std::uint32_t>& ours, const std::vector<std::uint32_t>& theirs) {
  std::uint32_t best = 0;
  for (auto v : ours) {
    if (v > best && std::find(theirs.begin(), theirs.end(), v) != theirs.end()) best = v;
  }
  return best;
}

// Runs one of the application's callbacks on the SDK thread. An exception must not end the
// process through std::terminate: it is reported, and the SDK carries on.
// Returns whether it returned normally.
template <class F>
bool guarded(const char* what, F&& f) {
  try {
    f();
    return true;
  } catch (const std::exception& e) {
    say("%s threw: %s", what, e.what());
  } catch (...) {
    say("%s threw an exception that is not a std::exception", what);
  }
  return false;
}

// Errors on a send that pass: the kernel is short of memory or of room for descriptors in flight.
bool transient_send_error(int code) {
  return code == ENOBUFS || code == ENOMEM || code == ETOOMANYREFS;
}

std::size_t message_bytes(const wire::Message& m) {
  if (const auto* d = std::get_if<wire::Delta>(&m)) return d->payload.size() + d->section.size() + 64;
  return 256;
}

}  // namespace

std::string_view mode_name(Mode mode) {
  switch (mode) {
    case Mode::Supervised:
      return "supervised";
    case Mode::Systemd:
      return "systemd";
    case Mode::Standalone:
      return "standalone";
    case Mode::Stub:
      return "stub";
  }
  return "?";
}

// ---------------------------------------------------------------------------------------------
// Start

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
  const auto deadline = Clock::now() + options.start_timeout;

  const char* channel_env = std::getenv("HOTRESTART_CHANNEL_FD");
  if (channel_env != nullptr) {
    int fd = -1;
    if (!parse_int(channel_env, fd) || fd < 3) {
      return std::string("HOTRESTART_CHANNEL_FD='") + channel_env + "' is not a descriptor number";
    }
    ::unsetenv("HOTRESTART_CHANNEL_FD");  // Programs this worker starts must not take it for theirs.
    mode = Mode::Supervised;
    if (auto ok = start_supervised(fd, deadline); !ok) return "cannot start under the supervisor: " + ok.error().text();
    return {};
  }
  const char* listen_pid = std::getenv("LISTEN_PID");
  const char* listen_fds = std::getenv("LISTEN_FDS");
  int pid = 0;
  int count = 0;
  if (listen_pid != nullptr && listen_fds != nullptr && parse_int(listen_pid, pid) && pid == ::getpid() &&
      parse_int(listen_fds, count) && count > 0) {
    mode = Mode::Systemd;
    if (auto ok = start_systemd(count); !ok) return ok.error().text();
    return {};
  }
  mode = Mode::Standalone;
  if (const char* ns = std::getenv("NOTIFY_SOCKET")) notify_socket = ns;
  for (const auto& s : sections)
    imported.push_back({s.name, false, 0, 0, "started without a supervisor"});
  if (auto ok = start_standalone(); !ok) return ok.error().text();
  return {};
}

std::string Worker::Impl::start_stub(std::uint64_t number) {
  if (started) return "hotrestart::Worker::start() was called twice";
  started = true;
  if (auto ok = check_sections(); !ok) return ok.error().text();
  mode = Mode::Stub;
  generation = number;
  for (const auto& s : sections)
    imported.push_back({s.name, false, 0, 0, "first generation"});
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
  for (const char* v : {"LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"})
    ::unsetenv(v);
  if (const char* ns = std::getenv("NOTIFY_SOCKET")) notify_socket = ns;
  for (const auto& s : sections)
    imported.push_back({s.name, false, 0, 0, "no supervisor channel (systemd mode)"});
  return {};
}

Status Worker::Impl::start_supervised(int channel_fd, Clock::time_point deadline) {
  struct stat st {};
  int type = 0;
  socklen_t type_len = sizeof type;
  if (::fstat(channel_fd, &st) != 0 || !S_ISSOCK(st.st_mode) ||
      ::getsockopt(channel_fd, SOL_SOCKET, SO_TYPE, &type, &type_len) != 0 || type != SOCK_SEQPACKET) {
    return Error::message("HOTRESTART_CHANNEL_FD=" + std::to_string(channel_fd) + " is not a seqpacket socket");
  }
  set_cloexec(channel_fd);
  channel.reset(channel_fd);

  wire::Hello hello;
  hello.pid = static_cast<std::int32_t>(::getpid());
  hello.sdk = kSdkName;
  for (const auto& s : sections) {
    if (s.load || s.load_arena) hello.imports.push_back({s.name, s.versions, static_cast<bool>(s.load_arena)});
    if (s.save || s.save_arena) hello.exports.push_back({s.name, s.versions, static_cast<bool>(s.save_arena)});
  }
  if (auto ok = wire::send_message(channel.get(), hello, {}, wire::Blocking::Yes); !ok)
    return ok.error().context("hello");

  auto welcome_msg = receive_until(channel.get(), deadline, "the supervisor's welcome");
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

  // The listeners, in batches of at most 253.
  while (listeners.size() < welcome->listeners) {
    auto batch = receive_until(channel.get(), deadline, "the listening sockets");
    if (!batch) return batch.error();
    const auto* names = std::get_if<wire::Listeners>(&batch->message);
    if (names == nullptr) return Error::message("expected listeners from the supervisor");
    if (listeners.size() + names->names.size() > welcome->listeners) {
      return Error::message("the supervisor sent more listeners than it announced");
    }
    for (std::size_t i = 0; i < names->names.size(); ++i) {
      listeners.emplace_back(names->names[i], std::move(batch->fds[i]));
    }
  }
  // The same sockets were inherited at fd 3.. for workers without the SDK; this worker has its
  // own copies now, so the inherited ones are closed rather than leaked.
  const char* listen_pid = std::getenv("LISTEN_PID");
  const char* listen_fds = std::getenv("LISTEN_FDS");
  int pid = 0;
  int count = 0;
  if (listen_pid != nullptr && listen_fds != nullptr && parse_int(listen_pid, pid) && pid == ::getpid() &&
      parse_int(listen_fds, count) && count > 0 && 3 + count <= channel_fd) {
    for (int fd = 3; fd < 3 + count; ++fd)
      ::close(fd);
  }
  for (const char* v : {"LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"})
    ::unsetenv(v);

  auto begin = receive_until(channel.get(), deadline, "the state transfer plan");
  if (!begin) return begin.error();
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
    totals = import_from(peer_in.get(), plan->plan, deadline,
                         [this](const wire::SectionReport& r) { send_channel(wire::SectionImported{r}); });
  }
  send_channel(wire::ImportFinished{totals});

  reserve_fd.reset(::open("/dev/null", O_RDONLY | O_CLOEXEC));
  auto efd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (efd < 0) return Error::from_errno("eventfd");
  wake_fd.reset(efd);
  thread = std::thread([this] { run_thread(); });
  return {};
}

// ---------------------------------------------------------------------------------------------
// Import (this generation is the new one)

wire::TransferTotals Worker::Impl::import_from(int peer, const std::vector<wire::SectionVersions>& plan,
                                               Clock::time_point deadline,
                                               const std::function<void(const wire::SectionReport&)>& report) {
  const auto t0 = Clock::now();
  wire::TransferTotals totals;
  std::map<std::string, ImportedSection> results;
  for (const auto& p : plan)
    results[p.name] = {p.name, false, 0, 0, "the previous generation did not send it"};
  std::string cut_short;
  for (;;) {
    auto r = receive_until(peer, deadline, "the previous generation's snapshot");
    if (!r) {
      const bool closed = r.error().code() == EPIPE || r.error().code() == ECONNRESET;
      cut_short =
          closed ? "the previous generation closed the link before its snapshot was complete" : r.error().text();
      break;
    }
    if (std::holds_alternative<wire::SnapshotEnd>(r->message)) break;
    if (auto* fds = std::get_if<wire::Fds>(&r->message)) {
      for (std::size_t i = 0; i < fds->names.size(); ++i)
        received_fds.emplace_back(fds->names[i], std::move(r->fds[i]));
      continue;
    }
    if (auto* missing = std::get_if<wire::SectionUnavailable>(&r->message)) {
      if (auto it = results.find(missing->name); it != results.end()) it->second.reason = missing->reason;
      report({missing->name, false, 0, 0, 0, missing->reason});
      continue;
    }
    // Each section's result: counted, reported, and kept for imported().
    const auto section_start = Clock::now();
    auto finish = [&](const ImportedSection& result) {
      ++totals.sections;
      if (result.imported) {
        ++totals.done;
        totals.bytes += result.bytes;
      }
      report({result.name, result.imported, result.version, result.bytes, micros_since(section_start), result.reason});
      if (auto planned = results.find(result.name); planned != results.end()) planned->second = result;
    };
    if (auto* arena = std::get_if<wire::ArenaOffer>(&r->message)) {
      finish(import_arena(*arena, std::move(r->fds.at(0)), std::move(r->fds.at(1))));
      continue;
    }
    if (auto* streamed = std::get_if<wire::SectionStream>(&r->message)) {
      finish(results.count(streamed->name) != 0 ? import_stream(*streamed, std::move(r->fds.at(0)), deadline)
                                                : ImportedSection{streamed->name, false, streamed->version, 0,
                                                                  "offered a section this generation does not import"});
      continue;
    }
    auto* offer = std::get_if<wire::SectionOffer>(&r->message);
    if (offer == nullptr) {
      cut_short = std::string("unexpected ") + std::string(wire::type_name(wire::type_of(r->message))) +
                  " before the snapshot was complete";
      break;
    }
    ImportedSection result{offer->name, false, offer->version, offer->length, {}};
    const Section* section = results.count(offer->name) != 0 ? find_section(sections, offer->name) : nullptr;
    if (result.reason = cannot_load(section, offer->version, "serialized"); !result.reason.empty()) {
      // Not for `load`.
    } else if (auto mapped = wire::open_section(std::move(r->fds.at(0)), *offer, options.max_section_bytes); !mapped) {
      result.reason = mapped.error().text();
    } else {
      wire::SpanStreamBuf buffer(mapped->payload());
      std::istream in(&buffer);
      result.reason = run_load(*section, offer->version, in);
      result.imported = result.reason.empty();
    }
    finish(result);
  }
  for (auto& [name, result] : results) {
    if (!result.imported && !cut_short.empty() && result.reason == "the previous generation did not send it") {
      result.reason = cut_short;
    }
    imported.push_back(result);
  }
  totals.micros = micros_since(t0);
  return totals;
}

ImportedSection Worker::Impl::import_stream(const wire::SectionStream& offer, Fd sock, Clock::time_point deadline) {
  ImportedSection result{offer.name, false, offer.version, 0, {}};
  const Section* section = find_section(sections, offer.name);
  // Closing the socket (on return) ends the exporter's `save` at its next write.
  if (result.reason = cannot_load(section, offer.version, "streamed"); !result.reason.empty()) return result;
  wire::StreamReader reader(sock.get(), deadline, options.max_section_bytes);
  // A stream that fails is an exception in `load`, never a plain end of file that a load reading
  // the istream by hand could take for the end of the section.
  reader.throw_on_error(true);
  std::istream in(&reader);
  in.exceptions(std::ios_base::badbit);
  result.reason = run_load(*section, offer.version, in);
  // A load that failed because the stream did (InputArchive throws the reader's error) says so.
  if (!result.reason.empty() && !reader.error().empty()) result.reason = "the stream failed: " + reader.error();
  if (result.reason.empty()) {
    // What the load left unread is read to the end chunk, so that a section counts as imported only
    // once all of it arrived intact.
    if (auto left = reader.finish(); !left) {
      result.reason = "the stream failed after its load function returned: " + left.error().text();
    } else {
      result.imported = true;
    }
  }
  result.bytes = reader.total();
  return result;
}

ImportedSection Worker::Impl::import_arena(const wire::ArenaOffer& offer, Fd header, Fd memfd) {
  ImportedSection result{offer.offer.name, false, offer.offer.version, offer.bytes + offer.offer.length, {}};
  const Section* section = find_section(sections, offer.offer.name);
  if (section == nullptr || !section->load_arena) {
    result.reason = "offered an arena for a section this generation does not import as one";
    return result;
  }
  if (std::find(section->versions.begin(), section->versions.end(), offer.offer.version) == section->versions.end()) {
    result.reason =
        "offered schema version " + std::to_string(offer.offer.version) + ", which this generation cannot read";
    return result;
  }
  auto shared_with = std::make_shared<std::atomic<bool>>(true);
  auto opened =
      wire::open_arena_section(std::move(header), std::move(memfd), offer, options.max_section_bytes, shared_with);
  if (!opened) {
    result.reason = opened.error().text();
    return result;
  }
  {
    // Whatever load_arena does with the arena (keeps it, or drops it and throws), it is the
    // previous generation's too until that one is gone.
    std::lock_guard lock(mutex);
    borrowed_from_previous.push_back(shared_with);
  }
  wire::SpanStreamBuf buffer(opened->app_header);
  std::istream in(&buffer);
  try {
    section->load_arena(offer.offer.version, in, std::move(opened->arena));
    result.imported = true;
  } catch (const std::exception& e) {
    result.reason = std::string("its load_arena function failed: ") + e.what();
  } catch (...) {
    result.reason = "its load_arena function failed with an unknown exception";
  }
  return result;
}

void Worker::Impl::next_gone_locked(bool peer_closed) {
  Fd link = std::move(peer_out);
  streaming.clear();
  peer_queue.clear();
  peer_queue_bytes = 0;
  if (!peer_closed) {
    // This side gave up on the link (a send failed), but the next generation may still be alive
    // and map arenas lent over it: the link stays open, so that it cannot take this for an exit,
    // and the arenas stay lent.
    if (!lent_to_next.empty()) parked_links.push_back(std::move(link));
    return;
  }
  // The next generation closed its end: an SDK closes a link over which it borrowed an arena only
  // by exiting (see ~Impl), and a process's memory is unmapped before its descriptors are closed.
  // The arenas lent over it are this generation's alone again.
  for (auto& flag : lent_to_next)
    flag->store(false);
  lent_to_next.clear();
  next_gone_notice.store(true);
}

// ---------------------------------------------------------------------------------------------
// Export (this generation is the old one)

wire::TransferTotals Worker::Impl::export_to(Fd peer, std::uint64_t sequence,
                                             const std::vector<wire::SectionVersions>& plan,
                                             const std::function<void(const wire::SectionReport&)>& report) {
  const auto t0 = Clock::now();
  const int link = peer.get();
  {
    std::lock_guard lock(mutex);
    peer_out = std::move(peer);
    snapshot_sent = false;
    streaming.clear();
    peer_queue.clear();
    peer_queue_bytes = 0;
  }
  wire::TransferTotals totals;
  int link_error = 0;  // The errno of the first failed send.
  auto send = [&](const wire::Message& m, std::span<const int> fds) {
    if (link_error != 0) return;
    if (auto ok = wire::send_message(link, m, fds, wire::Blocking::Yes); !ok) {
      say("the next generation's link failed: %s", ok.error().text().c_str());
      link_error = ok.error().code() != 0 ? ok.error().code() : EIO;
    }
  };
  for (const auto& p : plan) {
    ++totals.sections;
    const auto section_start = Clock::now();
    wire::SectionReport r{p.name, false, 0, 0, 0, {}};
    bool told_importer = false;
    const Section* section = find_section(sections, p.name);
    if (section == nullptr || (!section->save && !section->save_arena)) {
      r.reason = "generation " + std::to_string(generation) + " has no section '" + p.name + "' to export";
    } else if (const auto v = negotiate(section->versions, p.versions); v == 0) {
      r.reason = "no common schema version: the importer reads " + versions_text(p.versions) +
                 ", the exporter writes " + versions_text(section->versions);
    } else {
      r.version = v;
      // Streaming starts before the snapshot, so that a change made while `save` runs is in the
      // snapshot, in a delta, or in both (deltas are idempotent), and never in neither.
      {
        std::lock_guard lock(mutex);
        streaming[p.name] = v;
      }
      const bool as_arena =
          section->save_arena && p.arena && export_arena(*section, p.name, v, sequence, link, r, link_error);
      if (as_arena) {
        // Sent, or failed: `r` says which.
      } else if (!section->save) {
        if (r.reason.empty()) r.reason = "the section has no snapshot in version " + std::to_string(v);
      } else if (section->stream) {
        // The importer hears of a failure from the stream itself.
        told_importer = export_stream(*section, p.name, v, sequence, link, r, link_error);
      } else {
        auto written = wire::write_section(
            p.name, v, sequence, [&](std::ostream& out) { section->save(v, out); }, std::uint64_t{1} << 46);
        if (!written) {
          r.reason = written.error().text();
        } else {
          r.ok = true;
          r.reason.clear();
          r.bytes = written->offer.length;
          const int memfd = written->memfd.get();
          send(written->offer, std::span<const int>(&memfd, 1));
        }
      }
    }
    r.micros = micros_since(section_start);
    if (!r.ok && !told_importer) send(wire::SectionUnavailable{r.name, r.reason}, {});
    if (r.ok) {
      ++totals.done;
      totals.bytes += r.bytes;
    }
    report(r);
  }
  {
    // Descriptors passed for the next generation go with the snapshot. This generation keeps its
    // copies, so that a later upgrade can pass them again if this one rolls back.
    std::vector<std::string> names;
    std::vector<int> fds;
    {
      std::lock_guard lock(mutex);
      for (const auto& [name, fd] : passed_fds) {
        names.push_back(name);
        fds.push_back(fd.get());
      }
    }
    if (!fds.empty() && link_error == 0) {
      if (auto ok = wire::send_named_fds(link, wire::Type::Fds, names, fds, wire::Blocking::Yes); !ok) {
        link_error = ok.error().code() != 0 ? ok.error().code() : EIO;
      }
    }
  }
  send(wire::SnapshotEnd{}, {});
  {
    std::lock_guard lock(mutex);
    snapshot_sent = true;
    if (link_error != 0) next_gone_locked(link_error == EPIPE || link_error == ECONNRESET);
  }
  totals.micros = micros_since(t0);
  return totals;
}

bool Worker::Impl::export_stream(const Section& section, const std::string& name, std::uint32_t version,
                                 std::uint64_t sequence, int link, wire::SectionReport& r, int& link_error) {
  const std::string where = "section " + quote(name);
  if (link_error != 0) {
    r.reason = "the link to the next generation failed";
    return false;
  }
  auto pair = wire::stream_pair();
  if (!pair) {
    r.reason = pair.error().context(where).text();
    return false;
  }
  Fd mine = std::move(pair->first);
  {
    // This side's copy of the importer's end closes before the first byte, so that the importer's
    // exit ends `save` at its next write.
    Fd theirs = std::move(pair->second);
    const int fd = theirs.get();
    if (auto ok = wire::send_message(link, wire::SectionStream{name, version, sequence}, std::span<const int>(&fd, 1),
                                     wire::Blocking::Yes);
        !ok) {
      say("the next generation's link failed: %s", ok.error().text().c_str());
      link_error = ok.error().code() != 0 ? ok.error().code() : EIO;
      r.reason = "the link to the next generation failed";
      return false;
    }
  }
  wire::StreamWriter writer(mine.get(), std::uint64_t{1} << 46);
  std::string failed;
  {
    std::ostream out(&writer);
    // A failed write stops the exporter at once instead of letting it write into a dead stream.
    out.exceptions(std::ios_base::badbit);
    try {
      section.save(version, out);
      out.flush();
    } catch (const std::exception& e) {
      failed = e.what();
    } catch (...) {
      failed = "it threw an exception that is not a std::exception";
    }
  }
  if (!writer.error().empty()) {
    r.reason = where + ": " + writer.error();  // The stream's own failure explains the exporter's.
  } else if (!failed.empty()) {
    r.reason = where + ": the exporter failed: " + failed;
    writer.abort(failed);
  } else if (auto ok = writer.finish(); !ok) {
    r.reason = where + ": " + ok.error().text();
  } else {
    r.ok = true;
    r.reason.clear();
  }
  r.bytes = writer.bytes();
  return true;
}

bool Worker::Impl::export_arena(const Section& section, const std::string& name, std::uint32_t version,
                                std::uint64_t sequence, int link, wire::SectionReport& r, int& link_error) {
  if (link_error != 0) {
    // The link already failed: no snapshot (and no remap) for a next generation that cannot get it.
    r.reason = "the link to the next generation failed";
    return true;
  }
  std::string header;
  Arena::Snapshot snapshot;
  const bool called = guarded("save_arena", [&] {
    std::ostringstream out;
    snapshot = section.save_arena(version, out);
    header = std::move(out).str();
  });
  if (!called || !snapshot) {
    // No snapshot in this version (or the arena is still lent to a previous import): `save` runs
    // instead, if there is one.
    r.reason = called ? "save_arena returned no snapshot" : "save_arena failed";
    return false;
  }
  auto flag = detail::ArenaAccess::shared_with(snapshot);
  auto written = wire::write_arena_section(name, version, sequence, header, snapshot);
  if (!written) {
    // Nothing was lent: the arena is this generation's alone again, and `save` may still run.
    flag->store(false);
    r.reason = written.error().text();
    say("section '%s' goes serialized: %s", name.c_str(), r.reason.c_str());
    return false;
  }
  {
    // From the send on, the next generation may map the arena, until its process is gone.
    std::lock_guard lock(mutex);
    lent_to_next.push_back(std::move(flag));
  }
  const int fds[2] = {written->header.get(), written->arena.get()};
  if (auto ok = wire::send_message(link, written->offer, fds, wire::Blocking::Yes); !ok) {
    say("the next generation's link failed: %s", ok.error().text().c_str());
    link_error = ok.error().code() != 0 ? ok.error().code() : EIO;
    r.reason = ok.error().text();
    return true;
  }
  r.ok = true;
  r.reason.clear();
  r.bytes = written->offer.bytes + written->offer.offer.length;
  return true;
}

bool Worker::Impl::flush_peer_out() {
  std::unique_lock lock(mutex);
  if (!peer_out) return false;
  if (!snapshot_sent) return true;
  while (!peer_queue.empty()) {
    Outgoing& next = peer_queue.front();
    std::vector<int> fds;
    for (const auto& fd : next.fds)
      fds.push_back(fd.get());
    auto ok = wire::send_message(peer_out.get(), next.message, fds, wire::Blocking::No);
    if (!ok && ok.error().code() == EAGAIN) return true;
    if (!ok && transient_send_error(ok.error().code())) {
      // Nothing is dropped: run_thread() tries again shortly, without spinning on POLLOUT.
      peer_backoff = true;
      return true;
    }
    if (!ok) {
      say("the next generation is gone (%s); %zu queued change(s) dropped", ok.error().text().c_str(),
          peer_queue.size());
      next_gone_locked(ok.error().code() == EPIPE || ok.error().code() == ECONNRESET);
      return false;
    }
    peer_queue_bytes -= next.bytes;
    peer_queue.pop_front();
  }
  return true;
}

// ---------------------------------------------------------------------------------------------
// After start: the previous generation's deltas and descriptors

void Worker::Impl::on_peer_in(wire::Received received) {
  if (auto* delta = std::get_if<wire::Delta>(&received.message)) {
    const Section* section = find_section(sections, delta->section);
    if (section == nullptr || !section->apply_delta) {
      say("dropped a change to section '%s', which has no apply_delta", delta->section.c_str());
      return;
    }
    guarded("apply_delta", [&] { section->apply_delta(delta->version, delta->payload); });
    return;
  }
  if (auto* large = std::get_if<wire::DeltaMemfd>(&received.message)) {
    const Section* section = find_section(sections, large->offer.name);
    if (section == nullptr || !section->apply_delta) {
      say("dropped a change to section '%s', which has no apply_delta", large->offer.name.c_str());
      return;
    }
    auto mapped = wire::open_section(std::move(received.fds.at(0)), large->offer, options.max_delta_bytes);
    if (!mapped) {
      say("section '%s': dropped a change: %s", large->offer.name.c_str(), mapped.error().text().c_str());
      return;
    }
    const auto payload = mapped->payload();
    guarded("apply_delta", [&] {
      section->apply_delta(large->offer.version,
                           std::string_view(reinterpret_cast<const char*>(payload.data()), payload.size()));
    });
    return;
  }
  if (auto* fds = std::get_if<wire::Fds>(&received.message)) {
    for (std::size_t i = 0; i < fds->names.size(); ++i) {
      if (fd_callback) {
        guarded("on_fd", [&] { fd_callback(fds->names[i], std::move(received.fds[i])); });
      } else {
        say("closed descriptor '%s' from the previous generation: no on_fd callback", fds->names[i].c_str());
      }
    }
    return;
  }
  say("ignored %s from the previous generation", std::string(wire::type_name(wire::type_of(received.message))).c_str());
}

void Worker::Impl::previous_gone() {
  peer_in.reset();
  {
    // Its process has exited (the link closes after its memory is unmapped): the arenas it lent
    // are this generation's alone.
    std::lock_guard lock(mutex);
    for (auto& flag : borrowed_from_previous)
      flag->store(false);
    borrowed_from_previous.clear();
  }
  if (previous_gone_callback) guarded("on_previous_gone", previous_gone_callback);
}

// ---------------------------------------------------------------------------------------------
// The SDK thread

void Worker::Impl::send_channel(const wire::Message& m) {
  std::lock_guard lock(channel_mutex);
  if (!channel) return;
  if (auto ok = wire::send_message(channel.get(), m, {}, wire::Blocking::Yes); !ok) {
    say("cannot tell the supervisor (%s): %s", std::string(wire::type_name(wire::type_of(m))).c_str(),
        ok.error().text().c_str());
  }
}

void Worker::Impl::wake() {
  if (!wake_fd) return;
  const std::uint64_t one = 1;
  [[maybe_unused]] auto n = ::write(wake_fd.get(), &one, sizeof one);
}

void Worker::Impl::on_channel_message(wire::Received received) {
  std::visit(
      [&](auto& m) {
        using T = std::decay_t<decltype(m)>;
        if constexpr (std::is_same_v<T, wire::Drain>) {
          {
            std::lock_guard lock(mutex);
            draining = true;
          }
          if (drain_callback) {
            guarded("on_drain", drain_callback);
          } else {
            ::kill(::getpid(), SIGTERM);
          }
        } else if constexpr (std::is_same_v<T, wire::Stop>) {
          if (stop_callback) {
            guarded("on_stop", stop_callback);
          } else {
            ::kill(::getpid(), SIGKILL);
          }
        } else if constexpr (std::is_same_v<T, wire::BeginExport>) {
          if (received.fds.empty()) return;
          auto totals = export_to(std::move(received.fds[0]), m.to_generation, m.plan,
                                  [this](const wire::SectionReport& r) { send_channel(wire::SectionExported{r}); });
          send_channel(wire::ExportFinished{totals});
          flush_peer_out();
        } else if constexpr (std::is_same_v<T, wire::Refuse>) {
          say("the supervisor refused a message: %s", m.reason.c_str());
        } else {
          say("ignored %s from the supervisor", std::string(wire::type_name(wire::type_of(received.message))).c_str());
        }
      },
      received.message);
}

void Worker::Impl::run_thread() {
  bool channel_open = true;
  for (;;) {
    pollfd fds[4];
    nfds_t n = 0;
    fds[n++] = {wake_fd.get(), POLLIN, 0};
    const nfds_t channel_at = channel_open ? n : 99;
    if (channel_open) fds[n++] = {channel.get(), POLLIN, 0};
    const nfds_t peer_in_at = peer_in ? n : 99;
    if (peer_in) fds[n++] = {peer_in.get(), POLLIN, 0};
    nfds_t peer_out_at = 99;
    bool backoff = false;
    {
      std::lock_guard lock(mutex);
      backoff = peer_backoff;
      if (peer_out) {
        peer_out_at = n;
        // POLLOUT only while something waits, so that an idle link does not spin.
        const bool waiting = !peer_queue.empty() && snapshot_sent && !backoff;
        fds[n++] = {peer_out.get(), static_cast<short>(waiting ? POLLOUT : 0), 0};
      }
    }
    if (::poll(fds, n, backoff ? 10 : -1) < 0) {
      if (errno == EINTR) continue;
      say("poll failed: %s", std::strerror(errno));
      return;
    }
    if ((fds[0].revents & POLLIN) != 0) {
      std::uint64_t count = 0;
      [[maybe_unused]] auto r = ::read(wake_fd.get(), &count, sizeof count);
    }
    if (quitting.load()) return;
    if (backoff) {
      {
        std::lock_guard lock(mutex);
        peer_backoff = false;
      }
      flush_peer_out();
    }
    if (channel_at != 99 && fds[channel_at].revents != 0) {
      auto r = wire::receive_message(channel.get(), wire::Blocking::No);
      if (r) {
        on_channel_message(std::move(r).value());
      } else if (r.error().code() != EAGAIN) {
        // The supervisor is gone, or sent something this SDK cannot trust. Either way the channel
        // is closed, so that the supervisor sees it and falls back to signals for this worker;
        // the generation keeps serving meanwhile.
        const int code = r.error().code();
        if (code != EPIPE && code != ECONNRESET) {
          say("closing the supervisor channel: %s", r.error().text().c_str());
          send_channel(wire::Refuse{r.error().text().substr(0, wire::kMaxTextLength)});
        } else {
          say("the supervisor channel closed");
        }
        std::lock_guard lock(channel_mutex);
        channel.reset();
        channel_open = false;
      }
    }
    if (peer_in_at != 99 && fds[peer_in_at].revents != 0) {
      // A spare descriptor is given up for the receive, so that a process at its fd limit still
      // takes the memfd of a large change (the kernel would drop it, and the change with it).
      reserve_fd.reset();
      auto r = wire::receive_message(peer_in.get(), wire::Blocking::No);
      reserve_fd.reset(::open("/dev/null", O_RDONLY | O_CLOEXEC));
      if (r) {
        on_peer_in(std::move(r).value());
      } else if (r.error().code() == EPIPE || r.error().code() == ECONNRESET) {
        previous_gone();
      } else if (r.error().code() != EAGAIN) {
        // One bad message (truncated descriptors at the fd limit, say) costs that message, not the
        // link: the previous generation goes on streaming the changes it acknowledges.
        say("dropped a message from the previous generation: %s", r.error().text().c_str());
      }
    }
    if (peer_out_at != 99 && (fds[peer_out_at].revents & (POLLHUP | POLLERR)) != 0) {
      // The next generation is gone (rolled back, or crashed): nothing more can be handed over.
      std::lock_guard lock(mutex);
      next_gone_locked(true);
    } else if (peer_out_at != 99 && fds[peer_out_at].revents != 0) {
      flush_peer_out();
    }
    if (next_gone_notice.exchange(false) && next_gone_callback) guarded("on_next_gone", next_gone_callback);
  }
}

Worker::Impl::~Impl() {
  if (thread.joinable()) {
    // The SDK thread stops first, after the callback it may be running, so that no callback runs
    // once the application has begun to shut down. Then what the next generation is owed is sent
    // from here, for at most flush_timeout.
    quitting.store(true);
    wake();
    thread.join();
    const auto deadline = Clock::now() + options.flush_timeout;
    for (;;) {
      bool pending = false;
      {
        std::lock_guard lock(mutex);
        pending = peer_out && snapshot_sent && !peer_queue.empty();
      }
      if (!pending || !flush_peer_out()) break;
      if (Clock::now() >= deadline) {
        std::lock_guard lock(mutex);
        say("%zu change(s) for the next generation were not sent within the flush timeout", peer_queue.size());
        break;
      }
      pollfd p{};
      {
        std::lock_guard lock(mutex);
        if (!peer_out) break;
        p = {peer_out.get(), POLLOUT, 0};
        peer_backoff = false;
      }
      ::poll(&p, 1, std::clamp(ms_until(deadline), 1, 10));
    }
  }
  // A link over which an arena was lent or borrowed is left open, to be closed by the kernel when
  // the process exits: the other generation takes its closing for this process's exit, after which
  // it makes the arena's memory its own (Arena::reclaim), and this process may still map it.
  std::lock_guard lock(mutex);
  if (!lent_to_next.empty()) (void)peer_out.release();
  if (!borrowed_from_previous.empty()) (void)peer_in.release();
  for (Fd& link : parked_links)
    (void)link.release();
}

// ---------------------------------------------------------------------------------------------
// The public surface

Worker::Worker() : Worker(Options{}) {}
Worker::Worker(Options options) : impl_(std::make_unique<Impl>(std::move(options))) {}
Worker::~Worker() = default;

void Worker::add_section(Section section) {
  impl_->sections.push_back(std::move(section));
}
void Worker::on_drain(std::function<void()> callback) {
  impl_->drain_callback = std::move(callback);
}
void Worker::on_stop(std::function<void()> callback) {
  impl_->stop_callback = std::move(callback);
}
void Worker::on_fd(std::function<void(std::string, Fd)> callback) {
  impl_->fd_callback = std::move(callback);
}
void Worker::on_previous_gone(std::function<void()> callback) {
  impl_->previous_gone_callback = std::move(callback);
}

void Worker::on_next_gone(std::function<void()> callback) {
  impl_->next_gone_callback = std::move(callback);
}

std::string Worker::start() {
  return impl_->start();
}
Mode Worker::mode() const {
  return impl_->mode;
}
std::uint64_t Worker::generation() const {
  return impl_->generation;
}

int Worker::listener(std::string_view name) const {
  for (const auto& [n, fd] : impl_->listeners) {
    if (n == name) return fd.get();
  }
  return -1;
}

Fd Worker::take_listener(std::string_view name) {
  for (auto& [n, fd] : impl_->listeners) {
    if (n == name && fd) return std::move(fd);
  }
  return Fd{};
}

std::vector<std::string> Worker::listener_names() const {
  std::vector<std::string> names;
  for (const auto& [n, fd] : impl_->listeners)
    names.push_back(n);
  return names;
}

Fd Worker::take_fd(std::string_view name) {
  for (auto& [n, fd] : impl_->received_fds) {
    if (n == name && fd) return std::move(fd);
  }
  return Fd{};
}

const std::vector<ImportedSection>& Worker::imported() const {
  return impl_->imported;
}

void Worker::ready() {
  switch (impl_->mode) {
    case Mode::Supervised:
      impl_->send_channel(wire::Ready{});
      break;
    case Mode::Systemd:
    case Mode::Standalone:
      sd_notify_to(impl_->notify_socket, "READY=1");
      break;
    case Mode::Stub:
      impl_->stub_ready = true;
      break;
  }
}

void Worker::status(std::string_view text) {
  std::string line(text.substr(0, 256));
  for (char& c : line) {
    if (static_cast<unsigned char>(c) < 0x20) c = ' ';
  }
  if (impl_->mode == Mode::Supervised) {
    impl_->send_channel(wire::StatusLine{line});
  } else if (impl_->mode != Mode::Stub) {
    sd_notify_to(impl_->notify_socket, "STATUS=" + line);
  }
}

bool Worker::pass_fd(std::string name, int fd) {
  if (!wire::valid_name(name)) return false;
  const int copy = ::fcntl(fd, F_DUPFD_CLOEXEC, 3);
  if (copy < 0) return false;
  Fd owned(copy);
  Impl& impl = *impl_;
  {
    std::lock_guard lock(impl.mutex);
    const bool link_up = impl.peer_out && impl.snapshot_sent;
    if (impl.mode != Mode::Supervised && impl.mode != Mode::Stub) return false;
    if (impl.draining && !link_up) return false;  // Nothing will ever receive it.
    if (!impl.draining) {
      // Kept for every later transfer too, in case the next generation is rolled back.
      const int keep = ::fcntl(owned.get(), F_DUPFD_CLOEXEC, 3);
      if (keep < 0) return false;
      impl.passed_fds.emplace_back(name, Fd(keep));
    }
    if (!link_up) return true;  // Goes with the next transfer.
    if (impl.peer_queue_bytes + 256 > impl.options.max_queued_bytes) return false;
    Impl::Outgoing out;
    out.message = wire::Fds{{std::move(name)}};
    out.fds.push_back(std::move(owned));
    out.bytes = 256;
    impl.peer_queue_bytes += out.bytes;
    impl.peer_queue.push_back(std::move(out));
  }
  if (impl.mode == Mode::Stub) return impl.flush_peer_out();
  impl.wake();
  return true;
}

bool Worker::publish_delta(std::string_view section, const std::function<std::string(std::uint32_t version)>& encode) {
  Impl& impl = *impl_;
  {
    std::lock_guard lock(impl.mutex);
    auto it = impl.streaming.find(std::string(section));
    if (!impl.peer_out || it == impl.streaming.end()) return true;  // No transfer under way: nothing to do.
    std::string payload = encode(it->second);
    if (payload.size() > impl.options.max_delta_bytes) return false;
    Impl::Outgoing out;
    const std::uint64_t sequence = ++impl.delta_sequence;
    if (payload.size() <= wire::kMaxDeltaPayload) {
      out.message = wire::Delta{std::string(section), it->second, sequence, std::move(payload)};
      out.bytes = message_bytes(out.message);
    } else {
      // Too large for one message: it goes as a sealed memfd in the section format, checked on
      // arrival like a snapshot.
      auto written = wire::write_section(
          std::string(section), it->second, sequence, [&](std::ostream& o) { o.write(payload.data(), payload.size()); },
          payload.size());
      if (!written) return false;
      out.message = wire::DeltaMemfd{written->offer};
      out.fds.push_back(std::move(written->memfd));
      out.bytes = payload.size() + 256;
    }
    if (impl.peer_queue_bytes + out.bytes > impl.options.max_queued_bytes) return false;
    impl.peer_queue_bytes += out.bytes;
    impl.peer_queue.push_back(std::move(out));
  }
  if (impl.mode == Mode::Stub) return impl.flush_peer_out();
  impl.wake();
  return true;
}

}  // namespace hotrestart
