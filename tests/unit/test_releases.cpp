// Releases on their own: the outcome table, the bounded history and its file format, the state
// directory's atomic writes and lock, and executables opened, hashed and checked for change.
#include <doctest/doctest.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>

#include <nlohmann/json.hpp>

#include "executable.h"
#include "release_store.h"
#include "releases.h"
#include "testsupport.h"

using namespace hotrestart;
using nlohmann::json;

namespace {

Release release_of(std::vector<std::string> command) {
  Release r;
  r.command = std::move(command);
  r.started_ms = 1000;
  return r;
}

void write_text(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
}

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// Runs `loop` until `done` holds, for at most five seconds.
bool run_until(uv_loop_t* loop, const std::function<bool()>& done) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (!done() && std::chrono::steady_clock::now() < deadline)
    uv_run(loop, UV_RUN_ONCE);
  return done();
}

}  // namespace

TEST_CASE("releases: outcomes move only along the table") {
  using O = ReleaseOutcome;
  CHECK(transition_allowed(O::Starting, O::Serving));
  CHECK(transition_allowed(O::Starting, O::RolledBack));
  CHECK(transition_allowed(O::Starting, O::Stopped));
  CHECK(transition_allowed(O::Serving, O::Retired));
  CHECK(transition_allowed(O::Serving, O::Reverted));
  CHECK(transition_allowed(O::Serving, O::Stopped));
  CHECK_FALSE(transition_allowed(O::RolledBack, O::Serving));
  // A revert that resumes a retired release's parked generation makes it serve again.
  CHECK(transition_allowed(O::Retired, O::Serving));
  CHECK_FALSE(transition_allowed(O::Retired, O::Reverted));
  CHECK_FALSE(transition_allowed(O::Starting, O::Retired));
  CHECK(release_outcome_name(O::RolledBack) == "rolled-back");
  CHECK(release_origin_name(ReleaseOrigin::Signal) == "SIGUSR2");
  CHECK(release_origin_name(ReleaseOrigin::Reload) == "SIGHUP");

  ReleaseHistory h;
  const auto n = h.add(release_of({"./srv"})).number;
  CHECK(n == 1);
  CHECK_FALSE(h.set_outcome(n, O::Retired, "x", 5));  // Not from starting.
  CHECK(h.set_outcome(n, O::Serving, {}, 2000));
  CHECK(h.find(n)->serving_ms == 2000);
  CHECK(h.set_outcome(n, O::Retired, "replaced by release 2", 3000));
  CHECK(h.find(n)->ended_ms == 3000);
  CHECK(h.find(n)->reason == "replaced by release 2");
}

TEST_CASE("releases: numbers keep growing, only the last 50 are kept, and rollback goes to the last that served") {
  ReleaseHistory h;
  for (int i = 0; i < 60; ++i) {
    const auto n = h.add(release_of({"./srv", std::to_string(i)})).number;
    if (i % 3 != 2) h.set_outcome(n, ReleaseOutcome::Serving, {}, 1);
    if (i % 3 == 1) h.set_outcome(n, ReleaseOutcome::Reverted, "crashed", 2);
    if (i % 3 == 2) h.set_outcome(n, ReleaseOutcome::RolledBack, "exec failed", 2);
  }
  CHECK(h.releases().size() == ReleaseHistory::kKept);
  CHECK(h.releases().front().number == 11);
  CHECK(h.next_number() == 61);
  CHECK(h.find(10) == nullptr);
  // Release n is i = n - 1: i % 3 == 0 served, 1 served and was reverted, 2 was rolled back. Before
  // 60, release 59 was reverted and 58 served: 58 is where a rollback goes.
  const Release* good = h.last_good_before(60);
  REQUIRE(good != nullptr);
  CHECK(good->number == 58);
  CHECK(h.last_good_before(11) == nullptr);
}

TEST_CASE("releases: rollback skips a release that runs what the active one runs") {
  ReleaseHistory h;
  const auto serve = [&](std::vector<std::string> command, std::string sha) {
    Release r = release_of(std::move(command));
    r.sha256 = std::move(sha);
    const auto n = h.add(std::move(r)).number;
    h.set_outcome(n, ReleaseOutcome::Serving, {}, 1);
    return n;
  };
  serve({"./srv", "v1"}, "aaa");
  serve({"./srv", "v2"}, "aaa");
  const auto again = serve({"./srv", "v1"}, "aaa");  // v1 came back (a rollback or a revert).
  // Going back from the second v1 lands on v2, not on the first v1 (nothing would change).
  CHECK(h.last_good_before(again)->number == 2);
  const auto rebuilt = serve({"./srv", "v2"}, "bbb");  // Other bytes: a release of its own.
  CHECK(h.last_good_before(rebuilt)->number == again);
}

