// What every room of the worker SDK uses (see worker_common.h).
#include "worker_common.h"

#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdarg>
#include <cstdio>

namespace hotrestart::sdk {

void say(const char* format, ...) {
  char line[1024];
  va_list args;
  va_start(args, format);
  std::vsnprintf(line, sizeof line, format, args);
  va_end(args);
  std::fprintf(stderr, "hotrestart-worker[%d]: %s\n", static_cast<int>(::getpid()), line);
}

std::uint64_t micros_since(Clock::time_point t) {
  return static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - t).count());
}

int ms_until(Clock::time_point deadline) {
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
  return static_cast<int>(std::clamp<std::int64_t>(left.count(), 0, 24 * 3600 * 1000));
}

Result<wire::Received> receive_until(int fd, Clock::time_point deadline, const char* waiting_for) {
  for (;;) {
    if (!wire::wait_readable(fd, ms_until(deadline))) {
      return Error::message(std::string("timed out waiting for ") + waiting_for);
    }
    auto r = wire::receive_message(fd, wire::Blocking::No);
    if (!r && r.error().code() == EAGAIN) continue;
    return r;
  }
}

const Section* find_section(const std::vector<Section>& sections, std::string_view name) {
  for (const auto& s : sections) {
    if (s.name == name) return &s;
  }
  return nullptr;
}

namespace {
std::atomic<int> transfer_nice_value{0};
}

void set_transfer_nice(int nice) {
  transfer_nice_value.store(std::clamp(nice, 0, 19));
}

int transfer_nice() {
  return transfer_nice_value.load();
}

void lower_priority_for_transfer() {
  const int nice = transfer_nice();
  if (nice <= 0) return;
  // On Linux, PRIO_PROCESS with a thread id sets that thread's nice value alone.
  const auto tid = static_cast<id_t>(::gettid());
  errno = 0;
  const int now = ::getpriority(PRIO_PROCESS, tid);
  if (errno == 0 && now < nice) (void)::setpriority(PRIO_PROCESS, tid, nice);
}

}  // namespace hotrestart::sdk
