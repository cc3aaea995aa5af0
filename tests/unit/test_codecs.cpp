// Decoders for untrusted input: notify datagrams and control-socket lines.
#include <doctest/doctest.h>

#include <string>

#include "control_protocol.h"
#include "notify_message.h"

using namespace hotrestart;

TEST_CASE("notify: the usual datagrams") {
  auto m = parse_notify("READY=1\nSTATUS=serving v2\nMAINPID=42\n");
  CHECK(m.ready);
  CHECK(m.status == "serving v2");
  CHECK(m.mainpid == 42);
  CHECK(m.problems.empty());
  CHECK(parse_notify("STOPPING=1").stopping);
  CHECK_FALSE(parse_notify("READY=0").ready);
  CHECK(parse_notify("WATCHDOG=1\nX_UNKNOWN=5").problems.empty());  // unknown keys are ignored
}

TEST_CASE("notify: malformed and hostile datagrams never throw and are reported") {
  CHECK(parse_notify("garbage").problems.size() == 1);
  CHECK(parse_notify("=1").problems.size() == 1);
  CHECK(parse_notify(std::string("READY=1\x01", 8)).problems.size() == 1);
  CHECK_FALSE(parse_notify(std::string("READY=1\x01", 8)).ready);
  CHECK(parse_notify("MAINPID=-3").problems.size() == 1);
  CHECK(parse_notify("MAINPID=99999999999999").problems.size() == 1);
  auto big = parse_notify(std::string(kNotifyMaxDatagram + 1, 'A'));
  CHECK_FALSE(big.ready);
  CHECK(big.problems.size() == 1);
  CHECK(parse_notify(std::string(1000, '\n')).problems.empty());
  CHECK(parse_notify("STATUS=" + std::string(2000, 'x')).status->size() == 256);
}

TEST_CASE("line reader: lines and partial lines within the size bound") {
  LineReader r(16);
  CHECK(r.feed("abc\nde"));
  CHECK(r.next_line() == "abc");
  CHECK_FALSE(r.next_line().has_value());
  CHECK(r.feed("f\r\n"));
  CHECK(r.next_line() == "def");
  CHECK_FALSE(r.feed(std::string(17, 'x')));
  CHECK(r.overflowed());
  CHECK_FALSE(r.feed("ok\n"));  // stays failed

  // A complete line over the limit that arrived with its newline in one read fails as well.
  LineReader whole(16);
  CHECK_FALSE(whole.feed(std::string(20, 'y') + "\n"));
  CHECK(whole.overflowed());
}

