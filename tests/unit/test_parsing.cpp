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

TEST_CASE("durations take a whole number and a unit") {
  CHECK(parse_duration("500ms").value() == 500ms);
  CHECK(parse_duration("5s").value() == 5000ms);
  CHECK(parse_duration("2m").value() == 120000ms);
  CHECK(parse_duration("1h").value() == 3600000ms);
  CHECK(parse_duration("0s").value() == 0ms);
}

TEST_CASE("bad durations are refused with the reason") {
  CHECK(parse_duration("30").error().text().find("unit is missing") != std::string::npos);
  CHECK(parse_duration("").error().text().find("empty") != std::string::npos);
  CHECK(parse_duration("5x").error().text().find("unknown unit 'x'") != std::string::npos);
  CHECK(parse_duration("-5s").error().text().find("whole number") != std::string::npos);
  CHECK(parse_duration("1.5s").error().text().find("unknown unit") != std::string::npos);
  CHECK(parse_duration("99999999999999999999s").error().text().find("too large") != std::string::npos);
  CHECK(parse_duration("200h").error().text().find("longer than a week") != std::string::npos);
}

TEST_CASE("durations print in their shortest exact form") {
  CHECK(format_duration(250ms) == "250ms");
  CHECK(format_duration(1500ms) == "1.5s");
  CHECK(format_duration(30000ms) == "30s");
  CHECK(format_duration(120000ms) == "2m");
  CHECK(format_duration(3600000ms) == "1h");
  CHECK(format_duration(90000ms) == "90s");
  CHECK(format_duration(90500ms) == "1m30s");
}

TEST_CASE("--hold takes a duration of at least 1ms, or manual") {
  const Hold timed = parse_hold("30s").value();
  CHECK(timed.kind == HoldKind::Timed);
  CHECK(timed.duration == 30000ms);
  CHECK(timed.describe() == "30s");
  CHECK(parse_hold("500ms").value().duration == 500ms);
  CHECK(parse_hold("manual").value().kind == HoldKind::Manual);
  CHECK(parse_hold("manual").value().describe() == "manual");
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
