// The environment every process the supervisor runs for a generation starts from (the worker, its
// --ready and --health exec probes, the --preflight check), and the directory it starts in.
//
// Layers, lowest first; a later one replaces a variable of the same name:
//   1. the supervisor's own environment, unless --clear-env, less the variables that name the
//      supervisor's or a worker's resources (kept by is_reserved_variable, below);
//   2. each --env-file, in the order given, each line in order;
//   3. each --env NAME=VALUE, in the order given;
//   4. PATH, when none of the above set it: systemd's default for services.
// Then, for each process, what the supervisor always sets (LISTEN_*, NOTIFY_SOCKET, HOTRESTART_*,
// WATCHDOG_USEC, PWD), which an --env or a file line cannot set: it is refused at start.
//
// The files are read once, when `run` starts (and again by the new image of an `upgrade --self`,
// which runs the same command line). The file format is described at parse_env_file.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include <hotrestart/base/result.h>

namespace hotrestart {

// The PATH a worker gets when nothing else gives one: systemd's default for system services.
inline constexpr const char* kDefaultWorkerPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

// A file larger than this is refused rather than read (an environment is a few KiB).
inline constexpr std::size_t kMaxEnvFileBytes = 1024 * 1024;

struct EnvAssignment {
  std::string name;
  std::string value;
  std::string origin;  // Where it was written, for messages: "--env" or "FILE:LINE".
};

// [A-Za-z_][A-Za-z0-9_]*, as POSIX and systemd have it.
bool valid_variable_name(std::string_view name);

// Variables the supervisor sets for its workers, probes and checks itself (or that name its own
// resources), never taken from its own environment nor from --env or --env-file: LISTEN_PID,
// LISTEN_FDS, LISTEN_FDNAMES, NOTIFY_SOCKET, WATCHDOG_USEC, WATCHDOG_PID, FDSTORE (systemd's, for the
// supervisor's own fd store), PWD and HOTRESTART_*.
bool is_reserved_variable(std::string_view name);

// "NAME=VALUE" from --env: the value is taken as it is (no quotes, no escapes).
Result<EnvAssignment> parse_env_flag(std::string_view text);

// The lines of an environment file named `file` (for messages), in the format of systemd's
// EnvironmentFile=, restricted to what can be read one way only:
//   - lines end with "\n" (a "\r" before it is dropped); spaces and tabs around a line are ignored;
//   - an empty line, or one whose first character is '#' or ';', is a comment;
//   - any other line is NAME=VALUE, with optional spaces or tabs around the '=';
//   - VALUE is taken as it is, or is one quoted string: '...' takes everything up to the next '
//     as it is; "..." takes everything up to the next unescaped ", where a backslash makes the
//     next character literal (\" \\ \$). Nothing but spaces or tabs may follow the closing quote;
//   - nothing is expanded ($VAR stays $VAR), and a value cannot span lines: a quote left open, or
//     a line ending with a backslash (systemd's continuation), is refused;
//   - the same NAME twice: the later line wins.
// A line that does not follow this, an invalid or reserved name, or a NUL byte fails the whole
// file with "FILE:LINE: why", so that nothing of it applies.
Result<std::vector<EnvAssignment>> parse_env_file(std::string_view text, const std::string& file);

// Reads `path` (at most kMaxEnvFileBytes) and parses it; errors name the file.
Result<std::vector<EnvAssignment>> read_env_file(const std::string& path);

struct EnvironmentFlags {
  bool clear = false;                    // --clear-env
  std::vector<std::string> files;        // --env-file, absolute paths, in order
  std::vector<std::string> assignments;  // --env NAME=VALUE, in order
};

// Layers 1 to 4 above: `inherited` is the supervisor's environment ("NAME=VALUE" entries), read
// only without --clear-env. The files are read now. The result holds each name once, in the order
// it was first set.
Result<std::vector<std::string>> base_worker_environment(const EnvironmentFlags& flags,
                                                         const std::vector<std::string>& inherited);

// This process's environment as "NAME=VALUE" entries.
std::vector<std::string> own_environment();

}  // namespace hotrestart