TEST_CASE("control lines: depth then syntax then type are checked before use") {
  CHECK(parse_control_line(R"({"v":1,"cmd":"status"})").ok());
  CHECK(parse_control_line("not json").error().text() == "message is not valid JSON");
  CHECK(parse_control_line("[1,2]").error().text() == "message is not a JSON object");
  CHECK(parse_control_line(std::string(100000, '[')).error().text().find("over the") != std::string::npos);
  CHECK(parse_control_line(std::string(50, '[')).error().text().find("nests deeper") != std::string::npos);
  // Brackets inside strings do not count as nesting.
  CHECK(parse_control_line(R"({"v":1,"cmd":"[[[[[[[[[[[[[[[["})").ok());
  // A key twice in one object is refused, at any depth; the same key in two objects is not.
  CHECK(parse_control_line(R"({"v":1,"cmd":"status","cmd":"stop"})").error().text() ==
        "message has the key 'cmd' twice in one object");
  CHECK(parse_control_line(R"({"v":1,"cmd":"upgrade","hold":{"a":1,"a":2}})").error().text() ==
        "message has the key 'a' twice in one object");
  CHECK(parse_control_line(R"({"v":1,"cmd":"x","o":{"v":1},"p":[{"v":2},{"v":3}]})").ok());
}

TEST_CASE("control requests: the valid forms") {
  using nlohmann::json;
  auto s = std::get<ControlRequest>(decode_control_request(json::parse(R"({"v":1,"cmd":"status"})")));
  CHECK(s.command == ControlRequest::Command::ShowStatus);
  auto u = std::get<ControlRequest>(decode_control_request(json::parse(R"({"v":1,"cmd":"upgrade","exec":"/bin/x"})")));
  CHECK(u.command == ControlRequest::Command::Upgrade);
  CHECK(u.exec == "/bin/x");
  auto c =
      std::get<ControlRequest>(decode_control_request(json::parse(R"({"v":1,"cmd":"upgrade","command":["a","b"]})")));
  CHECK(c.argv->size() == 2);
  CHECK_FALSE(c.hold.holds());
  auto held = std::get<ControlRequest>(decode_control_request(json::parse(R"({"v":1,"cmd":"upgrade","hold":30000})")));
  CHECK(held.hold.kind == HoldKind::Timed);
  CHECK(held.hold.duration.count() == 30000);
  auto manual =
      std::get<ControlRequest>(decode_control_request(json::parse(R"({"v":1,"cmd":"rollback","hold":"manual"})")));
  CHECK(manual.command == ControlRequest::Command::Rollback);
  CHECK(manual.hold.kind == HoldKind::Manual);
  CHECK(std::get<ControlRequest>(decode_control_request(json::parse(R"({"v":1,"cmd":"promote"})"))).command ==
        ControlRequest::Command::Promote);
  CHECK(std::get<ControlRequest>(decode_control_request(json::parse(R"({"v":1,"cmd":"abort"})"))).command ==
        ControlRequest::Command::Abort);
  CHECK_FALSE(c.preflight.has_value());
}

TEST_CASE("control requests: an upgrade or a rollback may bring its own preflight check, or none") {
  using nlohmann::json;
  const auto request = [](const char* text) {
    return std::get<ControlRequest>(decode_control_request(json::parse(text)));
  };
  CHECK(request(R"({"v":1,"cmd":"upgrade","preflight":"nginx -t"})").preflight == "nginx -t");
  CHECK(request(R"({"v":1,"cmd":"upgrade","preflight":""})").preflight == "");
  const auto rollback = request(R"({"v":1,"cmd":"rollback","to":3,"preflight":"true"})");
  CHECK(rollback.command == ControlRequest::Command::Rollback);
  CHECK(rollback.preflight == "true");
  // Only deployments run a check: elsewhere the field is unknown, and ignored like any other.
  CHECK_FALSE(request(R"({"v":1,"cmd":"status","preflight":5})").preflight.has_value());
  const auto err = [](const char* text) {
    return std::get<ControlRequestError>(decode_control_request(json::parse(text)));
  };
  CHECK(err(R"({"v":1,"cmd":"upgrade","preflight":5})").message.find("\"preflight\" must be a string") !=
        std::string::npos);
  CHECK(err(R"({"v":1,"cmd":"rollback","preflight":["x"]})").code == "bad-request");
  CHECK(err(R"({"v":1,"cmd":"upgrade","preflight":"a\u0000b"})").message.find("NUL") != std::string::npos);
}

TEST_CASE("control requests: every malformed field is named") {
  using nlohmann::json;
  const auto err = [](const char* text) {
    return std::get<ControlRequestError>(decode_control_request(json::parse(text)));
  };
  CHECK(err(R"({"cmd":"status"})").code == "bad-request");
  CHECK(err(R"({"v":2,"cmd":"status"})").code == "version");
  CHECK(err(R"({"v":2,"cmd":"status"})").message.find("speaks version 1") != std::string::npos);
  CHECK(err(R"({"v":1})").message.find("\"cmd\"") != std::string::npos);
  CHECK(err(R"({"v":1,"cmd":"reboot"})").message.find("unknown command") != std::string::npos);
  CHECK(err(R"({"v":1,"cmd":"upgrade","exec":""})").message.find("exec") != std::string::npos);
  CHECK(err(R"({"v":1,"cmd":"upgrade","exec":5})").message.find("exec") != std::string::npos);
  CHECK(err(R"({"v":1,"cmd":"upgrade","command":[]})").message.find("command") != std::string::npos);
  CHECK(err(R"({"v":1,"cmd":"upgrade","command":[1]})").message.find("only strings") != std::string::npos);
  CHECK(err(R"({"v":1,"cmd":"upgrade","command":["a"],"exec":"b"})").message.find("not both") != std::string::npos);
  CHECK(err(R"({"v":1,"cmd":"upgrade","command":["a\u0000b"]})").message.find("NUL") != std::string::npos);
  for (const char* hold : {R"({"v":1,"cmd":"upgrade","hold":0})", R"({"v":1,"cmd":"upgrade","hold":-5})",
                           R"({"v":1,"cmd":"upgrade","hold":1.5})", R"({"v":1,"cmd":"upgrade","hold":"30s"})",
                           R"({"v":1,"cmd":"upgrade","hold":604800001})", R"({"v":1,"cmd":"rollback","hold":true})"}) {
    CHECK_MESSAGE(err(hold).message.find("\"hold\" must be") != std::string::npos, hold);
  }
}

TEST_CASE("replies survive invalid UTF-8 from a hostile peer") {
  const std::string line = to_line(control_error("bad-request", std::string("\xff\xfe bad", 6)));
  CHECK(line.back() == '\n');
  CHECK(parse_control_line(line.substr(0, line.size() - 1)).ok());
}
