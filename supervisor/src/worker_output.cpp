// One generation's stderr: reading the pipe, relaying its lines, keeping its tail, and its end
// (see worker_output.h).
#include "worker_output.h"

#include <fcntl.h>
#include <limits.h>
#include <unistd.h>

#include <cerrno>

#include <fmt/format.h>

#include "log.h"

namespace hotrestart {
// A text or journal line is written in one atomic write to a pipe; a JSON line that its escapes
// make longer than PIPE_BUF is written alone.
static_assert(kMaxRelayPrefix + kMaxLinePiece + 1 <= PIPE_BUF, "a relayed line must fit one atomic write to a pipe");

Result<std::pair<Fd, Fd>> WorkerOutput::open_pipe() {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) return Error::from_errno("pipe2");
  std::pair<Fd, Fd> ends{Fd(fds[0]), Fd(fds[1])};
  if (::fcntl(ends.first.get(), F_SETFL, O_NONBLOCK) != 0) return Error::from_errno("fcntl O_NONBLOCK");
  return ends;
}

WorkerOutput::WorkerOutput(uv_loop_t* loop, Fd read_end, std::uint64_t generation, pid_t pid)
    : WorkerOutput(loop, std::move(read_end), fmt::format("generation {} (pid {})", generation, pid),
                   RelaySource{fmt::format("gen{}", generation), pid, generation}) {}

WorkerOutput::WorkerOutput(uv_loop_t* loop, Fd read_end, std::string label, RelaySource source)
    : label_(std::move(label)),
      source_(std::move(source)),
      read_end_(std::move(read_end)),
      grace_(loop),
      relay_([this](std::string_view line) { relay(line); }) {
  batch_.reserve(PIPE_BUF);
  if (read_end_) watch_ = std::make_unique<FdWatch>(loop, read_end_.get(), [this] { on_readable(); });
}

WorkerOutput::~WorkerOutput() = default;

void WorkerOutput::when_ended(Millis grace, std::function<void()> then) {
  if (ended()) {
    then();
    return;
  }
  on_ended_ = std::move(then);
  grace_.start(grace, [this, grace] {
    if (read_some()) {
      log_info("{}: a process it started still holds its stderr {} after it exited; its output is no longer read",
               label_, format_duration(grace));
    }
    end();
  });
}

void WorkerOutput::on_readable() {
  if (!read_some()) end();
}

bool WorkerOutput::read_some() {
  char buffer[kReadSize];
  bool open = true;
  for (int i = 0; i < kReadsPerWakeup && open; ++i) {
    const ssize_t n = ::read(read_end_.get(), buffer, sizeof buffer);
    if (n > 0) {
      splitter_.feed(std::string_view(buffer, static_cast<std::size_t>(n)), relay_);
    } else if (n < 0 && errno == EAGAIN) {
      break;
    } else if (n == 0 || errno != EINTR) {
      open = false;  // End of file; any other error ends the output as well.
    }
  }
  flush();
  return open;
}

void WorkerOutput::relay(std::string_view line) {
  tail_.push(line);
  line_.clear();
  append_relayed_line(line_, source_, line);
  if (batch_.size() + line_.size() > PIPE_BUF) flush();
  batch_ += line_;
  ++batch_lines_;
}

void WorkerOutput::flush() {
  if (batch_lines_ == 0) return;
  write_relayed_lines(batch_, batch_lines_);
  batch_.clear();
  batch_lines_ = 0;
}

void WorkerOutput::end() {
  splitter_.finish(relay_);
  flush();
  watch_.reset();
  read_end_.reset();
  grace_.stop();
  if (!on_ended_) return;
  const auto then = std::move(on_ended_);
  on_ended_ = nullptr;
  then();  // Last: it may destroy this object.
}

}  // namespace hotrestart
