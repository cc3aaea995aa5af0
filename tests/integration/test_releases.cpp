// Releases under a real supervisor: the history of what ran and how it ended, kept across restarts
// of the supervisor; `rollback` running the exact bytes an earlier release ran, whatever became of
// its file; and a state directory that cannot be written, which never gets in the way of serving.
#include <fmt/format.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "fixture.h"
#include "releases_support.h"

using namespace hotrestart::it;

TEST_CASE("releases: history says what each release ran, who asked, and how it ended, across supervisor restarts") {
  TempDir bins;
  const std::string srv = bins.file("srv");
  install_hello(srv, "one");
  const std::string sha_one = sha256_of(srv);
  const std::string state = bins.file("state");
  {
    Supervisor sup({"--state-dir", state}, {srv, "--version", "v1"});
    install_hello(srv, "two");
    const std::string sha_two = sha256_of(srv);
    RunResult up = sup.upgrade_to({srv, "--version", "v2"});
    REQUIRE_MESSAGE(up.exit_code == 0, up.out << up.err);
    RunResult bad = sup.upgrade_to({bins.file("missing-server")});
    CHECK(bad.exit_code == 1);

    json h = history(sup);
    CHECK(h["active_release"] == 2);
    CHECK(h["releases"].size() == 3);
    const json& one = release(h, 1);
    CHECK(one["origin"] == "run");
    CHECK(one["outcome"] == "retired");
    CHECK(one["reason"] == "replaced by release 2");
    CHECK(one["executable"] == srv);
    CHECK(one["sha256"] == sha_one);
    const json& two = release(h, 2);
    CHECK(two["origin"] == "upgrade");
    CHECK(two["outcome"] == "serving");
    CHECK(two["sha256"] == sha_two);
    CHECK(two["uid"] == static_cast<std::int64_t>(::getuid()));
    CHECK(two["pid"].get<std::int64_t>() > 0);
    CHECK(two["serving_ms"].get<std::int64_t>() >= two["started_ms"].get<std::int64_t>());
    const json& three = release(h, 3);
    CHECK(three["outcome"] == "rolled-back");
    CHECK_MESSAGE(contains(three["reason"].get<std::string>(), "missing-server"), three.dump());
    CHECK(running_sha256(sup.active_pid()) == sha_two);

    RunResult human = sup.cli({"history"}, 10s);
    CHECK(human.exit_code == 0);
    CHECK(contains(human.out, "rolled-back"));
    CHECK(contains(human.out, "  2 * "));
    CHECK(contains(human.out, "replaced by release 2"));
    sup.stop();
  }
  // A new supervisor on the same state directory goes on from there.
  Supervisor again({"--state-dir", state}, {srv, "--version", "v3"});
  json h = history(again);
  CHECK(h["releases"].size() == 4);
  CHECK(release(h, 2)["outcome"] == "stopped");
  CHECK(release(h, 2)["reason"] == "the supervisor stopped");
  CHECK(release(h, 4)["origin"] == "run");
  CHECK(release(h, 4)["outcome"] == "serving");
  CHECK(h["active_release"] == 4);
  // And two supervisors never share one.
  RunResult twin = run({hotrestart_bin(), "run", "--control", bins.file("twin.sock"), "--state-dir", state, "--listen",
                        "tcp://127.0.0.1:0", "--", srv},
                       {}, 10s);
  CHECK(twin.exit_code == 1);
  CHECK_MESSAGE(contains(twin.err, "the state directory " + state + " is in use by another supervisor"), twin.err);
  again.stop();
}

TEST_CASE(
    "rollback: the previous release's exact bytes run again after its file was replaced, then deleted, under load") {
  TempDir bins;
  const std::string srv = bins.file("srv");
  install_hello(srv, "one");
  const std::string sha_one = sha256_of(srv);
  Supervisor sup({"--drain-timeout", "10s"}, {srv, "--version", "v1"});
  const std::uint16_t port = sup.port();
  MixedLoad load(port, 2);
  LoadClient& keepalive = load.keepalive;
  LoadClient& fresh = load.fresh;
  let_load_run(keepalive, 50);

  install_hello(srv, "two");  // The file on disk is another one now.
  const std::string sha_two = sha256_of(srv);
  RunResult up = sup.upgrade_to({srv, "--version", "v2"});
  REQUIRE_MESSAGE(up.exit_code == 0, up.out << up.err);
  CHECK(running_sha256(sup.active_pid()) == sha_two);
  let_load_run(fresh, 50);

  // Back to release 1: its bytes, not what the path holds now.
  RunResult back = sup.cli({"rollback"}, 60s);
  REQUIRE_MESSAGE(back.exit_code == 0, back.out << back.err);
  CHECK(contains(back.out, "rollback succeeded"));
  CHECK(running_sha256(sup.active_pid()) == sha_one);
  CHECK(contains(http_get(port, "/"), "version=v1"));
  json h = history(sup);
  CHECK(release(h, 3)["origin"] == "rollback");
  CHECK(release(h, 3)["rollback_of"] == 1);
  CHECK(release(h, 3)["sha256"] == sha_one);
  CHECK(release(h, 2)["outcome"] == "retired");
  let_load_run(keepalive, 50);

  // The file deleted: release 2 still runs as it did.
  std::filesystem::remove(srv);
  RunResult forward = sup.cli({"rollback", "--to", "2"}, 60s);
  REQUIRE_MESSAGE(forward.exit_code == 0, forward.out << forward.err);
  CHECK(running_sha256(sup.active_pid()) == sha_two);
  CHECK(contains(http_get(port, "/"), "version=v2"));
  let_load_run(fresh, 50);
  load.finish();
  sup.stop();
}

