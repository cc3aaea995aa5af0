// Configurations the supervisor reloads (Worker::add_config): the worker's side of `config-prepare`,
// `config-commit` and `config-abort` (docs/protocol.md, "Configurations"). Used by start() for the
// version a generation starts with, and by the SDK thread for each reload. Holds no state: the
// staged and live objects are each Config<T>'s own.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <hotrestart/worker.h>

#include <hotrestart/base/result.h>
#include <hotrestart/wire/message.h>

namespace hotrestart::sdk {

// Checks the names: valid and each once.
Status check_configs(const std::vector<ConfigHooks>& configs);
// What the hello says of them: each name and its live version.
std::vector<wire::ConfigHeld> configs_held(const std::vector<ConfigHooks>& configs);

// Maps the memfd, checks it against the offer, and runs the parser: the answer to send.
wire::ConfigPrepared prepare_config(const std::vector<ConfigHooks>& configs, const wire::ConfigPrepare& prepare,
                                    Fd memfd, std::uint64_t max_bytes);
wire::ConfigCommitted commit_config(const std::vector<ConfigHooks>& configs, const wire::ConfigCommit& commit);
void abort_config(const std::vector<ConfigHooks>& configs, const wire::ConfigAbort& abort);

}  // namespace hotrestart::sdk
