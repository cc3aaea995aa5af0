// The worker's side of a configuration reload (see configs.h).
#include "configs.h"

#include <string_view>

#include <hotrestart/wire/section.h>
#include "worker_common.h"

namespace hotrestart::sdk {
namespace {

const ConfigHooks* find_config(const std::vector<ConfigHooks>& configs, std::string_view name) {
  for (const auto& c : configs)
    if (c.name == name) return &c;
  return nullptr;
}

// At most what a message's text may hold.
std::string bounded(std::string text) {
  if (text.size() > wire::kMaxTextLength) text.resize(wire::kMaxTextLength);
  return text;
}

}  // namespace

Status check_configs(const std::vector<ConfigHooks>& configs) {
  if (configs.size() > wire::kMaxConfigs)
    return Error::message("more than " + std::to_string(wire::kMaxConfigs) + " configurations");
  for (std::size_t i = 0; i < configs.size(); ++i) {
    const ConfigHooks& c = configs[i];
    if (!wire::valid_name(c.name))
      return Error::message("configuration name '" + c.name + "' is not valid (1-128 of A-Z a-z 0-9 . _ : -)");
    if (!c.prepare || !c.commit || !c.abort || !c.version)
      return Error::message("configuration '" + c.name + "' lacks one of prepare, commit, abort and version");
    for (std::size_t j = 0; j < i; ++j)
      if (configs[j].name == c.name) return Error::message("configuration '" + c.name + "' is added twice");
  }
  return {};
}

std::vector<wire::ConfigHeld> configs_held(const std::vector<ConfigHooks>& configs) {
  std::vector<wire::ConfigHeld> held;
  for (const auto& c : configs) {
    std::uint64_t version = 0;
    guarded("a configuration's version()", [&] { version = c.version(); });
    held.push_back({c.name, version});
  }
  return held;
}

wire::ConfigPrepared prepare_config(const std::vector<ConfigHooks>& configs, const wire::ConfigPrepare& prepare,
                                    Fd memfd, std::uint64_t max_bytes) {
  const wire::SectionOffer& offer = prepare.offer;
  wire::ConfigPrepared answer{offer.name, offer.sequence, false, {}};
  const ConfigHooks* config = find_config(configs, offer.name);
  if (config == nullptr) {
    answer.reason = "this worker has no configuration named '" + offer.name + "'";
    return answer;
  }
  auto mapped = wire::open_section(std::move(memfd), offer, max_bytes);
  if (!mapped) {
    answer.reason = bounded("the configuration's bytes did not arrive intact: " + mapped.error().text());
    return answer;
  }
  const auto payload = mapped->payload();
  std::string error;
  // Config<T>::prepare catches the parser's exceptions; hooks of the application's own may not.
  const bool returned = guarded("a configuration's prepare", [&] {
    error = config->prepare(std::string_view(reinterpret_cast<const char*>(payload.data()), payload.size()),
                            offer.sequence);
  });
  if (!returned) error = "the configuration's prepare threw";
  answer.ok = error.empty();
  answer.reason = bounded(std::move(error));
  return answer;
}

wire::ConfigCommitted commit_config(const std::vector<ConfigHooks>& configs, const wire::ConfigCommit& commit) {
  wire::ConfigCommitted answer{commit.name, commit.version, false};
  if (const ConfigHooks* config = find_config(configs, commit.name))
    guarded("a configuration's commit", [&] { answer.ok = config->commit(commit.version); });
  return answer;
}

void abort_config(const std::vector<ConfigHooks>& configs, const wire::ConfigAbort& abort) {
  if (const ConfigHooks* config = find_config(configs, abort.name))
    guarded("a configuration's abort", [&] { config->abort(abort.version); });
}

}  // namespace hotrestart::sdk
