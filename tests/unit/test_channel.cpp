// The worker channel over real SOCK_SEQPACKET socketpairs: descriptors, batches, truncation,
// hostile datagrams, failing syscalls, end of file.
#include <doctest/doctest.h>

#include <dirent.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include <hotrestart/fd.h>
#include <hotrestart/wire/channel.h>
#include <hotrestart/wire/message.h>
#include <hotrestart/wire/section.h>

using namespace hotrestart;
using namespace hotrestart::wire;

namespace {

// The number of descriptors this process has open, to show that nothing leaked.
int open_fd_count() {
  DIR* dir = ::opendir("/proc/self/fd");
  REQUIRE(dir != nullptr);
  int n = 0;
  while (dirent* e = ::readdir(dir))
    if (e->d_name[0] != '.') ++n;
  ::closedir(dir);
  return n - 1;  // Not the directory's own descriptor.
}

bool cloexec(const Fd& fd) {
  return (::fcntl(fd.get(), F_GETFD) & FD_CLOEXEC) != 0;
}

struct stat stat_of(int fd) {
  struct stat st {};
  REQUIRE(::fstat(fd, &st) == 0);
  return st;
}
bool same_file(int a, int b) {
  auto x = stat_of(a);
  auto y = stat_of(b);
  return x.st_dev == y.st_dev && x.st_ino == y.st_ino;
}

std::pair<Fd, Fd> make_pair() {
  auto p = seqpacket_pair();
  REQUIRE(p.ok());
  return std::move(p.value());
}

// Sends bytes and descriptors exactly as given, past every check of send_message.
void raw_send(int sock, const std::string& bytes, const std::vector<int>& fds) {
  iovec iov{const_cast<char*>(bytes.data()), bytes.size()};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  std::vector<char> control(CMSG_SPACE(sizeof(int) * fds.size()) + sizeof(cmsghdr));
  if (!fds.empty()) {
    // The vector's storage comes from operator new, which is aligned enough for cmsghdr.
    msg.msg_control = control.data();
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
  }
  REQUIRE(::sendmsg(sock, &msg, MSG_NOSIGNAL) == static_cast<ssize_t>(bytes.size()));
}

Fd dev_null() {
  Fd fd(::open("/dev/null", O_RDONLY | O_CLOEXEC));
  REQUIRE(fd);
  return fd;
}

// Fails the next `failures` sendmsg calls with `err`, then behaves.
struct FailingSend : SocketCalls {
  int err;
  int failures;
  int calls = 0;
  FailingSend(int e, int n) : err(e), failures(n) {}
  ssize_t sendmsg(int fd, const msghdr* msg, int flags) override {
    ++calls;
    if (failures > 0) {
      --failures;
      errno = err;
      return -1;
    }
    return SocketCalls::sendmsg(fd, msg, flags);
  }
};

// Leaves room for only one descriptor, so that the kernel truncates the ancillary data.
struct ShortControl : SocketCalls {
  ssize_t recvmsg(int fd, msghdr* msg, int flags) override {
    msg->msg_controllen = CMSG_SPACE(sizeof(int));
    return SocketCalls::recvmsg(fd, msg, flags);
  }
};

}  // namespace

TEST_CASE("channel: messages arrive with their descriptors, each close-on-exec") {
  auto [a, b] = make_pair();
  CHECK(cloexec(a));
  CHECK(cloexec(b));
  // A section offer with its memfd, and a begin-import with a peer link end.
  auto section = write_section(
      "sessions", 1, 5, [](std::ostream& out) { out << "state"; }, 100);
  REQUIRE(section.ok());
  int memfd = section->memfd.get();
  REQUIRE(send_message(a.get(), section->offer, std::span<const int>(&memfd, 1), Blocking::Yes).ok());
  auto [peer_a, peer_b] = make_pair();
  int peer = peer_a.get();
  BeginImport begin{3, {{"sessions", {1}}}, ""};
  REQUIRE(send_message(a.get(), begin, std::span<const int>(&peer, 1), Blocking::No).ok());
  REQUIRE(send_message(a.get(), Ready{}, {}, Blocking::Yes).ok());

  auto offer = receive_message(b.get(), Blocking::Yes);
  REQUIRE_MESSAGE(offer.ok(), offer.error().text());
  CHECK(offer->message == Message(section->offer));
  REQUIRE(offer->fds.size() == 1);
  CHECK(cloexec(offer->fds[0]));
  CHECK(same_file(offer->fds[0].get(), memfd));
  // The received memfd opens as the section it is.
  auto mapped = open_section(std::move(offer->fds[0]), section->offer, 100);
  REQUIRE(mapped.ok());

  auto import = receive_message(b.get(), Blocking::No);
  REQUIRE(import.ok());
  CHECK(import->message == Message(begin));
  REQUIRE(import->fds.size() == 1);
  CHECK(cloexec(import->fds[0]));
  CHECK(same_file(import->fds[0].get(), peer));

  auto ready = receive_message(b.get(), Blocking::No);
  REQUIRE(ready.ok());
  CHECK(std::holds_alternative<Ready>(ready->message));
  CHECK(ready->fds.empty());

  auto nothing = receive_message(b.get(), Blocking::No);
  REQUIRE_FALSE(nothing.ok());
  CHECK(nothing.error().code() == EAGAIN);
}

