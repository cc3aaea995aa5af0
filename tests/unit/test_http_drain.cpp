// The HTTP drain's response rewriter (supervisor/adopt/http_drain.c), driven as the preload
// library drives it: a server's writes, split at random, go through plan, output and commit, and a
// "kernel" takes a random part of each. What reaches the wire is parsed by libhttp-parser and
// compared with the server's own responses: the same messages, every final one closing the
// connection, and the server told of exactly its own bytes.
#include <doctest/doctest.h>
#include <http_parser.h>

#include <cstring>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

extern "C" {
#include "../../supervisor/adopt/http_drain.h"
}

namespace {

struct Message {
  unsigned status = 0;
  std::string body;
  bool keep_alive = true;
};

// The messages of a stream of responses, each parsed on its own (a response that closes the
// connection ends a parser's work). Throws on bytes that are not responses.
std::vector<Message> parse_responses(const std::string& wire) {
  std::vector<Message> out;
  std::size_t at = 0;
  while (at < wire.size()) {
    http_parser parser;
    http_parser_init(&parser, HTTP_RESPONSE);
    struct Ctx {
      Message m;
      bool complete = false;
    } ctx;
    parser.data = &ctx;
    http_parser_settings settings;
    http_parser_settings_init(&settings);
    settings.on_body = [](http_parser* p, const char* bytes, std::size_t len) {
      static_cast<Ctx*>(p->data)->m.body.append(bytes, len);
      return 0;
    };
    settings.on_message_complete = [](http_parser* p) {
      auto* c = static_cast<Ctx*>(p->data);
      c->m.status = p->status_code;
      c->m.keep_alive = http_should_keep_alive(p) != 0;
      c->complete = true;
      http_parser_pause(p, 1);
      return 0;
    };
    const std::size_t n = http_parser_execute(&parser, &settings, wire.data() + at, wire.size() - at);
    if (!ctx.complete) {
      throw std::runtime_error(std::string("unparsable response at byte ") + std::to_string(at) + ": " +
                               http_errno_name(HTTP_PARSER_ERRNO(&parser)));
    }
    out.push_back(ctx.m);
    at += n;
  }
  return out;
}

hr_http synced() {
  hr_http s{};
  s.phase = HR_HTTP_STATUS;
  return s;
}

// One write of `server` bytes as `pieces` iovecs, of which the kernel takes at most `room` output
// bytes. Appends what it took to `wire`; returns the count the server is told.
std::size_t write_once(hr_http& s, const std::string& server, std::size_t pieces, std::size_t room, std::string& wire) {
  std::vector<iovec> iov;
  const std::size_t step = server.size() / pieces + 1;
  for (std::size_t at = 0; at < server.size(); at += step)
    iov.push_back({const_cast<char*>(server.data() + at), std::min(step, server.size() - at)});
  hr_edit edits[HR_HTTP_MAX_EDITS];
  std::size_t offer = 0;
  const int n =
      hr_http_plan(&s, iov.data(), static_cast<int>(iov.size()), server.size(), edits, HR_HTTP_MAX_EDITS, &offer);
  REQUIRE(offer <= server.size());
  iovec out[1024];
  const int outn = hr_http_output(iov.data(), static_cast<int>(iov.size()), offer, edits, n, out, 1024);
  REQUIRE(outn >= 0);
  std::string output;
  for (int i = 0; i < outn; ++i)
    output.append(static_cast<const char*>(out[i].iov_base), out[i].iov_len);
  REQUIRE(output.size() == offer + hr_http_added(edits, n));
  const std::size_t taken = std::min(room, output.size());
  wire.append(output, 0, taken);
  const std::size_t told = hr_http_commit(&s, iov.data(), static_cast<int>(iov.size()), server.size(), edits, n, taken);
  REQUIRE(told <= offer);
  return told;
}

// Writes all of `server` in writes of at most `max_write` bytes, the kernel taking at most `room`
// each time; returns the wire.
std::string write_all(hr_http& s, const std::string& server, std::size_t max_write, std::size_t room) {
  std::string wire;
  std::size_t at = 0;
  int stalls = 0;
  while (at < server.size()) {
    const std::size_t told = write_once(s, server.substr(at, max_write), 1, room, wire);
    stalls = told == 0 ? stalls + 1 : 0;
    REQUIRE(stalls < 40);  // Only the bytes the rewriter added can make a write tell 0.
    at += told;
  }
  return wire;
}

std::string replace_all(std::string s, const std::string& from, const std::string& to) {
  for (std::size_t at = s.find(from); at != std::string::npos; at = s.find(from, at + to.size()))
    s.replace(at, from.size(), to);
  return s;
}

const std::string kNginxHead =
    "HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Sun, 06 Dec 2026 19:00:00 GMT\r\nContent-Type: "
    "text/plain\r\nContent-Length: 12\r\nConnection: keep-alive\r\n\r\n";

// Real and awkward response heads with their bodies.
std::vector<std::string> sample_responses() {
  return {
      kNginxHead + "version=v1\r\n",
      // Node.js: chunked, lower-case tokens, Keep-Alive parameters.
      "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nDate: Sun, 06 Dec 2026 19:00:00 GMT\r\nConnection: "
      "keep-alive\r\nKeep-Alive: timeout=5\r\nTransfer-Encoding: chunked\r\n\r\n7\r\nversion\r\n3;ext=1\r\n=v2\r\n0\r\n"
      "\r\n",
      // No Connection header: HTTP/1.1 keeps the connection by default.
      "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
      // HTTP/1.0 asking to keep the connection.
      "HTTP/1.0 200 OK\r\nconnection: Keep-Alive\r\nContent-Length: 3\r\n\r\nabc",
      // A body that holds a response head of its own, and a list of Connection tokens.
      "HTTP/1.1 200 OK\r\nConnection: Keep-Alive, x-foo\r\nContent-Length: 45\r\n\r\nseen: HTTP/1.1 200 OK\r\n"
      "Connection: keep-alive",
      // No body by status.
      "HTTP/1.1 204 No Content\r\nConnection: keep-alive\r\n\r\n",
      "HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n",
      // An interim response before the final one.
      "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok",
      // Chunked with trailers, and a bare LF line end in the status line.
      "HTTP/1.1 200 OK\nTransfer-Encoding: gzip, chunked\r\nContent-Type: x\r\n\r\nA\r\n0123456789\r\n0\r\nX-Sum: "
      "1\r\n\r\n",
      // Folded header value and tabs.
      "HTTP/1.1 200 OK\r\nX-Long: a\r\n\tb\r\nConnection:\tkeep-alive\r\nContent-Length: 1\r\n\r\n!",
      // Already closing.
      "HTTP/1.1 500 Internal Server Error\r\nConnection: close\r\nContent-Length: 4\r\n\r\noops",
  };
}

}  // namespace

