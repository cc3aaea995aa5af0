// The configurations and their two-phase reloads (see config_reload.h).
#include "config_reload.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <utility>

#include <fmt/format.h>

#include <hotrestart/base/text.h>
#include <hotrestart/wire/section.h>

#include "generation.h"
#include "log.h"
#include "signals.h"

namespace hotrestart {

using nlohmann::json;

// One configuration: where it is read from, its history, and its live version.
struct ConfigReloads::Managed {
  ConfigSpec spec;
  std::unique_ptr<ConfigStore> store;
  std::unique_ptr<BackgroundFile> history_file;
  // The live version: what a new generation starts with.
  std::uint64_t version = 0;
  std::string sha256;
  std::uint64_t bytes = 0;
  Fd memfd;
  wire::SectionOffer offer;
  // --watch-config: why the last save was refused ("" once one is applied), and when.
  std::string watch_error;
  std::int64_t watch_error_ms = 0;
};

// A new version on its way: read, kept on disk and in a memfd, offered to the generations.
struct ConfigReloads::Candidate {
  Managed* config = nullptr;
  ConfigVersion entry;  // Its source, restores and who asked; the rest once it is read and ends.
  // What reading it found, filled in off the loop.
  struct Read {
    std::string error;
    bool unchanged = false;                // The live version's bytes.
    std::optional<FileIdentity> identity;  // The file's (not for a rollback's kept bytes).
    Fd memfd;
    wire::SectionOffer offer;
    std::string staged;  // ForServers: the bytes beside the file, to check and put in its place.
  };
  Read read;
  std::unique_ptr<PreflightCheck> check;  // --config-check, while it runs.
};

struct ConfigReloads::Reload {
  enum class Phase { Reading, Preparing, Committing };
  Phase phase = Phase::Reading;
  const char* phase_name() const {
    return phase == Phase::Reading ? "reading" : phase == Phase::Preparing ? "preparing" : "committing";
  }
  Done done;
  Clock::time_point started = Clock::now();
  std::vector<Candidate> candidates;
  // Generation -> the configurations it has yet to answer for, in this phase.
  std::map<std::uint64_t, std::set<std::string>> waiting;
  std::set<std::uint64_t> participants;
  std::set<std::uint64_t> committed;
  std::string refusal;  // The first refusal in prepare.
  // Those whose bytes were the live version's: nothing to do, but the answer names them.
  json unchanged = json::array();
};

namespace {

// The section format's memfd holding `bytes` as version `version` of configuration `name`.
Result<wire::WrittenSection> config_memfd(const std::string& name, std::uint64_t version, const std::string& bytes) {
  return wire::write_section(
      name, wire::kConfigFormat, version,
      [&](std::ostream& out) { out.write(bytes.data(), static_cast<std::streamsize>(bytes.size())); }, kMaxConfigBytes);
}

// Where a new version is staged for a server that reads the file itself: beside the file, so that
// what the file includes by relative paths is found from it as from the file.
std::string staged_path(const std::string& path) {
  const auto slash = path.rfind('/');
  return path.substr(0, slash + 1) + "." + path.substr(slash + 1) + ".hotrestart-new";
}

}  // namespace

ConfigReloads::ConfigReloads(uv_loop_t* loop, std::string state_dir, std::vector<ConfigSpec> specs, Millis timeout,
                             ForServers servers, Host& host)
    : loop_(loop),
      state_dir_(std::move(state_dir)),
      timeout_(timeout),
      servers_(std::move(servers)),
      host_(host),
      reading_(loop),
      deadline_(loop) {
  for (auto& spec : specs) {
    auto m = std::make_unique<Managed>();
    m->store = std::make_unique<ConfigStore>(state_dir_, spec.name);
    m->history_file = std::make_unique<BackgroundFile>(loop_, m->store->history_path(), [name = spec.name](Status ok) {
      if (!ok) log_warn("configuration {}: the history could not be saved: {}", name, ok.error().text());
    });
    m->spec = std::move(spec);
    configs_.push_back(std::move(m));
  }
}

ConfigReloads::~ConfigReloads() = default;

Status ConfigReloads::open(bool taking_over) {
  for (auto& m : configs_) {
    if (auto ok = m->store->open(); !ok) return ok.error().context("configuration " + m->spec.name);
    if (!m->store->error().empty()) log_warn("configuration {}: {}", m->spec.name, m->store->error());
    const ConfigVersion* live = m->store->live();
    std::shared_ptr<const std::string> bytes;
    if (taking_over && live != nullptr && live->kept) {
      // The generations taken over run the history's live version: it stays live.
      auto read = read_config_file(m->store->content_path(live->version));
      if (read && read->sha256 == live->sha256) bytes = read->bytes;
    }
    if (!bytes) {
      auto read = read_config_file(m->spec.path);
      if (!read) return read.error().context("configuration " + m->spec.name);
      bytes = read->bytes;
      if (live == nullptr || live->sha256 != read->sha256) {
        ConfigVersion v;
        v.version = m->store->next_version();
        v.sha256 = read->sha256;
        v.bytes = bytes->size();
        v.time_ms = wall_clock_ms();
        v.origin = "start";
        v.source = m->spec.path;
        if (auto ok = write_file_atomically(m->store->content_path(v.version), *bytes); !ok)
          log_warn("configuration {}: cannot keep version {}: {}", m->spec.name, v.version, ok.error().text());
        m->history_file->save(m->store->add(v));
        host_.record_event(entry_event(*m, v));
      }
      live = m->store->live();
    }
    auto memfd = config_memfd(m->spec.name, live->version, *bytes);
    if (!memfd) return memfd.error().context("configuration " + m->spec.name);
    m->version = live->version;
    m->sha256 = live->sha256;
    m->bytes = bytes->size();
    m->memfd = std::move(memfd->memfd);
    m->offer = memfd->offer;
    log_info("configuration {}: version {} ({} bytes, sha256 {}) from {}", m->spec.name, m->version, m->bytes,
             m->sha256.substr(0, 12), m->spec.path);
  }
  return {};
}

Result<ConfigReloads::Managed*> ConfigReloads::pick(const std::optional<std::string>& name) const {
  if (configs_.empty())
    return Error::message("this supervisor manages no configuration (give `run --config NAME=PATH`)");
  if (!name && configs_.size() == 1) return configs_.front().get();
  std::string names;
  for (const auto& m : configs_) {
    if (name && m->spec.name == *name) return m.get();
    names += (names.empty() ? "" : ", ") + m->spec.name;
  }
  if (!name) return Error::message(fmt::format("name the configuration: this supervisor manages {}", names));
  return Error::message(fmt::format("no configuration is named {} (this supervisor manages {})", quote(*name), names));
}

std::string ConfigReloads::busy_reason() const {
  if (!reload_) return {};
  std::string names;
  for (const auto& c : reload_->candidates)
    names += (names.empty() ? "" : ", ") + c.config->spec.name;
  return fmt::format("a reload of {} is under way ({}, for {} ms); try again when it has ended", names,
                     reload_->phase_name(),
                     std::chrono::duration_cast<Millis>(Clock::now() - reload_->started).count());
}

// The waiting entry of --config-check (generations are numbered from 1).
constexpr std::uint64_t kCheck = 0;

ConfigReloads::Candidate ConfigReloads::candidate_for(Managed* m, const Who& who) {
  Candidate c;
  c.config = m;
  c.entry.version = m->store->next_version();
  c.entry.origin = who.origin;
  c.entry.uid = who.uid;
  c.entry.pid = who.pid;
  return c;
}

void ConfigReloads::reload(std::optional<std::string> name, std::optional<std::string> file, const Who& who,
                           Done done) {
  if (reload_) return done({"busy", busy_reason(), {}});
  std::vector<Managed*> which;
  if (name || file || configs_.empty()) {
    auto m = pick(name);
    if (!m) return done({"bad-request", m.error().text(), {}});
    which.push_back(*m);
  } else {
    for (auto& m : configs_)
      which.push_back(m.get());
  }
  auto reload = std::make_unique<Reload>();
  for (Managed* m : which) {
    Candidate c = candidate_for(m, who);
    c.entry.source = file.value_or(m->spec.path);
    reload->candidates.push_back(std::move(c));
  }
  reload->done = std::move(done);
  start(std::move(reload));
}

void ConfigReloads::rollback(std::optional<std::string> name, std::optional<std::uint64_t> to, const Who& who,
                             Done done) {
  if (reload_) return done({"busy", busy_reason(), {}});
  auto m = pick(name);
  if (!m) return done({"bad-request", m.error().text(), {}});
  const ConfigStore& store = *(*m)->store;
  const ConfigVersion* target = to ? store.find(*to) : store.applied_before((*m)->version);
  if (target == nullptr) {
    return done(
        {"unavailable",
         to ? fmt::format("configuration {} has no version {} (see `hotrestart config history`)", (*m)->spec.name, *to)
            : fmt::format("configuration {} has no applied version before version {}", (*m)->spec.name, (*m)->version),
         {}});
  }
  if (target->outcome != ConfigOutcome::Applied)
    return done({"unavailable",
                 fmt::format("version {} of configuration {} was refused ({}); only an applied version can come back",
                             target->version, (*m)->spec.name, target->reason),
                 {}});
  if (!target->kept)
    return done({"unavailable",
                 fmt::format("the bytes of version {} of configuration {} are no longer kept (the newest {} are)",
                             target->version, (*m)->spec.name, kConfigVersionsKept),
                 {}});
  if (target->version == (*m)->version)
    return done({"unavailable",
                 fmt::format("version {} of configuration {} is the live one", target->version, (*m)->spec.name),
                 {}});
  auto reload = std::make_unique<Reload>();
  Candidate c = candidate_for(*m, who);
  c.entry.restores = target->version;
  reload->candidates.push_back(std::move(c));
  reload->done = std::move(done);
  start(std::move(reload));
}

void ConfigReloads::start(std::unique_ptr<Reload> reload) {
  reload_ = std::move(reload);
  // Off the loop: read, hash, keep on disk, and copy into a sealed memfd. The task owns copies of
  // what it reads, and writes only its own results.
  struct Job {
    std::string path;           // What to read: the file, or a rollback's kept bytes.
    std::string expect_sha256;  // A rollback: what the kept bytes must hash to.
    std::string live_sha256;    // A file: the bytes that need no reload.
    std::string keep_path;      // Where its bytes are kept.
    std::string stage_path;     // ForServers: where they are staged beside the file ("": not).
    std::string file_path;      // The configured file, whose place they take.
    std::string name;
    std::uint64_t version;
  };
  struct Found {
    Candidate::Read read;
    std::string sha256;
    std::uint64_t bytes = 0;
  };
  auto jobs = std::make_shared<std::vector<Job>>();
  for (const auto& c : reload_->candidates) {
    const ConfigStore& store = *c.config->store;
    const std::uint64_t restores = c.entry.restores;
    jobs->push_back({restores != 0 ? store.content_path(restores) : c.entry.source,
                     restores != 0 ? store.find(restores)->sha256 : std::string(), c.config->sha256,
                     store.content_path(c.entry.version),
                     servers_.installs() ? staged_path(c.config->spec.path) : std::string(), c.config->spec.path,
                     c.config->spec.name, c.entry.version});
  }
  auto outcomes = std::make_shared<std::vector<Found>>(jobs->size());
  const int rc = reading_.start(
      [jobs, outcomes] {
        for (std::size_t i = 0; i < jobs->size(); ++i) {
          const Job& job = (*jobs)[i];
          Found& out = (*outcomes)[i];
          auto read = read_config_file(job.path);
          if (!read) {
            out.read.error = read.error().text();
            continue;
          }
          const bool from_store = !job.expect_sha256.empty();
          if (from_store && read->sha256 != job.expect_sha256) {
            out.read.error = fmt::format("the kept bytes of {} do not hash to what the history says", job.path);
            continue;
          }
          out.sha256 = read->sha256;
          out.bytes = read->bytes->size();
          if (!from_store) out.read.identity = read->identity;
          if (!from_store && read->sha256 == job.live_sha256) {
            out.read.unchanged = true;
            continue;
          }
          if (auto ok = write_file_atomically(job.keep_path, *read->bytes); !ok) {
            out.read.error = fmt::format("cannot keep the new version in the state directory: {}", ok.error().text());
            continue;
          }
          auto memfd = config_memfd(job.name, job.version, *read->bytes);
          if (!memfd) {
            out.read.error = memfd.error().text();
            continue;
          }
          out.read.memfd = std::move(memfd->memfd);
          out.read.offer = memfd->offer;
          if (!job.stage_path.empty()) {
            if (auto ok = write_file_atomically(job.stage_path, *read->bytes); !ok) {
              out.read.error = fmt::format("cannot stage the new version: {}", ok.error().text());
              continue;
            }
            // It takes the file's place: with the file's permissions.
            struct stat st {};
            if (::stat(job.file_path.c_str(), &st) == 0) ::chmod(job.stage_path.c_str(), st.st_mode & 07777);
            out.read.staged = job.stage_path;
          }
        }
      },
      [this, outcomes] {
        for (std::size_t i = 0; i < outcomes->size(); ++i) {
          Candidate& c = reload_->candidates[i];
          Found& out = (*outcomes)[i];
          c.read = std::move(out.read);
          c.entry.sha256 = std::move(out.sha256);
          c.entry.bytes = out.bytes;
        }
        read_done();
      });
  if (rc != 0) refuse("invalid", fmt::format("cannot read the configuration: {}", uv_strerror(rc)));
}

void ConfigReloads::read_done() {
  // A file that cannot be read is refused before any generation hears of it.
  for (const auto& c : reload_->candidates) {
    if (!c.read.error.empty()) {
      host_.record_event({{"type", "config.refused"},
                          {"name", c.config->spec.name},
                          {"source", c.entry.source},
                          {"reason", c.read.error}});
      refuse("invalid", fmt::format("configuration {}: {}; nothing was changed", c.config->spec.name, c.read.error));
      return;
    }
  }
  // Unchanged files need nothing; the others go to every generation that reads them.
  std::erase_if(reload_->candidates, [&](const Candidate& c) {
    if (!c.read.unchanged) return false;
    reload_->unchanged.push_back({{"name", c.config->spec.name},
                                  {"version", c.config->version},
                                  {"changed", false},
                                  {"sha256", c.config->sha256}});
    return true;
  });
  if (reload_->candidates.empty()) {
    reload_->phase = Reload::Phase::Committing;  // With nobody to wait for.
    maybe_finish();
    return;
  }
  reload_->phase = Reload::Phase::Preparing;
  for (const auto& c : reload_->candidates) {
    host_.record_event({{"type", "config.reload"},
                        {"name", c.config->spec.name},
                        {"version", c.entry.version},
                        {"sha256", c.entry.sha256},
                        {"origin", c.entry.origin}});
    for (Generation* g : host_.config_readers(c.config->spec.name)) {
      send_prepare(*g, c);
      reload_->participants.insert(g->number());
      reload_->waiting[g->number()].insert(c.config->spec.name);
    }
  }
  start_checks();
  deadline_.start(timeout_, [this] {
    std::string who;
    for (const auto& [number, names] : reload_->waiting) {
      if (names.empty()) continue;
      who += who.empty() ? "" : ", ";
      who += number == kCheck ? fmt::format("the check ({})", servers_.check) : fmt::format("generation {}", number);
    }
    if (reload_->phase == Reload::Phase::Preparing) {
      abort_all("invalid", fmt::format("{} did not answer within {} ms", who, timeout_.count()));
    } else {
      log_warn("configuration reload: {} did not confirm the commit within {} ms", who, timeout_.count());
      reload_->waiting.clear();
      maybe_finish();
    }
  });
  maybe_decide();
}

void ConfigReloads::start_checks() {
  if (servers_.check.empty()) return;
  for (auto& c : reload_->candidates) {
    const std::string name = c.config->spec.name;
    const std::uint64_t version = c.entry.version;
    std::string command = servers_.check;
    for (auto at = command.find("{file}"); at != std::string::npos; at = command.find("{file}", at))
      command.replace(at, 6, shell_words({c.read.staged}));
    reload_->waiting[kCheck].insert(name);
    std::vector<std::string> env{"HOTRESTART_CONFIG_NAME=" + name, "HOTRESTART_CONFIG_FILE=" + c.read.staged,
                                 fmt::format("HOTRESTART_CONFIG_VERSION={}", version)};
    c.check = host_.start_config_check(command, std::move(env), [this, name, version](PreflightOutcome outcome) {
      on_check_done(name, version, outcome);
    });
  }
}

void ConfigReloads::on_check_done(const std::string& name, std::uint64_t version, const PreflightOutcome& outcome) {
  if (!reload_ || reload_->phase != Reload::Phase::Preparing) return;
  auto it = reload_->waiting.find(kCheck);
  if (it == reload_->waiting.end() || it->second.erase(name) == 0) return;
  if (!outcome.passed && reload_->refusal.empty()) {
    // The preflight's wording is "preflight failed (exit status 1): OUTPUT"; the check's is
    // "exit status 1: OUTPUT".
    std::string why = outcome.reason;
    if (const auto close = why.find(')'); why.starts_with("preflight failed (") && close != std::string::npos)
      why = why.substr(18, close - 18) + why.substr(close + 1);
    reload_->refusal = fmt::format("the check `{}` refused version {}: {}", servers_.check, version, why);
  }
  maybe_decide();
}

std::string ConfigReloads::install() {
  for (auto& c : reload_->candidates) {
    if (c.read.staged.empty()) continue;
    if (::rename(c.read.staged.c_str(), c.config->spec.path.c_str()) != 0)
      return fmt::format("cannot put the new version in place of {}: {}", c.config->spec.path, std::strerror(errno));
    c.read.staged.clear();
    if (servers_.reload_signal == 0) continue;
    for (Generation* g : host_.signal_targets(c.config->spec.name)) {
      if (g->signal_main(servers_.reload_signal)) {
        log_info("configuration {}: {} to generation {} (pid {})", c.config->spec.name,
                 signal_name(servers_.reload_signal), g->number(), g->pid());
        reload_->committed.insert(g->number());
      }
    }
  }
  return {};
}

void ConfigReloads::send_prepare(Generation& g, const Candidate& c) {
  const int fd = c.read.memfd.get();
  if (!g.channel().send(wire::ConfigPrepare{c.read.offer}, std::span<const int>(&fd, 1)))
    log_warn("generation {}: the configuration {} could not be sent", g.number(), c.config->spec.name);
}

void ConfigReloads::on_hello(Generation& g, const wire::Hello& hello, bool adopted) {
  for (const auto& held : hello.configs) {
    auto found = pick(held.name);
    if (!found) {
      log_warn("generation {} reads configuration {}, which `run --config` does not name: it keeps what it loaded",
               g.number(), quote(held.name));
      continue;
    }
    Managed& m = **found;
    if (!adopted || held.version != m.version) {
      const int fd = m.memfd.get();
      g.channel().send(wire::ConfigPrepare{m.offer}, std::span<const int>(&fd, 1));
      g.channel().send(wire::ConfigCommit{m.spec.name, m.version});
    }
    if (!reload_ || reload_->phase == Reload::Phase::Reading) continue;
    // A reload under way: this generation takes part in it too.
    for (const auto& c : reload_->candidates) {
      if (c.config != &m) continue;
      send_prepare(g, c);
      reload_->participants.insert(g.number());
      reload_->waiting[g.number()].insert(m.spec.name);
      if (reload_->phase == Reload::Phase::Committing)
        g.channel().send(wire::ConfigCommit{m.spec.name, c.entry.version});
    }
  }
}

std::optional<std::string> ConfigReloads::on_prepared(Generation& g, const wire::ConfigPrepared& m) {
  const Candidate* c = nullptr;
  if (reload_) {
    for (const auto& candidate : reload_->candidates)
      if (candidate.config->spec.name == m.name && candidate.entry.version == m.version) c = &candidate;
  }
  if (c == nullptr) {
    // The version it starts with (or is brought to after a takeover).
    if (m.ok) return std::nullopt;
    return fmt::format("generation {} (pid {}) refused version {} of configuration {}: {}", g.number(), g.pid(),
                       m.version, m.name, printable(m.reason));
  }
  if (reload_->phase == Reload::Phase::Committing) {
    // It joined after the decision: the commit was sent with the prepare.
    if (!m.ok)
      return fmt::format("generation {} (pid {}) refused version {} of configuration {}: {}", g.number(), g.pid(),
                         m.version, m.name, printable(m.reason));
    return std::nullopt;
  }
  auto it = reload_->waiting.find(g.number());
  if (it == reload_->waiting.end() || it->second.erase(m.name) == 0) return std::nullopt;
  if (!m.ok && reload_->refusal.empty())
    reload_->refusal = fmt::format("generation {} (pid {}) refused it: {}", g.number(), g.pid(), printable(m.reason));
  maybe_decide();
  return std::nullopt;
}

void ConfigReloads::on_committed(Generation& g, const wire::ConfigCommitted& m) {
  if (!m.ok) log_warn("generation {} could not commit version {} of configuration {}", g.number(), m.version, m.name);
  if (!reload_ || reload_->phase != Reload::Phase::Committing) return;
  auto it = reload_->waiting.find(g.number());
  if (it == reload_->waiting.end() || it->second.erase(m.name) == 0) return;
  if (m.ok && it->second.empty()) reload_->committed.insert(g.number());
  maybe_finish();
}

void ConfigReloads::on_gone(std::uint64_t generation) {
  if (!reload_ || reload_->phase == Reload::Phase::Reading) return;
  reload_->participants.erase(generation);
  if (reload_->waiting.erase(generation) == 0) return;
  if (reload_->phase == Reload::Phase::Preparing)
    maybe_decide();
  else
    maybe_finish();
}

void ConfigReloads::maybe_decide() {
  if (reload_->phase != Reload::Phase::Preparing) return;
  if (!reload_->refusal.empty()) {
    abort_all("invalid", reload_->refusal);
    return;
  }
  for (const auto& [number, names] : reload_->waiting)
    if (!names.empty()) return;
  // Everyone has it staged. A file replaced or deleted meanwhile is not what the operator now has:
  // nothing switches, and a reload of the file as it is now can follow.
  for (const auto& c : reload_->candidates) {
    if (!c.read.identity) continue;
    auto now = identity_of_path(c.entry.source);
    if (!now || !(*now == *c.read.identity)) {
      abort_all("invalid", fmt::format("{} was {} while the reload was under way; reload it again", c.entry.source,
                                       now ? "changed" : "deleted"));
      return;
    }
  }
  // A server that reads the file itself gets it now, and is told; then the SDK generations switch.
  if (const std::string why = install(); !why.empty()) {
    abort_all("invalid", why);
    return;
  }
  commit_all();
}

void ConfigReloads::abort_all(const std::string& code, const std::string& reason) {
  deadline_.stop();
  for (auto& c : reload_->candidates) {
    for (std::uint64_t number : reload_->participants)
      if (Generation* g = host_.config_generation(number))
        g->channel().send(wire::ConfigAbort{c.config->spec.name, c.entry.version});
    c.entry.outcome = ConfigOutcome::Refused;
    c.entry.reason = reason;
    c.entry.time_ms = wall_clock_ms();
    c.config->history_file->save(c.config->store->add(c.entry));
    host_.record_event(entry_event(*c.config, c.entry));
  }
  std::string names;
  for (const auto& c : reload_->candidates)
    names += fmt::format("{}{} version {}", names.empty() ? "" : ", ", c.config->spec.name, c.entry.version);
  refuse(code, fmt::format("{} refused: {}; every generation keeps the version it has", names, reason));
}

void ConfigReloads::commit_all() {
  reload_->phase = Reload::Phase::Committing;
  reload_->waiting.clear();
  for (const auto& c : reload_->candidates) {
    for (std::uint64_t number : reload_->participants) {
      Generation* g = host_.config_generation(number);
      if (g == nullptr) continue;
      g->channel().send(wire::ConfigCommit{c.config->spec.name, c.entry.version});
      reload_->waiting[number].insert(c.config->spec.name);
    }
  }
  maybe_finish();
}

void ConfigReloads::maybe_finish() {
  if (reload_->phase != Reload::Phase::Committing) return;
  for (const auto& [number, names] : reload_->waiting)
    if (!names.empty()) return;
  deadline_.stop();
  json configs = json::array();
  for (auto& c : reload_->candidates) {
    Managed& m = *c.config;
    c.entry.outcome = ConfigOutcome::Applied;
    c.entry.time_ms = wall_clock_ms();
    c.entry.generations.assign(reload_->committed.begin(), reload_->committed.end());
    const std::uint64_t previous = m.version;
    m.version = c.entry.version;
    m.sha256 = c.entry.sha256;
    m.bytes = c.entry.bytes;
    m.memfd = std::move(c.read.memfd);
    m.offer = c.read.offer;
    m.history_file->save(m.store->add(c.entry));
    host_.record_event(entry_event(m, c.entry));
    log_info("configuration {}: version {} is live ({} bytes, sha256 {}{}), in {} generation(s)", m.spec.name,
             m.version, m.bytes, m.sha256.substr(0, 12),
             c.entry.restores != 0 ? fmt::format(", the bytes of version {}", c.entry.restores) : "",
             c.entry.generations.size());
    json one{{"name", m.spec.name},
             {"version", m.version},
             {"previous", previous},
             {"changed", true},
             {"sha256", m.sha256},
             {"bytes", m.bytes},
             {"generations", c.entry.generations}};
    if (c.entry.restores != 0) one["restores"] = c.entry.restores;
    configs.push_back(std::move(one));
  }
  for (auto& one : reload_->unchanged)
    configs.push_back(std::move(one));
  Outcome outcome{"", "", std::move(configs)};
  auto done = std::move(reload_->done);
  reload_.reset();
  if (done) done(outcome);
  next_saved();
}

void ConfigReloads::refuse(const std::string& code, const std::string& message) {
  deadline_.stop();
  for (const auto& c : reload_->candidates)
    if (!c.read.staged.empty()) ::unlink(c.read.staged.c_str());
  log_warn("configuration reload refused: {}", message);
  auto done = std::move(reload_->done);
  reload_.reset();
  if (done) done(Outcome{code, message, json::array()});
  next_saved();
}

void ConfigReloads::saved(const std::string& name) {
  saved_.insert(name);
  next_saved();
}

void ConfigReloads::next_saved() {
  if (reload_ || saved_.empty()) return;
  const std::string name = *saved_.begin();
  saved_.erase(saved_.begin());
  auto m = pick(name);
  if (!m) return;
  reload(name, std::nullopt, {"watch", -1, -1}, [managed = *m](const Outcome& outcome) {
    if (outcome.code.empty()) {
      managed->watch_error.clear();
      return;
    }
    managed->watch_error = outcome.message;
    managed->watch_error_ms = wall_clock_ms();
  });
}

json ConfigReloads::entry_event(const Managed& m, const ConfigVersion& v) const {
  json e{{"type", v.outcome == ConfigOutcome::Applied ? "config.applied" : "config.refused"},
         {"name", m.spec.name},
         {"version", v.version},
         {"sha256", v.sha256},
         {"bytes", v.bytes},
         {"origin", v.origin},
         {"generations", v.generations}};
  if (!v.reason.empty()) e["reason"] = v.reason;
  if (v.restores != 0) e["restores"] = v.restores;
  if (v.uid >= 0) e["uid"] = v.uid;
  if (v.pid >= 0) e["pid"] = v.pid;
  return e;
}

json ConfigReloads::status_json() const {
  json list = json::array();
  for (const auto& m : configs_) {
    json one{{"name", m->spec.name}, {"path", m->spec.path}, {"version", m->version},
             {"sha256", m->sha256},  {"bytes", m->bytes},    {"dir", m->store->dir()}};
    if (const ConfigVersion* v = m->store->find(m->version)) {
      one["applied_ms"] = v->time_ms;
      one["origin"] = v->origin;
    }
    if (!m->store->error().empty()) one["error"] = m->store->error();
    if (!m->watch_error.empty()) one["watch_error"] = {{"message", m->watch_error}, {"time_ms", m->watch_error_ms}};
    list.push_back(std::move(one));
  }
  json reload;
  if (reload_) {
    json waiting = json::array();
    for (const auto& [number, names] : reload_->waiting)
      if (!names.empty()) waiting.push_back(number);
    json names = json::array();
    for (const auto& c : reload_->candidates)
      names.push_back({{"name", c.config->spec.name}, {"version", c.entry.version}});
    reload = {{"phase", reload_->phase_name()},
              {"configs", std::move(names)},
              {"waiting_for", std::move(waiting)},
              {"elapsed_ms", std::chrono::duration_cast<Millis>(Clock::now() - reload_->started).count()}};
  }
  return {{"configs", std::move(list)}, {"reload", std::move(reload)}};
}

Result<json> ConfigReloads::history_json(const std::optional<std::string>& name) const {
  auto m = pick(name);
  if (!m) return m.error();
  json versions = json::array();
  for (const auto& v : (*m)->store->versions()) {
    json one = to_json(v);
    one["file"] = v.kept ? json((*m)->store->content_path(v.version)) : json();
    one["live"] = v.version == (*m)->version;
    versions.push_back(std::move(one));
  }
  return json{{"name", (*m)->spec.name},
              {"path", (*m)->spec.path},
              {"version", (*m)->version},
              {"versions", std::move(versions)}};
}

}  // namespace hotrestart
