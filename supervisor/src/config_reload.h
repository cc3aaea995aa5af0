// ConfigReloads: the configurations `run --config NAME=PATH` manages, and their reloads.
//
// A reload (`hotrestart reload`, SIGHUP, a rollback) reads each file and hashes it on the thread
// pool, keeps its bytes in the state directory (config_store.h) and in a sealed memfd, then runs
// two phases across every generation that reads the configuration (its hello said so): prepare
// (each parses and stages it, and answers) and commit (each swaps), with a deadline. One refusal
// in prepare, a file that changed or was deleted meanwhile, or a generation that does not answer,
// and every generation drops what it staged: nobody switches. One reload runs at a time; another
// is refused as busy.
//
// A generation starts with the live version of each configuration it reads, handed over at its
// hello (config-prepare and config-commit before its begin-import), never read again from a file
// that may have changed since; a generation that says hello while a reload is under way takes
// part in it too. The coordinator (supervisor_configs.cpp) routes requests, hellos and answers
// here.
#pragma once

#include <uv.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <hotrestart/base/result.h>
#include <hotrestart/fd.h>
#include <hotrestart/wire/message.h>

#include "config_store.h"
#include "duration.h"
#include "preflight.h"
#include "release_store.h"
#include "uv_handles.h"

namespace hotrestart {

class Generation;

class ConfigReloads {
 public:
  using Clock = std::chrono::steady_clock;

  // Who asked for a change, as the history records it.
  struct Who {
    std::string origin;  // "reload", "SIGHUP", "watch", "rollback".
    std::int64_t uid = -1;
    std::int64_t pid = -1;
  };
  // How a request ended. `code` is "" on success, else the control protocol's error code:
  // "invalid" (refused: the file, or a generation's parser), "busy", "unavailable" (nothing to roll
  // back to), "bad-request" (no such configuration).
  struct Outcome {
    std::string code;
    std::string message;
    nlohmann::json configs = nlohmann::json::array();  // Success: one object per configuration.
  };
  using Done = std::function<void(const Outcome&)>;

  class Host {
   public:
    virtual ~Host() = default;
    // The generations a reload of `name` goes to: alive, not draining, their hello listed `name`.
    virtual std::vector<Generation*> config_readers(const std::string& name) = 0;
    virtual Generation* config_generation(std::uint64_t number) = 0;
    virtual void record_event(nlohmann::json event) = 0;
    // --reload-signal: the generations told of a new version by the signal (alive, not draining,
    // and not reading `name` through the SDK).
    virtual std::vector<Generation*> signal_targets(const std::string& name) = 0;
    // --config-check: runs `command` (as the preflight check runs, with `env` added).
    virtual std::unique_ptr<PreflightCheck> start_config_check(const std::string& command, std::vector<std::string> env,
                                                               PreflightCheck::Done done) = 0;
  };

  // For servers that read the file themselves: `check` validates a new version first ('{file}' is
  // the new bytes' path, in the file's directory), and then the file is replaced by it and the
  // generations are sent `reload_signal` (0: none).
  struct ForServers {
    std::string check;
    int reload_signal = 0;
    bool installs() const { return !check.empty() || reload_signal != 0; }
  };

  ConfigReloads(uv_loop_t* loop, std::string state_dir, std::vector<ConfigSpec> specs, Millis timeout,
                ForServers servers, Host& host);
  ~ConfigReloads();
  ConfigReloads(const ConfigReloads&) = delete;
  ConfigReloads& operator=(const ConfigReloads&) = delete;

  // Reads each history and sets the live versions: after a restart that took generations over,
  // the history's live version (the one they run); otherwise the file as it is now, recorded as a
  // new version ("start") when it differs from the history's. Fails when a file that must be read
  // cannot be (run exits 1).
  Status open(bool taking_over);
  bool empty() const { return configs_.empty(); }

  // `name`: one configuration, nullopt: each (and then `file` is refused unless there is one).
  void reload(std::optional<std::string> name, std::optional<std::string> file, const Who& who, Done done);
  // Back to version `to` of `name` (default: the applied version before the live one), as a new
  // version with its bytes.
  void rollback(std::optional<std::string> name, std::optional<std::uint64_t> to, const Who& who, Done done);
  // `--watch-config`: `name`'s file was saved. It is reloaded (origin "watch") now, or once the
  // reload under way has ended; a refusal is logged, recorded and shown in status until a save
  // that is applied.
  void saved(const std::string& name);
  bool busy() const { return reload_ != nullptr; }
  std::string busy_reason() const;

  // A generation's hello: it is sent the live version of each configuration it reads that this
  // supervisor manages (an `adopted` one only if it holds another), and joins a reload under way.
  void on_hello(Generation& g, const wire::Hello& hello, bool adopted);
  // Its answers. A refusal of the version a generation starts with returns the reason to fail it.
  std::optional<std::string> on_prepared(Generation& g, const wire::ConfigPrepared& m);
  void on_committed(Generation& g, const wire::ConfigCommitted& m);
  // It exited or closed its channel: a reload waits for it no longer.
  void on_gone(std::uint64_t generation);

  nlohmann::json status_json() const;
  // `config-history`: every version of `name` (nullopt: the only one), with where its bytes are.
  Result<nlohmann::json> history_json(const std::optional<std::string>& name) const;

 private:
  struct Managed;
  struct Candidate;
  struct Reload;

  // The configuration `name` names (nullopt: the only one), or why there is none.
  Result<Managed*> pick(const std::optional<std::string>& name) const;
  // A new version of `m`, numbered, as `who` asked for it.
  static Candidate candidate_for(Managed* m, const Who& who);
  void start(std::unique_ptr<Reload> reload);
  void read_done();
  void send_prepare(Generation& g, const Candidate& c);
  void maybe_decide();
  void abort_all(const std::string& code, const std::string& reason);
  void commit_all();
  // --config-check on each candidate; the answer comes as the check's waiting entry.
  void start_checks();
  void on_check_done(const std::string& name, std::uint64_t version, const PreflightOutcome& outcome);
  // Puts each candidate's staged file in place of its path and sends the reload signal; why not, or "".
  std::string install();
  void maybe_finish();
  // Ends the reload unapplied, with the protocol's error `code`.
  void refuse(const std::string& code, const std::string& message);
  // After a reload ended: the next saved file waiting, if any.
  void next_saved();
  nlohmann::json entry_event(const Managed& m, const ConfigVersion& v) const;

  uv_loop_t* loop_;
  std::string state_dir_;
  Millis timeout_;
  ForServers servers_;
  Host& host_;
  std::vector<std::unique_ptr<Managed>> configs_;
  std::unique_ptr<Reload> reload_;
  std::set<std::string> saved_;  // Saved while a reload was under way: reloaded after it.
  PoolTask reading_;
  Timer deadline_;
};

}  // namespace hotrestart
