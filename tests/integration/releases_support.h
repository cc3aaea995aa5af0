// Helpers for the tests of releases: copies of hello-server that differ in their bytes, their
// hashes (the history itself is read with fixture.h's history() and release()).
#pragma once

#include <fmt/format.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "fixture.h"

namespace hotrestart::it {

// sha256sum of a file (or of /proc/PID/exe: the bytes a process runs).
inline std::string sha256_of(const std::string& path) {
  RunResult r = run({"sha256sum", path}, {}, 20s);
  REQUIRE_MESSAGE(r.exit_code == 0, "sha256sum " << path << ": " << r.err);
  return r.out.substr(0, 64);
}

inline std::string running_sha256(pid_t pid) {
  return sha256_of(fmt::format("/proc/{}/exe", pid));
}

// A copy of hello-server at `path`, made different from every other copy by `tag` (bytes appended
// after the ELF image change its hash, not its behaviour). Written aside and renamed over the path,
// as deploy tools replace a binary.
inline void install_hello(const std::string& path, const std::string& tag) {
  const std::string temp = path + ".new";
  std::filesystem::copy_file(hello_bin(), temp, std::filesystem::copy_options::overwrite_existing);
  std::ofstream(temp, std::ios::app | std::ios::binary) << tag;
  std::filesystem::permissions(temp, std::filesystem::perms::owner_all);
  std::filesystem::rename(temp, path);
}

}  // namespace hotrestart::it
