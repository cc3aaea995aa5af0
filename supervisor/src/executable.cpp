// Opening, hashing and recognising a release's executable (see executable.h).
#include "executable.h"

#include <fcntl.h>
#include <nettle/sha2.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <filesystem>
#include <string_view>

#include <fmt/format.h>

namespace hotrestart {
namespace {

// The interpreter a "#!" line names: its first word, as the kernel reads it.
std::string interpreter_of(std::string_view head) {
  head.remove_prefix(2);
  const auto line_end = head.find('\n');
  if (line_end != std::string_view::npos) head = head.substr(0, line_end);
  const auto start = head.find_first_not_of(" \t");
  if (start == std::string_view::npos) return {};
  head.remove_prefix(start);
  return std::string(head.substr(0, head.find_first_of(" \t")));
}

std::string sha256_of_path(const std::string& path) {
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK));
  if (!fd) return {};
  auto digest = sha256_of(fd.get());
  return digest ? digest.value() : std::string();
}

}  // namespace

Result<std::string> sha256_of(int fd) {
  sha256_ctx ctx;
  sha256_init(&ctx);
  std::array<std::uint8_t, 1 << 16> buffer{};
  off_t at = 0;
  for (;;) {
    const ssize_t n = ::pread(fd, buffer.data(), buffer.size(), at);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Error::from_errno("read");
    if (n == 0) break;
    sha256_update(&ctx, static_cast<std::size_t>(n), buffer.data());
    at += n;
  }
  std::array<std::uint8_t, SHA256_DIGEST_SIZE> digest{};
  sha256_digest(&ctx, digest.size(), digest.data());
  std::string hex;
  for (auto b : digest)
    hex += fmt::format("{:02x}", b);
  return hex;
}

Result<ExecutableImage> ExecutableImage::open(const std::string& path) {
  ExecutableImage image;
  // Absolute, so that the history says which file it was whatever the directory it is read from.
  std::error_code ec;
  const auto absolute = std::filesystem::absolute(path, ec).lexically_normal();
  image.path_ = ec ? path : absolute.string();
  // O_NONBLOCK: a FIFO put in the way must not block the supervisor; a regular file ignores it.
  image.fd_.reset(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK));
  if (!image.fd_) return Error::from_errno(path);
  struct stat st {};
  if (::fstat(image.fd_.get(), &st) != 0) return Error::from_errno(path);
  if (!S_ISREG(st.st_mode)) return Error::message(fmt::format("{}: not a regular file", path));
  image.size_ = static_cast<std::uint64_t>(st.st_size);
  char head[256] = {};
  const ssize_t n = ::pread(image.fd_.get(), head, sizeof head - 1, 0);
  if (n < 0) return Error::from_errno(path);
  if (n >= 2 && head[0] == '#' && head[1] == '!') {
    image.kind_ = Kind::Script;
    image.interpreter_ = interpreter_of(std::string_view(head, static_cast<std::size_t>(n)));
    if (!image.interpreter_.empty()) image.interpreter_sha256_ = sha256_of_path(image.interpreter_);
  }
  auto digest = sha256_of(image.fd_.get());
  if (!digest) return digest.error().context(path);
  image.sha256_ = std::move(digest).value();
  return image;
}

Result<std::shared_ptr<const ExecutableImage>> ExecutableImage::open_shared(const std::string& path) {
  auto image = open(path);
  if (!image) return image.error();
  return std::make_shared<const ExecutableImage>(std::move(image).value());
}

Status ExecutableImage::still_on_disk() const {
  const std::string now = sha256_of_path(path_);
  if (now.empty()) return Error::message(fmt::format("{} cannot be read any more", path_));
  if (now != sha256_) {
    return Error::message(fmt::format("{} has changed on disk (sha256 {} when the release ran, {} now)", path_,
                                      sha256_.substr(0, 12), now.substr(0, 12)));
  }
  if (kind_ == Kind::Script && !interpreter_.empty() && sha256_of_path(interpreter_) != interpreter_sha256_) {
    return Error::message(fmt::format("its interpreter {} has changed on disk since the release ran", interpreter_));
  }
  return {};
}

Status ExecutableImage::unchanged() const {
  if (kind_ == Kind::Script) return still_on_disk();
  auto now = sha256_of(fd_.get());
  if (!now) return now.error().context(path_);
  if (now.value() != sha256_) {
    return Error::message(fmt::format("{} was rewritten in place since it ran (sha256 {} then, {} now)", path_,
                                      sha256_.substr(0, 12), now.value().substr(0, 12)));
  }
  return {};
}

}  // namespace hotrestart
