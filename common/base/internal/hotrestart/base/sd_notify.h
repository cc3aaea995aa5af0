// One datagram in systemd's notify format ("READY=1\nSTATUS=...") to a NOTIFY_SOCKET path; a
// leading '@' names the abstract namespace. The supervisor tells systemd about itself with it, and
// the SDK tells the supervisor (or systemd) about a worker.
#pragma once

#include <span>
#include <string>
#include <string_view>

#include <hotrestart/base/result.h>

namespace hotrestart {

Status sd_notify_to(const std::string& socket_path, std::string_view message);

// The same datagram with `fds` attached as SCM_RIGHTS, as sd_pid_notify_with_fds(3) sends it (for
// "FDSTORE=1"). At most 253 descriptors (SCM_MAX_FD); the caller keeps its own copies.
Status sd_notify_with_fds(const std::string& socket_path, std::string_view message, std::span<const int> fds);

}  // namespace hotrestart
