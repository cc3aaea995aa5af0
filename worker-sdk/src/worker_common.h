// What every room of the worker SDK uses: its log line on stderr, the guard around the
// application's callbacks, deadlines in the form poll() takes them, waiting for one message, and
// finding a section by name. Nothing here holds state.
#pragma once

#include <chrono>
#include <cstdint>
#include <exception>
#include <string_view>
#include <vector>

#include <hotrestart/worker.h>

#include <hotrestart/base/result.h>
#include <hotrestart/wire/channel.h>

namespace hotrestart::sdk {

using Clock = std::chrono::steady_clock;

// Reports one line on stderr as "hotrestart-worker[PID]: ...", like the rest of a worker's
// diagnostics, so that the supervisor's log and the terminal show it.
__attribute__((format(printf, 1, 2))) void say(const char* format, ...);

// Runs one of the application's callbacks on the SDK thread. An exception must not end the
// process through std::terminate: it is reported, and the SDK carries on.
// Returns whether it returned normally.
template <class F>
bool guarded(const char* what, F&& f) {
  try {
    f();
    return true;
  } catch (const std::exception& e) {
    say("%s threw: %s", what, e.what());
  } catch (...) {
    say("%s threw an exception that is not a std::exception", what);
  }
  return false;
}

std::uint64_t micros_since(Clock::time_point t);
// What is left until `deadline` in milliseconds, for poll(): never negative, at most a day.
int ms_until(Clock::time_point deadline);

// Receives one message from `fd`, waiting no later than `deadline`.
Result<wire::Received> receive_until(int fd, Clock::time_point deadline, const char* waiting_for);

const Section* find_section(const std::vector<Section>& sections, std::string_view name);

// The nice value of the threads and processes that do a transfer's heavy work (the forked save,
// the arena checksums, the import): Worker::Options::transfer_nice, for the process. 0 leaves
// them as they are.
void set_transfer_nice(int nice);
int transfer_nice();
// Lowers this thread's priority to transfer_nice() (a thread of its own, or a forked child: an
// unprivileged thread cannot raise it again).
void lower_priority_for_transfer();

}  // namespace hotrestart::sdk
