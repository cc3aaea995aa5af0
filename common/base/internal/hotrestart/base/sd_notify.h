// One datagram in systemd's notify format ("READY=1\nSTATUS=...") to a NOTIFY_SOCKET path; a
// leading '@' names the abstract namespace. The supervisor tells systemd about itself with it, and
// the SDK tells the supervisor (or systemd) about a worker.
#pragma once

#include <string>
#include <string_view>

#include <hotrestart/base/result.h>

namespace hotrestart {

Status sd_notify_to(const std::string& socket_path, std::string_view message);

}  // namespace hotrestart
