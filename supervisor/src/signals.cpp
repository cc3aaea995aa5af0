// Signal names and numbers (see signals.h).
#include "signals.h"

#include <charconv>
#include <csignal>
#include <string>

#include <fmt/format.h>

namespace hotrestart {
namespace {

struct NamedSignal {
  std::string_view name;
  int number;
};

constexpr NamedSignal kSignals[] = {
    {"HUP", SIGHUP},   {"INT", SIGINT},   {"QUIT", SIGQUIT}, {"ABRT", SIGABRT}, {"KILL", SIGKILL},
    {"USR1", SIGUSR1}, {"SEGV", SIGSEGV}, {"USR2", SIGUSR2}, {"PIPE", SIGPIPE}, {"ALRM", SIGALRM},
    {"TERM", SIGTERM}, {"CONT", SIGCONT}, {"STOP", SIGSTOP}, {"TSTP", SIGTSTP}, {"WINCH", SIGWINCH},
    {"BUS", SIGBUS},   {"FPE", SIGFPE},   {"ILL", SIGILL},   {"TRAP", SIGTRAP}, {"SYS", SIGSYS},
};

}  // namespace

Result<int> parse_signal(std::string_view text) {
  std::string_view name = text;
  if (name.starts_with("SIG")) name.remove_prefix(3);
  for (const auto& s : kSignals) {
    if (s.name == name) return s.number;
  }
  int number = 0;
  auto [rest, ec] = std::from_chars(text.data(), text.data() + text.size(), number);
  if (ec == std::errc() && rest == text.data() + text.size() && number > 0 && number < NSIG) {
    return number;
  }
  return Error::message(fmt::format("unknown signal '{}' (write it like SIGTERM, TERM or 15)", text));
}

std::string signal_name(int signo) {
  for (const auto& s : kSignals) {
    if (s.number == signo) return fmt::format("SIG{}", s.name);
  }
  return fmt::format("signal {}", signo);
}

}  // namespace hotrestart