TEST_CASE("releases: the history file round-trips, and a bad one is refused with the field it names") {
  ReleaseHistory h;
  auto& r = h.add(release_of({"/srv/app", "--port", "80"}));
  r.sha256 = std::string(64, 'a');
  r.uid = 1000;
  r.pid = 4242;
  r.origin = ReleaseOrigin::Upgrade;
  h.set_outcome(r.number, ReleaseOutcome::Serving, {}, 1500);
  auto back = ReleaseHistory::from_json(json::parse(h.to_json().dump()));
  REQUIRE(back.ok());
  REQUIRE(back->releases().size() == 1);
  const Release& b = back->releases().front();
  CHECK(b.command == std::vector<std::string>{"/srv/app", "--port", "80"});
  CHECK(b.uid == 1000);
  CHECK(b.pid == 4242);
  CHECK(b.origin == ReleaseOrigin::Upgrade);
  CHECK(b.outcome == ReleaseOutcome::Serving);
  CHECK(b.serving_ms == 1500);
  CHECK(back->next_number() == 2);

  const auto refused = [](const std::string& text) {
    auto parsed = ReleaseHistory::from_json(json::parse(text, nullptr, false));
    REQUIRE_FALSE(parsed.ok());
    return parsed.error().text();
  };
  CHECK(refused(R"({"v":2,"next_release":1,"releases":[]})") == "the history's format version is not 1");
  CHECK(refused(R"({"v":1,"next_release":0,"releases":[]})") == "\"next_release\" is not a positive integer");
  CHECK(refused(R"({"v":1,"next_release":5,"releases":[{"number":1}]})") ==
        "release 1 of the history: \"command\" is not an array of 1 to 4096 strings");
  CHECK(refused(
            R"({"v":1,"next_release":5,"releases":[{"number":1,"command":["x"],"outcome":"happy","origin":"run"}]})") ==
        "release 1 of the history: \"outcome\" 'happy' is not one of the outcomes");
  CHECK(
      refused(
          R"({"v":1,"next_release":5,"releases":[{"number":1,"command":["x"],"outcome":"serving","origin":"run","uid":"me"}]})") ==
      "release 1 of the history: \"uid\" is not an integer");
  CHECK(
      refused(
          R"({"v":1,"next_release":2,"releases":[{"number":3,"command":["x"],"outcome":"serving","origin":"run"}]})") ==
      "release 1 of the history: its number 3 is out of order");
  CHECK(refused("[1,2]") == "the history is not a JSON object");
}

TEST_CASE("releases: a history left by a supervisor that is gone ends what it was running") {
  ReleaseHistory h;
  const auto serving = h.add(release_of({"a"})).number;
  h.set_outcome(serving, ReleaseOutcome::Serving, {}, 1);
  const auto starting = h.add(release_of({"b"})).number;
  h.end_inherited(99);
  CHECK(h.find(serving)->outcome == ReleaseOutcome::Stopped);
  CHECK(h.find(serving)->reason == "the supervisor that ran it is gone");
  CHECK(h.find(starting)->outcome == ReleaseOutcome::RolledBack);
  CHECK(h.last_good_before(3)->number == serving);
}

TEST_CASE("state directory: files are replaced whole, and a failure names the file") {
  testsupport::TempDir dir;
  const std::string path = dir.file("f.json");
  REQUIRE(write_file_atomically(path, "one").ok());
  REQUIRE(write_file_atomically(path, "two").ok());
  CHECK(read_text(path) == "two");
  struct stat st {};
  REQUIRE(::stat(path.c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0600);
  // A directory where the file should go: the rename fails, and no temp file is left behind.
  const std::string blocked = dir.file("blocked.json");
  REQUIRE(::mkdir(blocked.c_str(), 0700) == 0);
  ::mkdir((blocked + "/x").c_str(), 0700);
  auto failed = write_file_atomically(blocked, "three");
  REQUIRE_FALSE(failed.ok());
  CHECK(failed.error().text().starts_with("write " + blocked + ": rename to " + blocked));
  std::size_t entries = 0;
  for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator(dir.path()))
    ++entries;
  CHECK(entries == 2);  // f.json and blocked.json: no temp file.
}

