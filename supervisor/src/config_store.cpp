// The configurations' history and bytes on disk (see config_store.h).
#include "config_store.h"

#include <fcntl.h>
#include <nettle/sha2.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <fmt/format.h>

#include <hotrestart/base/text.h>
#include <hotrestart/fd.h>
#include <hotrestart/wire/message.h>
#include "release_store.h"

namespace hotrestart {

using nlohmann::json;

Result<ConfigSpec> parse_config_spec(std::string_view text) {
  const auto eq = text.find('=');
  if (eq == std::string_view::npos)
    return Error::message(fmt::format("--config {}: give NAME=PATH (for example app=/etc/app.conf)", quote(text)));
  ConfigSpec spec{std::string(text.substr(0, eq)), std::string(text.substr(eq + 1))};
  if (!wire::valid_name(spec.name))
    return Error::message(fmt::format("--config {}: the name {} is not valid (1-128 of A-Z a-z 0-9 . _ : -)",
                                      quote(text), quote(spec.name)));
  if (spec.path.empty()) return Error::message(fmt::format("--config {}: the path is empty", quote(text)));
  return spec;
}

std::string_view outcome_name(ConfigOutcome outcome) {
  return outcome == ConfigOutcome::Applied ? "applied" : "refused";
}

json to_json(const ConfigVersion& v) {
  json j{{"version", v.version}, {"sha256", v.sha256},           {"bytes", v.bytes},
         {"time_ms", v.time_ms}, {"origin", v.origin},           {"uid", v.uid},
         {"pid", v.pid},         {"source", v.source},           {"outcome", outcome_name(v.outcome)},
         {"reason", v.reason},   {"generations", v.generations}, {"kept", v.kept}};
  if (v.restores != 0) j["restores"] = v.restores;
  return j;
}

std::optional<ConfigVersion> config_version_from_json(const json& j) {
  if (!j.is_object()) return std::nullopt;
  try {
    ConfigVersion v;
    v.version = j.at("version").get<std::uint64_t>();
    v.sha256 = j.at("sha256").get<std::string>();
    v.bytes = j.value("bytes", std::uint64_t{0});
    v.time_ms = j.value("time_ms", std::int64_t{0});
    v.origin = j.value("origin", "");
    v.uid = j.value("uid", std::int64_t{-1});
    v.pid = j.value("pid", std::int64_t{-1});
    v.source = j.value("source", "");
    v.restores = j.value("restores", std::uint64_t{0});
    const std::string outcome = j.value("outcome", "");
    if (outcome != "applied" && outcome != "refused") return std::nullopt;
    v.outcome = outcome == "applied" ? ConfigOutcome::Applied : ConfigOutcome::Refused;
    v.reason = j.value("reason", "");
    v.generations = j.value("generations", std::vector<std::uint64_t>{});
    v.kept = j.value("kept", false);
    if (v.version == 0 || v.sha256.size() != 64) return std::nullopt;
    return v;
  } catch (const json::exception&) {
    return std::nullopt;
  }
}

bool FileIdentity::operator==(const FileIdentity& o) const {
  return dev == o.dev && ino == o.ino && size == o.size && mtime.tv_sec == o.mtime.tv_sec &&
         mtime.tv_nsec == o.mtime.tv_nsec && ctime.tv_sec == o.ctime.tv_sec && ctime.tv_nsec == o.ctime.tv_nsec;
}

FileIdentity identity_of(const struct stat& st) {
  return FileIdentity{st.st_dev, st.st_ino, st.st_size, st.st_mtim, st.st_ctim};
}

std::string sha256_hex(std::string_view bytes) {
  sha256_ctx ctx;
  sha256_init(&ctx);
  sha256_update(&ctx, bytes.size(), reinterpret_cast<const std::uint8_t*>(bytes.data()));
  std::array<std::uint8_t, SHA256_DIGEST_SIZE> digest{};
  sha256_digest(&ctx, digest.size(), digest.data());
  std::string hex;
  hex.reserve(2 * digest.size());
  for (auto b : digest)
    hex += fmt::format("{:02x}", b);
  return hex;
}

Result<FileIdentity> identity_of_path(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return Error::from_errno(path);
  return identity_of(st);
}

Result<ReadConfig> read_config_file(const std::string& path) {
  // O_NONBLOCK: a FIFO put in the way must not block the reader.
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK));
  if (!fd) return Error::from_errno(fmt::format("cannot read {}", path));
  struct stat before {};
  if (::fstat(fd.get(), &before) != 0) return Error::from_errno(fmt::format("cannot read {}", path));
  if (!S_ISREG(before.st_mode)) return Error::message(fmt::format("{} is not a regular file", path));
  if (before.st_size == 0) return Error::message(fmt::format("{} is empty", path));
  if (static_cast<std::uint64_t>(before.st_size) > kMaxConfigBytes)
    return Error::message(fmt::format("{} is {} bytes, more than the {} a configuration may have", path, before.st_size,
                                      kMaxConfigBytes));
  auto bytes = std::make_shared<std::string>(static_cast<std::size_t>(before.st_size), '\0');
  std::size_t done = 0;
  for (;;) {
    if (done == bytes->size()) {
      // One byte more than it had: a file that grows while it is read is caught here.
      char extra = 0;
      const ssize_t n = ::pread(fd.get(), &extra, 1, static_cast<off_t>(done));
      if (n < 0 && errno == EINTR) continue;
      if (n != 0) return Error::message(fmt::format("{} changed while it was read", path));
      break;
    }
    const ssize_t n = ::pread(fd.get(), bytes->data() + done, bytes->size() - done, static_cast<off_t>(done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Error::from_errno(fmt::format("cannot read {}", path));
    if (n == 0) return Error::message(fmt::format("{} changed while it was read", path));
    done += static_cast<std::size_t>(n);
  }
  struct stat after {};
  if (::fstat(fd.get(), &after) != 0) return Error::from_errno(fmt::format("cannot read {}", path));
  if (!(identity_of(before) == identity_of(after)))
    return Error::message(fmt::format("{} changed while it was read", path));
  ReadConfig read;
  read.sha256 = sha256_hex(*bytes);
  read.identity = identity_of(after);
  read.bytes = std::move(bytes);
  return read;
}

ConfigStore::ConfigStore(const std::string& state_dir, std::string name)
    : dir_(state_dir + "/configs/" + name), name_(std::move(name)) {}

Status ConfigStore::open() {
  std::error_code ec;
  std::filesystem::create_directories(dir_, ec);
  if (ec) {
    error_ = fmt::format("cannot create {}: {}", dir_, ec.message());
    return Error::message(error_);
  }
  ::chmod(dir_.c_str(), 0700);
  std::ifstream in(history_path());
  if (!in) return {};  // No history yet.
  std::stringstream text;
  text << in.rdbuf();
  json j = json::parse(text.str(), nullptr, false);
  if (j.is_discarded() || !j.is_object() || !j.contains("versions") || !j["versions"].is_array()) {
    const std::string aside = fmt::format("{}.unreadable-{}", history_path(), wall_clock_ms());
    ::rename(history_path().c_str(), aside.c_str());
    error_ = fmt::format("{} could not be read; it was set aside as {}", history_path(), aside);
    return {};
  }
  for (const auto& entry : j["versions"]) {
    auto v = config_version_from_json(entry);
    if (!v) continue;
    if (v->kept && ::access(content_path(v->version).c_str(), R_OK) != 0) v->kept = false;
    versions_.push_back(std::move(*v));
  }
  return {};
}

const ConfigVersion* ConfigStore::find(std::uint64_t version) const {
  for (const auto& v : versions_)
    if (v.version == version) return &v;
  return nullptr;
}

const ConfigVersion* ConfigStore::live() const {
  for (auto it = versions_.rbegin(); it != versions_.rend(); ++it)
    if (it->outcome == ConfigOutcome::Applied) return &*it;
  return nullptr;
}

const ConfigVersion* ConfigStore::applied_before(std::uint64_t version) const {
  const ConfigVersion* found = nullptr;
  for (const auto& v : versions_)
    if (v.outcome == ConfigOutcome::Applied && v.version < version) found = &v;
  return found;
}

std::uint64_t ConfigStore::next_version() const {
  std::uint64_t most = 0;
  for (const auto& v : versions_)
    most = std::max(most, v.version);
  return most + 1;
}

std::string ConfigStore::content_path(std::uint64_t version) const {
  return fmt::format("{}/{}.conf", dir_, version);
}

std::string ConfigStore::add(ConfigVersion version) {
  versions_.push_back(std::move(version));
  // The newest kConfigVersionsKept keep their bytes, and so does the live one whatever its age.
  const ConfigVersion* current = live();
  std::size_t newer = 0;
  for (auto it = versions_.rbegin(); it != versions_.rend(); ++it) {
    if (!it->kept) continue;
    if (++newer <= kConfigVersionsKept || &*it == current) continue;
    ::unlink(content_path(it->version).c_str());
    it->kept = false;
  }
  return render();
}

std::string ConfigStore::render() const {
  json list = json::array();
  for (const auto& v : versions_)
    list.push_back(to_json(v));
  return json{{"name", name_}, {"versions", std::move(list)}}.dump(1, ' ', false, json::error_handler_t::replace) +
         "\n";
}

}  // namespace hotrestart