TEST_CASE(
    "rollback: refused with exit 3 when there is nothing to go back to, during an upgrade, or when the bytes are "
    "gone") {
  TempDir bins;
  const std::string srv = bins.file("srv");
  install_hello(srv, "one");
  Supervisor sup({"--ready-timeout", "4s"}, {srv, "--version", "v1"});

  RunResult nothing = sup.cli({"rollback"}, 10s);
  CHECK(nothing.exit_code == 3);
  CHECK_MESSAGE(contains(nothing.err, "no release before release 1 served: there is nothing to roll back to"),
                nothing.err);
  RunResult unknown = sup.cli({"rollback", "--to", "9"}, 10s);
  CHECK(unknown.exit_code == 3);
  CHECK(contains(unknown.err, "release 9 is not in the history"));

  // An upgrade that hangs in the handshake (a worker that never reports ready): a rollback meanwhile
  // is refused as busy.
  Child slow =
      Child::spawn({hotrestart_bin(), "upgrade", "--control", sup.control(), "--", test_worker_bin(), "no-ready"});
  REQUIRE(wait_until(
      [&] {
        auto s = sup.status();
        return s && !(*s)["upgrade"].is_null();
      },
      10s));
  RunResult busy = sup.cli({"rollback"}, 10s);
  CHECK(busy.exit_code == 3);
  CHECK(contains(busy.err, "upgrade in progress"));
  CHECK(slow.wait_for(30s) == std::optional<int>(1));  // That upgrade rolls back at its ready timeout.

  // Release 1's file rewritten in place (the same inode, as `cp` over it does) after release 2
  // replaced it: the bytes release 1 ran exist nowhere any more.
  const std::string other = bins.file("other");
  install_hello(other, "two");
  REQUIRE(sup.upgrade_to({other, "--version", "v2"}).exit_code == 0);
  // Not while release 1's generation still drains: a running executable cannot be opened for
  // writing (ETXTBSY).
  REQUIRE(wait_until([&] { return sup.status_or_fail()["generations"].size() == 1; }, 30s));
  {
    std::ofstream rewrite(srv, std::ios::binary | std::ios::trunc);
    rewrite << "#!/bin/sh\nexit 1\n";
    REQUIRE_MESSAGE(rewrite.flush().good(), "cannot rewrite " << srv);
  }
  RunResult gone = sup.cli({"rollback", "--to", "1"}, 10s);
  CHECK(gone.exit_code == 3);
  CHECK_MESSAGE(contains(gone.err, "release 1 cannot be run again: " + srv + " was rewritten in place since it ran"),
                gone.err);
  CHECK(contains(http_get(sup.port(), "/"), "version=v2"));
  sup.stop();
}

TEST_CASE("releases: a state directory that cannot be written never gets in the way, and status says why") {
  TempDir bins;
  const std::string state = bins.file("state");
  Supervisor sup({"--state-dir", state}, hello("v1"));
  // The history file's place taken by a directory: every write of it fails.
  const std::string file = state + "/releases.json";
  // A write still under way (off the loop) may put the file back between the two steps: again then.
  REQUIRE(wait_until(
      [&] {
        std::error_code ec;
        std::filesystem::remove(file, ec);
        std::filesystem::create_directories(file + "/in-the-way", ec);
        return !ec && std::filesystem::is_directory(file);
      },
      10s));
  RunResult up = sup.upgrade_to(hello("v2"));
  CHECK_MESSAGE(up.exit_code == 0, up.out << up.err);
  CHECK(contains(http_get(sup.port(), "/"), "version=v2"));
  REQUIRE(wait_until(
      [&] {
        auto s = sup.status();
        return s && (*s)["releases"]["error"].is_string();
      },
      10s));
  json s = sup.status_or_fail();
  CHECK_MESSAGE(contains(s["releases"]["error"].get<std::string>(), "rename to " + file), s["releases"].dump());
  CHECK(history(sup)["releases"].size() == 2);  // Kept in memory all the same.
  // Cleared: the next change is written, and the error goes away.
  std::filesystem::remove_all(file);
  REQUIRE(sup.upgrade_to(hello("v3")).exit_code == 0);
  REQUIRE(wait_until(
      [&] {
        auto st = sup.status();
        return st && (*st)["releases"]["error"].is_null();
      },
      10s));
  CHECK(json::parse(*read_file(file))["releases"].size() == 3);
  sup.stop();
}