TEST_CASE("channel: send_message refuses a wrong number of descriptors and invalid messages") {
  auto [a, b] = make_pair();
  Fd n = dev_null();
  int fd = n.get();
  auto extra = send_message(a.get(), Ready{}, std::span<const int>(&fd, 1), Blocking::No);
  REQUIRE_FALSE(extra.ok());
  CHECK(extra.error().text() == "send ready: 1 descriptors given, but the message carries 0");
  auto missing = send_message(a.get(), SectionOffer{"s", 1, 1, 1, 1}, {}, Blocking::No);
  REQUIRE_FALSE(missing.ok());
  CHECK(missing.error().text() == "send section-offer: 0 descriptors given, but the message carries 1");
  auto invalid = send_message(a.get(), Listeners{{"bad name"}}, std::span<const int>(&fd, 1), Blocking::No);
  REQUIRE_FALSE(invalid.ok());
  CHECK(invalid.error().text() == "send listeners: listeners: listener name 'bad name' is not valid");
  // Nothing was sent.
  CHECK_FALSE(wait_readable(b.get(), 0));
}

TEST_CASE("channel: send_named_fds splits 300 descriptors into batches of 253, names in order") {
  auto [a, b] = make_pair();
  Fd null = dev_null();
  std::vector<Fd> owned;
  std::vector<int> fds;
  std::vector<std::string> names;
  for (int i = 0; i < 300; ++i) {
    owned.emplace_back(::dup(null.get()));
    REQUIRE(owned.back());
    fds.push_back(owned.back().get());
    names.push_back("conn:" + std::to_string(i));
  }
  REQUIRE(send_named_fds(a.get(), Type::Fds, names, fds, Blocking::Yes).ok());

  std::vector<std::string> got_names;
  std::vector<Fd> got_fds;
  std::vector<std::size_t> batches;
  while (wait_readable(b.get(), 0)) {
    auto r = receive_message(b.get(), Blocking::No);
    REQUIRE_MESSAGE(r.ok(), r.error().text());
    auto* m = std::get_if<Fds>(&r->message);
    REQUIRE(m != nullptr);
    REQUIRE(m->names.size() == r->fds.size());
    batches.push_back(m->names.size());
    got_names.insert(got_names.end(), m->names.begin(), m->names.end());
    for (auto& f : r->fds)
      got_fds.push_back(std::move(f));
  }
  CHECK(batches == std::vector<std::size_t>{253, 47});
  CHECK(got_names == names);
  REQUIRE(got_fds.size() == 300);
  const auto null_stat = stat_of(null.get());
  for (const auto& f : got_fds) {
    CHECK(cloexec(f));
    CHECK(stat_of(f.get()).st_rdev == null_stat.st_rdev);
  }

  // Listeners go the same way; no names, no messages; mismatched counts and types are refused.
  REQUIRE(
      send_named_fds(a.get(), Type::Listeners, std::span(names).first(2), std::span(fds).first(2), Blocking::No).ok());
  auto l = receive_message(b.get(), Blocking::No);
  REQUIRE(l.ok());
  CHECK(l->message == Message(Listeners{{"conn:0", "conn:1"}}));
  CHECK(send_named_fds(a.get(), Type::Fds, {}, {}, Blocking::No).ok());
  CHECK_FALSE(wait_readable(b.get(), 0));
  auto mismatch = send_named_fds(a.get(), Type::Fds, std::span(names).first(2), std::span(fds).first(1), Blocking::No);
  REQUIRE_FALSE(mismatch.ok());
  CHECK(mismatch.error().text() == "send fds: 2 names but 1 descriptors");
  auto wrong = send_named_fds(a.get(), Type::Ready, {}, {}, Blocking::No);
  REQUIRE_FALSE(wrong.ok());
  CHECK(wrong.error().text() == "send_named_fds: type ready does not carry named descriptors");
}

