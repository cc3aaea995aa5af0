// Which processes hold a TCP port: for the error `hotrestart run` gives when its port is taken, so
// that an operator learns which pids to look at (an old server, or the generations of a supervisor
// that died and cannot be taken over) rather than only "Address already in use".
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace hotrestart {

struct PortHolder {
  pid_t pid = 0;
  uid_t uid = 0;
  std::string command;  // Its /proc/PID/comm.
};

// The inodes of the listening sockets on `port` in the text of /proc/net/tcp or /proc/net/tcp6.
// Pure; a malformed line is passed over.
std::vector<std::uint64_t> listening_inodes(std::string_view table, std::uint16_t port);

// The processes with a descriptor on a socket listening on `port` in this network namespace, as far
// as /proc lets this process see (another user's descriptors are hidden without privileges).
std::vector<PortHolder> port_holders(std::uint16_t port);

// "pid 123 (nginx, uid 0), pid 456 (kv-cache-v1, uid 1000)", or "" when there are none.
std::string describe(const std::vector<PortHolder>& holders);

}  // namespace hotrestart
