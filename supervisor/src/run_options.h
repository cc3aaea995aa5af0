// What `hotrestart run` was asked to do: the parsed command line, and the defaults that follow
// from it (where the control socket goes). Parsing only; nothing here opens anything but the
// control socket's directory.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include <hotrestart/base/result.h>

#include "duration.h"
#include "listen_spec.h"

namespace hotrestart {

// How a new generation proves it is ready (--ready).
struct ReadyMode {
  enum class Kind { Notify, Exec, Delay };
  Kind kind = Kind::Notify;
  std::string command;  // Exec
  Millis delay{0};      // Delay
  std::string describe() const;
};
Result<ReadyMode> parse_ready_mode(std::string_view text);

struct RunOptions {
  std::string name = "default";
  std::string control_path;
  std::string state_dir;  // Empty: default_state_dir(name).
  std::vector<ListenSpec> listen;
  ReadyMode ready;
  Millis ready_timeout{30'000};
  Millis min_ready{0};
  int drain_signal = 15;            // SIGTERM
  bool drain_signal_given = false;  // --drain-signal was given: with --adopt-binds, it goes at once.
  Millis drain_timeout{30'000};
  Millis state_timeout{60'000};
  std::vector<std::string> state_required;  // Sections whose import failure rolls back.
  bool adopt_binds = false;                 // Preload libhotrestart-adopt into every worker.
  std::vector<std::string> command;
};

// Exit codes of `hotrestart run`.
inline constexpr int kRunExitOk = 0;      // stopped on request
inline constexpr int kRunExitFailed = 1;  // could not start (bind, control socket, exec)

// The default control socket path for a supervisor name:
// $XDG_RUNTIME_DIR/hotrestart/NAME.sock, else /tmp/hotrestart-UID/NAME.sock.
std::string default_control_path(const std::string& name);
// Creates the directory holding a control socket (mode 0700 when we create it) and checks
// that no other user could replace what is inside it.
Status prepare_runtime_dir(const std::string& socket_path);

}  // namespace hotrestart
