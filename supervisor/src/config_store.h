// The configurations `run --config NAME=PATH` manages, on disk: for each, STATE-DIR/configs/NAME/
// holds history.json (every version: hash, size, time, who, how it came and how it ended) and the
// bytes of the newest versions (V.conf), so that `config show`, `diff` and `rollback` have them
// after a restart of the supervisor. Pure parts (the history as JSON, reading a file with its
// checks) are apart from the files, for tests; nothing here runs on the loop by itself.
#pragma once

#include <sys/stat.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <hotrestart/base/result.h>

namespace hotrestart {

// The largest configuration file the supervisor takes.
inline constexpr std::uint64_t kMaxConfigBytes = 16 << 20;
// How many of the newest versions keep their bytes on disk (the history keeps every entry).
inline constexpr std::size_t kConfigVersionsKept = 100;

// `--config NAME=PATH`.
struct ConfigSpec {
  std::string name;
  std::string path;  // Absolute once run has checked it.
};
Result<ConfigSpec> parse_config_spec(std::string_view text);

enum class ConfigOutcome { Applied, Refused };

struct ConfigVersion {
  std::uint64_t version = 0;
  std::string sha256;  // Lower-case hex.
  std::uint64_t bytes = 0;
  std::int64_t time_ms = 0;  // When it was applied or refused (wall clock).
  std::string origin;        // "start", "reload", "SIGHUP", "watch", "rollback".
  std::int64_t uid = -1;     // Who asked (control socket), -1 for the supervisor itself.
  std::int64_t pid = -1;
  std::string source;          // The file it was read from ("" for a rollback).
  std::uint64_t restores = 0;  // A rollback: the version whose bytes it brought back.
  ConfigOutcome outcome = ConfigOutcome::Applied;
  std::string reason;                      // Refused: why.
  std::vector<std::uint64_t> generations;  // The generations that took it at its reload.
  bool kept = true;                        // Its bytes are still in V.conf.
};

std::string_view outcome_name(ConfigOutcome outcome);
nlohmann::json to_json(const ConfigVersion& v);
// Reads an entry back; nullopt for one that is not an entry (the history is then read without it).
std::optional<ConfigVersion> config_version_from_json(const nlohmann::json& j);

// A file's identity as a reload reads it: the reload is refused if it is another by the commit.
struct FileIdentity {
  dev_t dev = 0;
  ino_t ino = 0;
  off_t size = 0;
  timespec mtime{};
  timespec ctime{};
  bool operator==(const FileIdentity& o) const;
};
FileIdentity identity_of(const struct stat& st);

// A configuration file read whole, with its hash and identity.
struct ReadConfig {
  std::shared_ptr<const std::string> bytes;
  std::string sha256;
  FileIdentity identity;
};
// Reads `path`: a regular file of 1 to kMaxConfigBytes bytes that does not change while it is read.
// The error names the file and what is wrong with it.
Result<ReadConfig> read_config_file(const std::string& path);
// The identity of `path` now, or an error (it is gone).
Result<FileIdentity> identity_of_path(const std::string& path);

// The SHA-256 of bytes in memory, in lower-case hex.
std::string sha256_hex(std::string_view bytes);

class ConfigStore {
 public:
  // STATE-DIR/configs/NAME.
  ConfigStore(const std::string& state_dir, std::string name);

  // Creates the directory and reads the history. A history that cannot be read is set aside
  // (history.json.unreadable-MS) and the error kept for status; the supervisor goes on with an
  // empty one.
  Status open();
  const std::string& dir() const { return dir_; }
  const std::string& error() const { return error_; }
  const std::vector<ConfigVersion>& versions() const { return versions_; }
  const ConfigVersion* find(std::uint64_t version) const;
  // The newest applied version, or null.
  const ConfigVersion* live() const;
  // The applied version before `version`, or null.
  const ConfigVersion* applied_before(std::uint64_t version) const;
  std::uint64_t next_version() const;
  // Where version `version`'s bytes are.
  std::string content_path(std::uint64_t version) const;

  // Adds an entry, forgets the bytes of versions past kConfigVersionsKept (deleting their files),
  // and returns the history as the file's contents, to write (off the loop) to history_path().
  std::string add(ConfigVersion version);
  std::string history_path() const { return dir_ + "/history.json"; }
  std::string render() const;

 private:
  std::string dir_;
  std::string name_;
  std::vector<ConfigVersion> versions_;
  std::string error_;
};

}  // namespace hotrestart