TEST_CASE("releases: a state directory on a full tmpfs never gets in the way of serving or upgrading") {
  if (::geteuid() != 0) {
    MESSAGE("skipped: mounting a tmpfs needs root");
    return;
  }
  TempDir bins;
  const std::string mount = bins.file("small");
  std::filesystem::create_directories(mount);
  // In a mount namespace of the supervisor's own: a 64 KiB tmpfs, its state directory made, then
  // filled to the last byte, before the supervisor starts.
  const std::string setup = fmt::format(
      "mount -t tmpfs -o size=64k tmpfs {0} && mkdir {0}/state && (dd if=/dev/zero of={0}/fill bs=4k || true) "
      "2>/dev/null && exec \"$@\"",
      mount);
  Supervisor sup({"--state-dir", mount + "/state"}, hello("v1"), true, {},
                 {"unshare", "--mount", "--propagation", "private", "sh", "-c", setup, "sh"});
  const std::uint16_t port = sup.port();
  MixedLoad load(port, 2);
  let_load_run(load.keepalive, 50);
  REQUIRE(wait_until(
      [&] {
        auto s = sup.status();
        return s && (*s)["releases"]["error"].is_string();
      },
      10s));
  const std::string error = sup.status_or_fail()["releases"]["error"].get<std::string>();
  CHECK_MESSAGE(contains(error, "No space left on device"), error);
  RunResult up = sup.upgrade_to(hello("v2"));
  CHECK_MESSAGE(up.exit_code == 0, up.out << up.err);
  CHECK(contains(http_get(port, "/"), "version=v2"));
  RunResult h = sup.cli({"history"}, 10s);
  CHECK(h.exit_code == 0);
  CHECK_MESSAGE(contains(h.out, "write error: "), h.out);
  CHECK(history(sup)["releases"].size() == 2);
  let_load_run(load.fresh, 50);
  load.finish();
  sup.stop();
}

TEST_CASE("rollback: kv-cache v2 back to v1 keeps every entry, with no failed request under load") {
  const auto kv = [](const std::string& build) { return std::vector<std::string>{bin_path("kv-cache-" + build)}; };
  Supervisor sup({"--state-required", "cache", "--drain-timeout", "10s"}, kv("v1"));
  const std::uint16_t port = sup.port();
  const auto put = [&](const std::string& key, const std::string& value) {
    RunResult r = run({"curl", "-sS", "--max-time", "5", "-o", "/dev/null", "-w", "%{http_code}", "-X", "PUT",
                       "--data-binary", value, fmt::format("http://127.0.0.1:{}/kv/{}", port, key)},
                      {}, 10s);
    return r.out;
  };
  for (int i = 0; i < 40; ++i)
    REQUIRE(put(fmt::format("k{}", i), fmt::format("v1-{}", i)) == "204");
  MixedLoad load(port, 2);
  LoadClient& keepalive = load.keepalive;
  LoadClient& fresh = load.fresh;
  let_load_run(keepalive, 50);

  RunResult up = sup.upgrade_to(kv("v2"));
  REQUIRE_MESSAGE(up.exit_code == 0, up.out << up.err);
  for (int i = 40; i < 60; ++i)
    REQUIRE(put(fmt::format("k{}", i), fmt::format("v2-{}", i)) == "204");
  let_load_run(fresh, 50);

  RunResult back = sup.cli({"rollback"}, 60s);
  REQUIRE_MESSAGE(back.exit_code == 0, back.out << back.err);
  CHECK(contains(back.out, "state transfer finished: 1 of 1 section(s) imported"));  // v2 -> v1 moved it.
  CHECK(contains(http_get(port, "/"), "kv-cache"));
  for (int i = 0; i < 60; ++i) {
    const std::string expected = fmt::format("{}-{}", i < 40 ? "v1" : "v2", i);
    CHECK(http_get(port, fmt::format("/kv/k{}", i)) == expected);
  }
  json h = history(sup);
  CHECK(release(h, 3)["rollback_of"] == 1);
  CHECK(release(h, 3)["outcome"] == "serving");
  CHECK(running_sha256(sup.active_pid()) == sha256_of(bin_path("kv-cache-v1")));
  let_load_run(keepalive, 50);
  load.finish();
  sup.stop();
}