TEST_CASE("channel: truncated ancillary data is refused and every descriptor closed") {
  auto [a, b] = make_pair();
  Fd x = dev_null(), y = dev_null(), z = dev_null();
  std::vector<int> fds{x.get(), y.get(), z.get()};
  std::vector<std::string> names{"x", "y", "z"};
  REQUIRE(send_named_fds(a.get(), Type::Listeners, names, fds, Blocking::No).ok());
  const int before = open_fd_count();
  ShortControl calls;
  auto r = receive_message(b.get(), Blocking::No, calls);
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().text() == "channel frame: the descriptors sent with it were truncated (MSG_CTRUNC)");
  CHECK(open_fd_count() == before);
}

TEST_CASE("channel: fewer descriptors than the header announces are refused without a leak") {
  auto [a, b] = make_pair();
  Fd x = dev_null();
  // A listeners message for two names, with one descriptor attached.
  raw_send(a.get(), encode(Listeners{{"a", "b"}}).value(), {x.get()});
  // And a section offer with two.
  Fd y = dev_null();
  auto offer = encode(SectionOffer{"s", 1, 1, 1, 1}).value();
  raw_send(a.get(), offer, {x.get(), y.get()});
  const int before = open_fd_count();
  auto r = receive_message(b.get(), Blocking::No);
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().text() == "listeners: the header announces 2 descriptors but 1 arrived");
  CHECK(open_fd_count() == before);
  auto r2 = receive_message(b.get(), Blocking::No);
  REQUIRE_FALSE(r2.ok());
  CHECK(r2.error().text() == "section-offer: the header announces 1 descriptor but 2 arrived");
  CHECK(open_fd_count() == before);
}

TEST_CASE("channel: garbage and oversized datagrams are refused, and kernel credentials name the sender") {
  auto [a, b] = make_pair();
  Fd x = dev_null();
  const int before = open_fd_count();
  raw_send(a.get(), "GET / HTTP/1.1\r\nHost: example\r\n\r\n", {x.get()});
  auto garbage = receive_message(b.get(), Blocking::No);
  REQUIRE_FALSE(garbage.ok());
  CHECK(garbage.error().text() == "channel frame: bad magic");
  CHECK(open_fd_count() == before);

  raw_send(a.get(), "short", {});
  auto shorter = receive_message(b.get(), Blocking::No);
  REQUIRE_FALSE(shorter.ok());
  CHECK(shorter.error().text() == "channel frame: 5 bytes, shorter than the 32-byte header");

  // One byte more than the largest valid datagram.
  raw_send(a.get(), std::string(kMaxDatagram + 1, 'x'), {});
  auto big = receive_message(b.get(), Blocking::No);
  REQUIRE_FALSE(big.ok());
  CHECK(big.error().text() == "channel frame: the datagram is 65569 bytes, more than 65568");
  raw_send(a.get(), std::string(kMaxDatagram + 1000, 'x'), {});
  auto bigger = receive_message(b.get(), Blocking::No);
  REQUIRE_FALSE(bigger.ok());
  CHECK(bigger.error().text() == "channel frame: the datagram is 66568 bytes, more than 65568");

  // Without SO_PASSCRED the sender is unknown; with it, the kernel attaches the sender's credentials
  // to every message (the supervisor's end has it, to know which process of a worker spoke).
  REQUIRE(send_message(a.get(), Ready{}, {}, Blocking::No).ok());
  auto plain = receive_message(b.get(), Blocking::No);
  REQUIRE(plain.ok());
  CHECK(plain->sender == 0);
  int on = 1;
  REQUIRE(::setsockopt(b.get(), SOL_SOCKET, SO_PASSCRED, &on, sizeof on) == 0);
  REQUIRE(send_message(a.get(), Ready{}, {}, Blocking::No).ok());
  auto creds = receive_message(b.get(), Blocking::No);
  REQUIRE(creds.ok());
  CHECK(std::holds_alternative<Ready>(creds->message));
  CHECK(creds->sender == ::getpid());
  CHECK(open_fd_count() == before);
}

