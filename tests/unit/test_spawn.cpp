// spawn_process with real children: the fd layout a worker sees, LISTEN_PID, exec errors.
#include <doctest/doctest.h>

#include <fcntl.h>
#include <poll.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <string>

#include <hotrestart/fd.h>
#include "spawn.h"

using namespace hotrestart;

namespace {

std::string read_file(const std::string& path) {
  std::ifstream in(path);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

struct Pipe {
  Fd read;
  Fd write;
};

Pipe close_on_exec_pipe() {
  int ends[2];
  REQUIRE(::pipe2(ends, O_CLOEXEC) == 0);
  return {Fd(ends[0]), Fd(ends[1])};
}

// Everything a pipe's read end gives until end of file.
std::string read_all(int fd) {
  std::string text;
  char buffer[256];
  for (ssize_t n; (n = ::read(fd, buffer, sizeof buffer)) > 0;)
    text.append(buffer, static_cast<std::size_t>(n));
  return text;
}

int wait_child(pid_t pid) {
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return status;
}

}  // namespace

TEST_CASE("the child gets the passed fds at 3.. and LISTEN_PID is its own pid and nothing else leaks") {
  char dir_template[] = "/tmp/hotrestart-spawn-XXXXXX";
  REQUIRE(::mkdtemp(dir_template) != nullptr);
  const std::string out = std::string(dir_template) + "/out";
  // Two pipes stand in for listeners; a third close-on-exec fd must not be inherited.
  const Pipe a = close_on_exec_pipe();
  const Pipe b = close_on_exec_pipe();
  SpawnRequest req;
  req.executable = "/bin/sh";
  // Passing b's write end, then a's read end, checks that order, not fd number, decides the placement.
  req.argv = {"/bin/sh", "-c", "echo \"$$ $LISTEN_PID\" > " + out + "; exec ls /proc/self/fd >> " + out};
  req.env = {"PATH=/usr/bin:/bin"};
  req.pass_fds = {b.write.get(), a.read.get()};
  req.listen_pid = ListenPid::Set;
  auto pid = spawn_process(req);
  REQUIRE(pid.ok());
  const int status = wait_child(pid.value());
  CHECK(WIFEXITED(status));
  const std::string text = read_file(out);
  const auto nl = text.find('\n');
  REQUIRE(nl != std::string::npos);
  const std::string first = text.substr(0, nl);
  const auto space = first.find(' ');
  CHECK(first.substr(0, space) == first.substr(space + 1));  // LISTEN_PID == $$
  // ls lists 0 1 2 3 4 plus the fd it uses to read the directory (5 or higher).
  std::string fds = text.substr(nl + 1);
  CHECK(fds.find("3\n4\n") != std::string::npos);
  int count = 0;
  for (char c : fds)
    count += c == '\n';
  CHECK(count == 6);
  ::unlink(out.c_str());
  ::rmdir(dir_template);
}

TEST_CASE("the child's stderr is the descriptor the request gives, and its other fds stay in place") {
  Pipe out = close_on_exec_pipe();
  Pipe listener = close_on_exec_pipe();
  SpawnRequest req;
  req.executable = "/bin/sh";
  req.argv = {"/bin/sh", "-c", "echo to-stderr >&2; echo to-fd-3 >&3"};
  req.env = {"PATH=/usr/bin:/bin"};
  req.pass_fds = {listener.write.get()};
  req.stderr_fd = out.write.get();
  auto pid = spawn_process(req);
  REQUIRE(pid.ok());
  // The child's copies are the only write ends left, so both pipes reach end of file when it exits.
  out.write.reset();
  listener.write.reset();
  const int status = wait_child(pid.value());
  CHECK(WIFEXITED(status));
  CHECK(read_all(out.read.get()) == "to-stderr\n");
  CHECK(read_all(listener.read.get()) == "to-fd-3\n");
}

TEST_CASE("the child's stdin and stdout are the descriptors the request gives, and may be one pipe with stderr") {
  Pipe out = close_on_exec_pipe();
  Pipe in = close_on_exec_pipe();
  REQUIRE(::write(in.write.get(), "from-stdin\n", 11) == 11);
  in.write.reset();
  SpawnRequest req;
  req.executable = "/bin/sh";
  req.argv = {"/bin/sh", "-c", "read line; echo \"out:$line\"; echo err >&2"};
  req.env = {"PATH=/usr/bin:/bin"};
  req.stdin_fd = in.read.get();
  req.stdout_fd = out.write.get();
  req.stderr_fd = out.write.get();
  auto pid = spawn_process(req);
  REQUIRE(pid.ok());
  out.write.reset();
  const int status = wait_child(pid.value());
  CHECK(WIFEXITED(status));
  CHECK(read_all(out.read.get()) == "out:from-stdin\nerr\n");
}

TEST_CASE("exec failure is an error naming the program and not a crash") {
  SpawnRequest req;
  req.executable = "/nonexistent/server";
  req.argv = {"/nonexistent/server"};
  auto pid = spawn_process(req);
  REQUIRE_FALSE(pid.ok());
  CHECK(pid.error().text() == "exec /nonexistent/server: No such file or directory");
  CHECK(pid.error().code() == ENOENT);
  // The failed child was reaped already: nothing is left to wait for.
  CHECK(::waitpid(-1, nullptr, WNOHANG) == -1);
}

TEST_CASE("start_process returns before the exec, and PendingExec tells how it went") {
  // Waits up to 10 s for the answer.
  const auto answer = [](PendingExec& exec) -> std::optional<Status> {
    for (int i = 0; i < 1000; ++i) {
      pollfd p{exec.fd(), POLLIN, 0};
      ::poll(&p, 1, 10);
      if (auto outcome = exec.outcome()) return outcome;
    }
    return std::nullopt;
  };
  SUBCASE("an exec that fails: the reason, and the child exits with 127") {
    SpawnRequest req;
    req.executable = "/nonexistent/server";
    req.argv = {"/nonexistent/server"};
    PendingExec exec;
    auto pid = start_process(req, exec);
    REQUIRE(pid.ok());
    auto outcome = answer(exec);
    REQUIRE(outcome.has_value());
    REQUIRE_FALSE(outcome->ok());
    CHECK(outcome->error().text() == "exec /nonexistent/server: No such file or directory");
    CHECK(exec.outcome()->error().text() == outcome->error().text());  // It stays.
    const int status = wait_child(pid.value());
    CHECK(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 127);
  }
  SUBCASE("an exec that succeeds") {
    SpawnRequest req;
    req.executable = "/bin/sh";
    req.argv = {"/bin/sh", "-c", "exit 4"};
    PendingExec exec;
    auto pid = start_process(req, exec);
    REQUIRE(pid.ok());
    auto outcome = answer(exec);
    REQUIRE(outcome.has_value());
    CHECK(outcome->ok());
    const int status = wait_child(pid.value());
    CHECK(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 4);
  }
  SUBCASE("the child leads its group as soon as start_process returns: a signal to the group reaches it") {
    SpawnRequest req;
    req.executable = "/bin/sleep";
    req.argv = {"/bin/sleep", "100"};
    PendingExec exec;
    auto pid = start_process(req, exec);
    REQUIRE(pid.ok());
    CHECK(::getpgid(pid.value()) == pid.value());
    REQUIRE(::kill(-pid.value(), SIGKILL) == 0);
    const int status = wait_child(pid.value());
    CHECK(WIFSIGNALED(status));
    CHECK(WTERMSIG(status) == SIGKILL);
  }
}

TEST_CASE("resolve_executable searches PATH like execvp and explains misses") {
  CHECK(resolve_executable("sh", "/nonexistent:/bin").value() == "/bin/sh");
  CHECK(resolve_executable("definitely-not-a-command", "/bin").error().text() ==
        "definitely-not-a-command: command not found in PATH");
  CHECK(resolve_executable("/etc", "").error().text() == "/etc: not a regular file");
  const std::string plain =
      std::string(::getenv("TMPDIR") ? ::getenv("TMPDIR") : "/tmp") + "/hotrestart-not-executable";
  { std::ofstream(plain) << "data"; }
  ::chmod(plain.c_str(), 0644);
  CHECK(resolve_executable(plain, "").error().text() == plain + ": Permission denied");
  ::unlink(plain.c_str());
  CHECK_FALSE(resolve_executable("", "/bin").ok());
}

TEST_CASE("exit statuses describe themselves") {
  CHECK(ExitStatus{3, 0}.describe() == "exited with status 3");
  CHECK(ExitStatus{-1, 6}.describe() == "was killed by SIGABRT");
  ExitStatus not_started{127, 0};
  not_started.not_started = "exec /srv/app: Exec format error";
  CHECK(not_started.describe() == "failed to start (exec /srv/app: Exec format error)");
}