TEST_CASE("state directory: the history is written off the loop, read back, and locked against a second supervisor") {
  testsupport::TempDir dir;
  const std::string state = dir.file("state");
  uv_loop_t loop;
  uv_loop_init(&loop);
  {
    ReleaseStore store(&loop, state);
    REQUIRE(store.open().ok());
    ReleaseStore twin(&loop, state);
    auto refused = twin.open();
    REQUIRE_FALSE(refused.ok());
    CHECK(refused.error().text().find("is in use by another supervisor") != std::string::npos);

    store.history().add(release_of({"./srv", "v1"}));
    store.save();
    store.history().add(release_of({"./srv", "v2"}));
    store.save();  // While the first write runs: written by the next one.
    REQUIRE(run_until(
        &loop, [&] { return store.status_json()["saved_ms"] != 0 && !read_text(state + "/releases.json").empty(); }));
    REQUIRE(run_until(&loop, [&] {
      auto j = json::parse(read_text(state + "/releases.json"), nullptr, false);
      return !j.is_discarded() && j["releases"].size() == 2;
    }));
    CHECK(store.error().empty());

    // The file's place taken by a directory: the write fails, the error is kept for status, and
    // the history in memory goes on; once the way is clear the next change is written.
    const std::string file = state + "/releases.json";
    REQUIRE(::rename(file.c_str(), (file + ".moved").c_str()) == 0);
    REQUIRE(::mkdir(file.c_str(), 0700) == 0);
    REQUIRE(::mkdir((file + "/x").c_str(), 0700) == 0);
    store.history().add(release_of({"./srv", "v3"}));
    store.save();
    REQUIRE(run_until(&loop, [&] { return !store.error().empty(); }));
    CHECK(store.status_json()["error"].get<std::string>().find("rename to " + file) != std::string::npos);
    CHECK(store.history().releases().size() == 3);
    REQUIRE(::rmdir((file + "/x").c_str()) == 0);
    REQUIRE(::rmdir(file.c_str()) == 0);
    store.history().add(release_of({"./srv", "v4"}));
    store.save();
    REQUIRE(run_until(&loop, [&] { return store.error().empty(); }));
    CHECK(json::parse(read_text(file))["releases"].size() == 4);
  }
  {
    ReleaseStore again(&loop, state);
    REQUIRE(again.open().ok());
    CHECK(again.history().releases().size() == 4);
    CHECK(again.history().next_number() == 5);
  }
  {
    // An unreadable file is put aside, said so, and a new history begins.
    write_text(state + "/releases.json", "{not json");
    ReleaseStore fresh(&loop, state);
    REQUIRE(fresh.open().ok());
    CHECK(fresh.history().releases().empty());
    CHECK(fresh.error().find("kept as " + state + "/releases.json.unreadable-") != std::string::npos);
  }
  uv_run(&loop, UV_RUN_DEFAULT);
  CHECK(uv_loop_close(&loop) == 0);
}

TEST_CASE("executables: a program is hashed from the open file and caught when rewritten in place") {
  testsupport::TempDir dir;
  const std::string path = dir.file("prog");
  write_text(path,
             "\x7f"
             "ELF not really, but not a script either");
  ::chmod(path.c_str(), 0755);
  auto image = ExecutableImage::open(path);
  REQUIRE(image.ok());
  CHECK(image->kind() == ExecutableImage::Kind::Program);
  // sha256 of the bytes above, as sha256sum computes it.
  const std::string expected = testsupport::run({"sha256sum", path}, {}, std::chrono::seconds(10)).out.substr(0, 64);
  CHECK(image->sha256() == expected);
  CHECK(image->unchanged().ok());
  // Replaced by a new file: the open one still holds the old bytes.
  write_text(dir.file("prog.new"), "something else");
  REQUIRE(::rename(dir.file("prog.new").c_str(), path.c_str()) == 0);
  CHECK(image->unchanged().ok());
  CHECK_FALSE(image->still_on_disk().ok());
  // Rewritten in place (same inode): the open file's bytes change too, and that is caught.
  auto second = ExecutableImage::open(path);
  REQUIRE(second.ok());
  write_text(path, "rewritten");
  auto changed = second->unchanged();
  REQUIRE_FALSE(changed.ok());
  CHECK(changed.error().text().find("was rewritten in place since it ran") != std::string::npos);
}

TEST_CASE("executables: a script records its interpreter, and a changed interpreter is caught") {
  testsupport::TempDir dir;
  const std::string interpreter = dir.file("interp");
  write_text(interpreter,
             "\x7f"
             "ELF pretend interpreter");
  const std::string script = dir.file("script");
  write_text(script, "#!" + interpreter + " -e\necho hi\n");
  auto image = ExecutableImage::open(script);
  REQUIRE(image.ok());
  CHECK(image->kind() == ExecutableImage::Kind::Script);
  CHECK(image->interpreter() == interpreter);
  CHECK(image->interpreter_sha256().size() == 64);
  CHECK(image->unchanged().ok());
  write_text(interpreter,
             "\x7f"
             "ELF another interpreter");
  auto changed = image->unchanged();
  REQUIRE_FALSE(changed.ok());
  CHECK(changed.error().text() == "its interpreter " + interpreter + " has changed on disk since the release ran");
  CHECK_FALSE(ExecutableImage::open(dir.file("missing")).ok());
}