TEST_CASE("channel: failing sendmsg calls give errors with their codes, and EINTR is retried") {
  auto [a, b] = make_pair();
  FailingSend pipe_error(EPIPE, 1);
  auto s = send_message(a.get(), Ready{}, {}, Blocking::Yes, pipe_error);
  REQUIRE_FALSE(s.ok());
  CHECK(s.error().code() == EPIPE);
  CHECK(s.error().text() == "send ready: sendmsg: Broken pipe");

  FailingSend full(EAGAIN, 1);
  auto t = send_message(a.get(), StatusLine{"x"}, {}, Blocking::No, full);
  REQUIRE_FALSE(t.ok());
  CHECK(t.error().code() == EAGAIN);
  CHECK(t.error().text() == "send status: sendmsg: Resource temporarily unavailable");

  FailingSend interrupted(EINTR, 3);
  REQUIRE(send_message(a.get(), Drain{}, {}, Blocking::No, interrupted).ok());
  CHECK(interrupted.calls == 4);
  auto r = receive_message(b.get(), Blocking::No);
  REQUIRE(r.ok());
  CHECK(std::holds_alternative<Drain>(r->message));
  CHECK_FALSE(wait_readable(b.get(), 0));

  // The second batch of a named send fails: the error comes back and nothing more is sent.
  Fd null = dev_null();
  std::vector<int> fds(260, null.get());
  std::vector<std::string> names(260, "n");
  struct SecondFails : SocketCalls {
    int calls = 0;
    ssize_t sendmsg(int fd, const msghdr* msg, int flags) override {
      if (++calls == 2) {
        errno = EPIPE;
        return -1;
      }
      return SocketCalls::sendmsg(fd, msg, flags);
    }
  } second;
  auto n = send_named_fds(a.get(), Type::Fds, names, fds, Blocking::No, second);
  REQUIRE_FALSE(n.ok());
  CHECK(n.error().code() == EPIPE);
  CHECK(second.calls == 2);
}

TEST_CASE("channel: a real full socket is EAGAIN without blocking, a closed peer EPIPE without SIGPIPE") {
  auto [a, b] = make_pair();
  Delta delta{"sessions", 1, 1, std::string(kMaxDeltaPayload, 'd')};
  int sent = 0;
  Status s;
  while ((s = send_message(a.get(), delta, {}, Blocking::No)).ok())
    ++sent;
  CHECK(sent > 0);
  CHECK(s.error().code() == EAGAIN);

  // Draining one message makes room again.
  REQUIRE(receive_message(b.get(), Blocking::No).ok());
  CHECK(send_message(a.get(), Ready{}, {}, Blocking::No).ok());

  // A peer that closes with messages unread leaves a reset connection behind.
  b.reset();
  auto reset = send_message(a.get(), Ready{}, {}, Blocking::Yes);
  REQUIRE_FALSE(reset.ok());
  CHECK(reset.error().code() == ECONNRESET);

  // One that closes with nothing unread is EPIPE; in both cases this process got no SIGPIPE.
  auto [c, d] = make_pair();
  d.reset();
  auto gone = send_message(c.get(), Ready{}, {}, Blocking::Yes);
  REQUIRE_FALSE(gone.ok());
  CHECK(gone.error().code() == EPIPE);
  CHECK(gone.error().text() == "send ready: sendmsg: Broken pipe");
}

TEST_CASE("channel: end of file is EPIPE 'peer closed the channel', after the queued messages") {
  auto [a, b] = make_pair();
  REQUIRE(send_message(a.get(), Stop{}, {}, Blocking::No).ok());
  a.reset();
  CHECK(wait_readable(b.get(), 0));
  auto stop = receive_message(b.get(), Blocking::Yes);
  REQUIRE(stop.ok());
  CHECK(std::holds_alternative<Stop>(stop->message));
  for (auto blocking : {Blocking::Yes, Blocking::No}) {
    auto eof = receive_message(b.get(), blocking);
    REQUIRE_FALSE(eof.ok());
    CHECK(eof.error().code() == EPIPE);
    CHECK(eof.error().text().rfind("peer closed the channel", 0) == 0);
  }
}

TEST_CASE("channel: Blocking::Yes waits even on an O_NONBLOCK socket") {
  auto [a, b] = make_pair();
  REQUIRE(::fcntl(b.get(), F_SETFL, ::fcntl(b.get(), F_GETFL) | O_NONBLOCK) == 0);
  Result<Received> got = Error::message("not run");
  std::thread reader([&, fd = b.get()] { got = receive_message(fd, Blocking::Yes); });
  REQUIRE(send_message(a.get(), Welcome{1, 2, 0}, {}, Blocking::Yes).ok());
  reader.join();
  REQUIRE_MESSAGE(got.ok(), got.error().text());
  CHECK(got->message == Message(Welcome{1, 2, 0}));
}

TEST_CASE("channel: wait_readable times out on a quiet socket and wakes for a message") {
  auto [a, b] = make_pair();
  CHECK_FALSE(wait_readable(b.get(), 0));
  CHECK_FALSE(wait_readable(b.get(), 1));
  REQUIRE(send_message(a.get(), Ready{}, {}, Blocking::No).ok());
  CHECK(wait_readable(b.get(), -1));
  CHECK(wait_readable(b.get(), 1000));
}
