// WorkerOutput: one generation's stderr, read on the loop, relayed line by line to the
// supervisor's own stderr marked as the generation's ("gen3[1234]: ", its number and main pid, in
// the log format of log.h),
// and kept as the tail that verdicts, status and crash notes quote (output_lines.h). A preflight
// check's stdout and stderr (preflight.h) come through one of these too, with its own prefix.
//
// The worker's fd 2 is the write end of a pipe (worker_launcher.cpp); the supervisor holds the read
// end, close-on-exec and non-blocking. Helpers the worker starts inherit fd 2, so their lines come
// the same way, with the same prefix, and the pipe reaches end of file only once every process
// that holds it has closed it or exited. A flood costs the worker, not the supervisor: each
// wake-up reads at most kReadsPerWakeup buffers before the loop gets its turn, at most one
// partial line is held, and a worker that writes faster than that waits in its own write().
// Relayed lines are written in batches of whole lines, at most PIPE_BUF bytes each, one write()
// per batch, that never wait for a full stderr (log.h).
#pragma once

#include <sys/types.h>
#include <uv.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>

#include <hotrestart/base/result.h>
#include <hotrestart/fd.h>

#include "duration.h"
#include "log.h"
#include "output_lines.h"
#include "uv_handles.h"

namespace hotrestart {

class WorkerOutput {
 public:
  static constexpr int kReadsPerWakeup = 4;
  static constexpr std::size_t kReadSize = 16 * 1024;

  // A pipe for a child's output: {read end, write end}, both close-on-exec (spawn_process makes the
  // write end the child's fd 2, or 1 and 2). Only the read end is non-blocking: the child's writes
  // block as a program expects, so that a child that writes faster than the supervisor reads
  // waits, and loses nothing.
  static Result<std::pair<Fd, Fd>> open_pipe();

  // `read_end`: the pipe's read end, non-blocking; `generation` and `pid` (its main process) mark
  // each relayed line.
  WorkerOutput(uv_loop_t* loop, Fd read_end, std::uint64_t generation, pid_t pid);
  // Another process's output: `label` names it in the log ("preflight (pid 1234)"), `source` marks
  // each relayed line.
  WorkerOutput(uv_loop_t* loop, Fd read_end, std::string label, RelaySource source);
  ~WorkerOutput();
  WorkerOutput(const WorkerOutput&) = delete;
  WorkerOutput& operator=(const WorkerOutput&) = delete;

  const OutputTail& tail() const { return tail_; }
  // The pipe's read end, -1 once the output has ended.
  int read_fd() const { return read_end_.get(); }
  // True once the pipe has reached end of file, or reading stopped at the end of a grace.
  bool ended() const { return !read_end_; }

  // Calls `then` once the output has ended: at end of file, or `grace` from now at the latest,
  // when what the pipe holds is read one last time and reading stops (a helper that still holds
  // the pipe gets EPIPE from then on). It runs from the loop, and may destroy this object; when
  // the output has ended already, it runs before this returns.
  void when_ended(Millis grace, std::function<void()> then);

 private:
  void on_readable();
  // Reads at most kReadsPerWakeup buffers; false once the pipe is at end of file or failed.
  bool read_some();
  void relay(std::string_view line);
  void flush();
  void end();

  const std::string label_;   // "generation 3 (pid 1234)", for the log.
  const RelaySource source_;  // gen3, pid 1234: marks every relayed line.
  Fd read_end_;
  std::unique_ptr<FdWatch> watch_;
  Timer grace_;
  std::function<void()> on_ended_;
  LineSplitter splitter_;
  const LineSplitter::Emit relay_;  // relay(), made once.
  OutputTail tail_;
  std::string batch_;  // Whole relayed lines not written yet.
  std::string line_;   // The line being relayed, formatted (kept for its buffer).
  std::size_t batch_lines_ = 0;
};

}  // namespace hotrestart
