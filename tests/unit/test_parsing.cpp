// Parsing of everything an operator types: durations, signals, listen addresses, --ready, --hold.
#include <doctest/doctest.h>

#include <csignal>

#include "duration.h"
#include "hold.h"
#include "listen_spec.h"
#include "signals.h"
#include "supervisor.h"

using namespace hotrestart;
using namespace std::chrono_literals;

TEST_CASE("durations take numbers with units, largest first, decimals allowed") {
  CHECK(parse_duration("500ms").value() == 500ms);
  CHECK(parse_duration("5s").value() == 5000ms);
  CHECK(parse_duration("2m").value() == 120000ms);
  CHECK(parse_duration("1h").value() == 3600000ms);
  CHECK(parse_duration("0s").value() == 0ms);
  CHECK(parse_duration("1m30s").value() == 90000ms);
  CHECK(parse_duration("1h30m").value() == 5400000ms);
  CHECK(parse_duration("1h2m3s4ms").value() == 3723004ms);
  CHECK(parse_duration("1.5s").value() == 1500ms);
  CHECK(parse_duration("0.25s").value() == 250ms);
  CHECK(parse_duration("1.5h").value() == 5400000ms);
  CHECK(parse_duration("2m0.5s").value() == 120500ms);
  CHECK(parse_duration("250ms").value() == 250ms);
  CHECK(parse_duration("168h").value() == 604800000ms);
}

TEST_CASE("bad durations are refused with the reason") {
  const auto why = [](std::string_view text) { return parse_duration(text).error().text(); };
  CHECK(why("30").find("unit is missing") != std::string::npos);
  CHECK(why("").find("empty") != std::string::npos);
  CHECK(why("5x").find("unknown unit 'x'") != std::string::npos);
  CHECK(why("-5s").find("cannot be negative") != std::string::npos);
  CHECK(why("-1s").find("invalid duration '-1s'") != std::string::npos);
  CHECK(why("1m30").find("the last number has no unit") != std::string::npos);
  CHECK(why("1.5.3s").find("one decimal point") != std::string::npos);
  CHECK(why("1.s").find("followed by digits") != std::string::npos);
  CHECK(why(".5s").find("start with a number") != std::string::npos);
  CHECK(why("30s1m").find("largest to the smallest") != std::string::npos);
  CHECK(why("1s1s").find("largest to the smallest") != std::string::npos);
  CHECK(why("1.0005s").find("finer than a millisecond") != std::string::npos);
  CHECK(why("0.5ms").find("finer than a millisecond") != std::string::npos);
  CHECK(why("99999999999999999999s").find("longer than a week") != std::string::npos);
  CHECK(why("18446744073709551615h").find("longer than a week") != std::string::npos);
  CHECK(why("200h").find("longer than a week") != std::string::npos);
  CHECK(why("167h60m0.001s").find("longer than a week") != std::string::npos);
  CHECK(why("1m 30s").find("unknown unit 'm '") != std::string::npos);
  // Every error says how to write one.
  CHECK(why("1m30").find("write it like") != std::string::npos);
}

TEST_CASE("infinity only where a flag allows it") {
  CHECK(parse_duration("infinity", Infinity::Allowed).value() == kInfinity);
  CHECK(parse_duration("inf", Infinity::Allowed).value() == kInfinity);
  const std::string refused = parse_duration("infinity").error().text();
  CHECK(refused.find("not allowed here") != std::string::npos);
  CHECK(refused.find("--drain-timeout") != std::string::npos);
  CHECK(format_duration(kInfinity) == "infinity");
  // Far longer than any finite duration, and a deadline computed from it does not overflow.
  CHECK(kInfinity > kMaxDuration * 100);
  CHECK(std::chrono::steady_clock::now().time_since_epoch() + kInfinity > kInfinity);
}

TEST_CASE("durations print in their shortest exact form, which parses back") {
  CHECK(format_duration(250ms) == "250ms");
  CHECK(format_duration(1500ms) == "1.5s");
  CHECK(format_duration(30000ms) == "30s");
  CHECK(format_duration(120000ms) == "2m");
  CHECK(format_duration(3600000ms) == "1h");
  CHECK(format_duration(90000ms) == "90s");
  CHECK(format_duration(90500ms) == "1m30.5s");
  CHECK(format_duration(12345ms) == "12.345s");
  for (const Millis d : {0ms, 1ms, 999ms, 1000ms, 1001ms, 12345ms, 59999ms, 60001ms, 90500ms, 3723004ms, 604800000ms}) {
    CAPTURE(d.count());
    CHECK(parse_duration(format_duration(d)).value() == d);
  }
}