TEST_CASE("http drain: a head written whole has its keep-alive rewritten in place, byte for byte") {
  hr_http s = synced();
  const std::string server = kNginxHead + "version=v1\r\n";
  const std::string wire = write_all(s, server, server.size(), 1 << 20);
  CHECK(wire == replace_all(server, "keep-alive", "close     "));
  const auto messages = parse_responses(wire);
  REQUIRE(messages.size() == 1);
  CHECK_FALSE(messages[0].keep_alive);
  CHECK(messages[0].body == "version=v1\r\n");
}

TEST_CASE("http drain: a head with no Connection header gets one after its status line") {
  hr_http s = synced();
  const std::string server = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
  CHECK(write_all(s, server, 1000, 1000) == "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello");
}

TEST_CASE("http drain: what needs no change is left alone: closing heads, HTTP/1.0 heads, interim heads") {
  for (const std::string& server : {
           std::string("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"),
           std::string("HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"),
       }) {
    hr_http s = synced();
    CHECK(write_all(s, server, 1000, 1000) == server);
  }
  hr_http s = synced();
  CHECK(write_all(s, "HTTP/1.1 100 Continue\r\n\r\n", 1000, 1000) == "HTTP/1.1 100 Continue\r\n\r\n");
}

TEST_CASE("http drain: TLS, HTTP/2 and what follows a 101 pass untouched") {
  const std::string tls("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03HTTP/1.1 200 OK\r\n\r\n", 31);
  hr_http s{};
  CHECK(write_all(s, tls, 1000, 1000) == tls);
  const std::string h2("\x00\x00\x12\x04\x00\x00\x00\x00\x00\x00\x03\x00\x00\x00\x64", 15);
  s = hr_http{};
  CHECK(write_all(s, h2, 1000, 1000) == h2);
  s = synced();
  const std::string upgraded =
      "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nHTTP/1.1 200 OK\r\nContent-"
      "Length: 0\r\n\r\n";
  CHECK(write_all(s, upgraded, 1000, 1000) == upgraded);
  CHECK(hr_http_opaque(&s));
}

TEST_CASE("http drain: a connection caught in the middle of a body starts at its next write that begins a head") {
  hr_http s{};  // Unsynced: the drain began while this connection was in the middle of a response.
  std::string wire;
  CHECK(write_once(s, "dy bytes HTTP/1.1 200 OK\r\n", 1, 1000, wire) == 26);
  CHECK(write_once(s, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 1, 1000, wire) == 40);
  CHECK(wire == "dy bytes HTTP/1.1 200 OK\r\nHTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok");
}

TEST_CASE("http drain: a head where a body was due, in a write of its own, follows a response to HEAD") {
  hr_http s = synced();
  std::string wire;
  const std::string head = "HTTP/1.1 200 OK\r\nContent-Length: 500\r\nConnection: keep-alive\r\n\r\n";
  CHECK(write_once(s, head, 1, 1000, wire) == head.size());
  CHECK(write_once(s, head, 1, 1000, wire) == head.size());
  const std::string closed = replace_all(head, "keep-alive", "close     ");
  CHECK(wire == closed + closed);
}

