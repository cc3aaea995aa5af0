// The configurations' pure parts: --config specs, the history's entries as JSON, reading a file with
// its checks, the store's versions and what it keeps, and the control requests that name them.
#include <doctest/doctest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <variant>

#include "config_store.h"
#include "control_protocol.h"
#include "testsupport.h"

using namespace hotrestart;
using nlohmann::json;

namespace {

void put(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
}

ConfigVersion entry(std::uint64_t version, ConfigOutcome outcome = ConfigOutcome::Applied) {
  ConfigVersion v;
  v.version = version;
  v.sha256 = sha256_hex(std::to_string(version));
  v.bytes = 1;
  v.origin = "reload";
  v.outcome = outcome;
  return v;
}

std::string request_error(const json& j) {
  auto r = decode_control_request(j);
  return std::holds_alternative<ControlRequestError>(r) ? std::get<ControlRequestError>(r).message : "decoded";
}

}  // namespace

TEST_CASE("config store: --config specs name what is wrong") {
  auto spec = parse_config_spec("app=/etc/app.conf");
  REQUIRE(spec);
  CHECK(spec->name == "app");
  CHECK(spec->path == "/etc/app.conf");
  CHECK(parse_config_spec("app").error().text() == "--config 'app': give NAME=PATH (for example app=/etc/app.conf)");
  CHECK(parse_config_spec("a b=/x").error().text() ==
        "--config 'a b=/x': the name 'a b' is not valid (1-128 of A-Z a-z 0-9 . _ : -)");
  CHECK(parse_config_spec("app=").error().text() == "--config 'app=': the path is empty");
}

TEST_CASE("config store: entries read back, and what is not an entry is left out") {
  ConfigVersion v = entry(7);
  v.restores = 3;
  v.generations = {2, 3};
  v.uid = 1000;
  v.reason = "why";
  auto back = config_version_from_json(to_json(v));
  REQUIRE(back);
  CHECK(back->version == 7);
  CHECK(back->restores == 3);
  CHECK(back->generations == std::vector<std::uint64_t>{2, 3});
  CHECK(back->uid == 1000);
  CHECK(back->reason == "why");
  CHECK_FALSE(config_version_from_json(json{{"version", 1}}));
  json bad = to_json(v);
  bad["outcome"] = "maybe";
  CHECK_FALSE(config_version_from_json(bad));
  bad = to_json(v);
  bad["version"] = "seven";
  CHECK_FALSE(config_version_from_json(bad));
  CHECK_FALSE(config_version_from_json(json::array()));
}

TEST_CASE("config store: a file is read whole, with its hash, or refused naming why") {
  hotrestart::testsupport::TempDir dir;
  const std::string path = dir.file("app.conf");
  put(path, "greeting=hello\n");
  auto read = read_config_file(path);
  REQUIRE(read);
  CHECK(*read->bytes == "greeting=hello\n");
  CHECK(read->sha256 == sha256_hex("greeting=hello\n"));
  CHECK(read->sha256.size() == 64);
  CHECK(identity_of_path(path).value() == read->identity);

  put(path, "");
  CHECK(read_config_file(path).error().text() == path + " is empty");
  REQUIRE(::truncate(path.c_str(), kMaxConfigBytes + 1) == 0);
  CHECK(read_config_file(path).error().text() ==
        path + " is 16777217 bytes, more than the 16777216 a configuration may have");
  REQUIRE(::truncate(path.c_str(), kMaxConfigBytes) == 0);
  CHECK(read_config_file(path));
  CHECK(read_config_file(dir.path()).error().text() == dir.path() + " is not a regular file");
  CHECK(read_config_file(dir.file("gone")).error().text().starts_with("cannot read " + dir.file("gone")));
  REQUIRE(::mkfifo(dir.file("fifo").c_str(), 0600) == 0);
  CHECK(read_config_file(dir.file("fifo")).error().text() == dir.file("fifo") + " is not a regular file");
}

TEST_CASE("config store: versions, the live one, and the history across a reopen") {
  hotrestart::testsupport::TempDir dir;
  {
    ConfigStore store(dir.path(), "app");
    REQUIRE(store.open());
    CHECK(store.live() == nullptr);
    CHECK(store.next_version() == 1);
    store.add(entry(1));
    store.add(entry(2, ConfigOutcome::Refused));
    const std::string rendered = store.add(entry(3));
    CHECK(store.live()->version == 3);
    CHECK(store.applied_before(3)->version == 1);
    CHECK(store.next_version() == 4);
    put(store.history_path(), rendered);
    for (std::uint64_t v : {1, 3})
      put(store.content_path(v), "bytes");
  }
  ConfigStore again(dir.path(), "app");
  REQUIRE(again.open());
  REQUIRE(again.versions().size() == 3);
  CHECK(again.live()->version == 3);
  CHECK(again.find(2)->outcome == ConfigOutcome::Refused);
  // Version 2's bytes were never written: it is known not to be kept.
  CHECK_FALSE(again.find(2)->kept);
  CHECK(again.find(1)->kept);

  // An unreadable history is set aside, and the store starts empty.
  put(again.history_path(), "{not json");
  ConfigStore third(dir.path(), "app");
  REQUIRE(third.open());
  CHECK(third.versions().empty());
  CHECK(third.error().find("could not be read; it was set aside") != std::string::npos);
}

TEST_CASE("config store: the bytes of the newest versions are kept, and the live one's always") {
  hotrestart::testsupport::TempDir dir;
  ConfigStore store(dir.path(), "app");
  REQUIRE(store.open());
  store.add(entry(1));
  put(store.content_path(1), "live");
  for (std::uint64_t v = 2; v <= kConfigVersionsKept + 5; ++v) {
    put(store.content_path(v), "refused");
    store.add(entry(v, ConfigOutcome::Refused));
  }
  CHECK(store.find(1)->kept);  // Still the live one.
  CHECK(::access(store.content_path(1).c_str(), R_OK) == 0);
  CHECK_FALSE(store.find(2)->kept);
  CHECK(::access(store.content_path(2).c_str(), R_OK) != 0);
  CHECK(store.find(kConfigVersionsKept + 5)->kept);
}

TEST_CASE("config store: the control requests for configurations") {
  auto r = decode_control_request(json{{"v", 1}, {"cmd", "reload"}, {"config", "app"}, {"file", "/tmp/x"}});
  REQUIRE(std::holds_alternative<ControlRequest>(r));
  CHECK(std::get<ControlRequest>(r).command == ControlRequest::Command::Reload);
  CHECK(std::get<ControlRequest>(r).config == "app");
  CHECK(std::get<ControlRequest>(r).file == "/tmp/x");
  r = decode_control_request(json{{"v", 1}, {"cmd", "config-rollback"}, {"version", 3u}});
  REQUIRE(std::holds_alternative<ControlRequest>(r));
  CHECK(std::get<ControlRequest>(r).version == 3u);
  CHECK(request_error(json{{"v", 1}, {"cmd", "reload"}, {"config", ""}}) ==
        "\"config\" must be a configuration's name (1 to 128 bytes)");
  CHECK(request_error(json{{"v", 1}, {"cmd", "reload"}, {"file", 5}}) ==
        "\"file\" must be a non-empty path without NUL bytes");
  CHECK(request_error(json{{"v", 1}, {"cmd", "config-rollback"}, {"version", 0}}) ==
        "\"version\" must be a configuration version (a positive integer)");
  CHECK(request_error(json{{"v", 1}, {"cmd", "config-rollback"}, {"version", -2}}) ==
        "\"version\" must be a configuration version (a positive integer)");
}