TEST_CASE("--hold takes a duration of at least 1ms, or manual") {
  const Hold timed = parse_hold("30s").value();
  CHECK(timed.kind == HoldKind::Timed);
  CHECK(timed.duration == 30000ms);
  CHECK(timed.describe() == "30s");
  CHECK(parse_hold("500ms").value().duration == 500ms);
  CHECK(parse_hold("manual").value().kind == HoldKind::Manual);
  CHECK(parse_hold("manual").value().describe() == "manual");
  CHECK(parse_hold("infinity").value().kind == HoldKind::Manual);
  CHECK(parse_hold("1m30s").value().duration == 90000ms);
  CHECK_FALSE(Hold{}.holds());
  CHECK(parse_hold("0s").error().text().find("at least 1ms") != std::string::npos);
  CHECK(parse_hold("30").error().text().find("unit is missing") != std::string::npos);
  CHECK(parse_hold("forever").error().text().find("manual") != std::string::npos);
  CHECK(parse_hold("200h").error().text().find("longer than a week") != std::string::npos);
}

TEST_CASE("signals by name or short name or number") {
  CHECK(parse_signal("SIGTERM").value() == SIGTERM);
  CHECK(parse_signal("QUIT").value() == SIGQUIT);
  CHECK(parse_signal("10").value() == 10);
  CHECK_FALSE(parse_signal("SIGNOPE").ok());
  CHECK_FALSE(parse_signal("0").ok());
  CHECK_FALSE(parse_signal("999").ok());
  CHECK(signal_name(SIGKILL) == "SIGKILL");
}

TEST_CASE("listen specs: tcp and IPv6 and unix with names") {
  auto a = parse_listen_spec("http=tcp://127.0.0.1:8080", 0).value();
  CHECK(a.name == "http");
  CHECK(a.kind == ListenSpec::Kind::Tcp);
  CHECK(a.host == "127.0.0.1");
  CHECK(a.port == 8080);

  auto b = parse_listen_spec("tcp://[::1]:0", 3).value();
  CHECK(b.name == "listen3");
  CHECK(b.host == "::1");
  CHECK(b.port == 0);

  auto c = parse_listen_spec("admin=unix:/run/x=y.sock", 0).value();
  CHECK(c.kind == ListenSpec::Kind::Unix);
  CHECK(c.path == "/run/x=y.sock");
}

TEST_CASE("bad listen specs name what is wrong") {
  const auto why = [](const char* text) { return parse_listen_spec(text, 0).error().text(); };
  CHECK(why("http://1.2.3.4:80").find("unknown address kind") != std::string::npos);
  CHECK(why("tcp://127.0.0.1").find("missing ':PORT'") != std::string::npos);
  CHECK(why("tcp://127.0.0.1:99999").find("port must be") != std::string::npos);
  CHECK(why("tcp://::1:80").find("brackets") != std::string::npos);
  CHECK(why("tcp://[::1]80").find("':PORT'") != std::string::npos);
  CHECK(why("tcp://:80").find("host is empty") != std::string::npos);
  CHECK(why("bad:name=tcp://1.2.3.4:1").find("name must be") != std::string::npos);
  CHECK(why("unix:").find("path is empty") != std::string::npos);
  CHECK(why(("unix:/" + std::string(200, 'a')).c_str()).find("longer than") != std::string::npos);
  auto dup = parse_listen_specs({"a=tcp://127.0.0.1:1", "a=tcp://127.0.0.1:2"});
  CHECK(dup.error().text().find("used twice") != std::string::npos);
}

TEST_CASE("--ready modes") {
  CHECK(parse_ready_mode("notify").value().kind == ReadyMode::Kind::Notify);
  auto e = parse_ready_mode("exec:curl -fs http://x").value();
  CHECK(e.kind == ReadyMode::Kind::Exec);
  CHECK(e.command == "curl -fs http://x");
  auto d = parse_ready_mode("delay:2s").value();
  CHECK(d.kind == ReadyMode::Kind::Delay);
  CHECK(d.delay == 2000ms);
  CHECK_FALSE(parse_ready_mode("exec:").ok());
  CHECK_FALSE(parse_ready_mode("delay:2").ok());
  CHECK(parse_ready_mode("http").error().text().find("expected notify") != std::string::npos);
}