TEST_CASE("http drain: a short write inside the added header tells the server 0 more bytes, and the rest goes first") {
  hr_http s = synced();
  std::string wire;
  const std::string server = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
  // The kernel takes the status line and 5 bytes of "Connection: close\r\n".
  CHECK(write_once(s, server, 1, 17 + 5, wire) == 17);
  CHECK(wire == "HTTP/1.1 200 OK\r\nConne");
  // The server writes the rest; the header's rest goes out first.
  CHECK(write_once(s, server.substr(17), 2, 3, wire) == 0);
  CHECK(write_once(s, server.substr(17), 2, 1000, wire) == server.size() - 17);
  CHECK(wire == "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok");
}

TEST_CASE("http drain: a short write inside a rewritten token goes on with the token's rest") {
  hr_http s = synced();
  std::string wire;
  const std::string server = "HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok";
  const std::size_t token = server.find("keep-alive");
  CHECK(write_once(s, server, 1, token + 3, wire) == token + 3);
  CHECK(write_once(s, server.substr(token + 3), 3, 1000, wire) == server.size() - token - 3);
  CHECK(wire == replace_all(server, "keep-alive", "close     "));
}

TEST_CASE("http drain: pipelined responses in one write each close, and the server is told each of its bytes") {
  hr_http s = synced();
  std::string server;
  for (const auto& r : sample_responses())
    server += r;
  const std::string wire = write_all(s, server, server.size(), 1 << 20);
  const auto want = parse_responses(server);
  const auto got = parse_responses(wire);
  REQUIRE(got.size() == want.size());
  for (std::size_t i = 0; i < got.size(); ++i) {
    CHECK(got[i].status == want[i].status);
    CHECK(got[i].body == want[i].body);
    if (got[i].status >= 200) CHECK_MESSAGE(!got[i].keep_alive, "response " << i << "\nwire:\n" << wire);
  }
}

TEST_CASE("http drain: random splits of real heads and random short writes give the same responses, all closing") {
  std::mt19937_64 rng(20261206);
  const auto samples = sample_responses();
  for (int round = 0; round < 3000; ++round) {
    std::string server;
    const int count = 1 + static_cast<int>(rng() % 6);
    for (int k = 0; k < count; ++k)
      server += samples[rng() % samples.size()];
    hr_http s = synced();
    std::string wire;
    std::size_t at = 0;
    int stalls = 0;
    while (at < server.size()) {
      const std::size_t len = 1 + rng() % std::min<std::size_t>(server.size() - at, 1 + rng() % 120);
      const std::size_t pieces = 1 + rng() % 4;
      const std::size_t room = 1 + rng() % (len + 40);
      const std::size_t told = write_once(s, server.substr(at, len), pieces, room, wire);
      stalls = told == 0 ? stalls + 1 : 0;
      REQUIRE(stalls < 40);
      at += told;
    }
    // The last added header may still be owed: the server wrote all it had, and it goes out with
    // its next write, which a closing connection does not get. A stream ending in a head's status
    // line is not in the samples, so nothing is owed here.
    CHECK(s.ins_pending == 0);
    const auto want = parse_responses(server);
    std::vector<Message> got;
    try {
      got = parse_responses(wire);
    } catch (const std::exception& e) {
      FAIL_CHECK("round " << round << ": " << e.what() << "\nwire:\n" << wire << "\nserver:\n" << server);
      break;
    }
    REQUIRE_MESSAGE(got.size() == want.size(), "round " << round << "\nwire:\n" << wire);
    for (std::size_t i = 0; i < got.size(); ++i) {
      CHECK(got[i].status == want[i].status);
      CHECK(got[i].body == want[i].body);
      if (got[i].status >= 200) CHECK_MESSAGE(!got[i].keep_alive, "round " << round << "\nwire:\n" << wire);
    }
  }
}

TEST_CASE("http drain: a body sent from a file is counted, and a head after it is still found") {
  hr_http s = synced();
  std::string wire;
  const std::string head = "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nConnection: keep-alive\r\n\r\n";
  CHECK(write_once(s, head, 1, 1000, wire) == head.size());
  hr_http_skip(&s, 600);  // sendfile took 600 bytes of the body, then the rest.
  hr_http_skip(&s, 400);
  CHECK(write_once(s, "HTTP/1.1 204 No Content\r\n\r\n", 1, 1000, wire) == 27);
  CHECK(wire == replace_all(head, "keep-alive", "close     ") + "HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n");
  // More than the body held: the connection is no longer followed.
  hr_http_skip(&s, 1);
  CHECK(hr_http_opaque(&s));
}
