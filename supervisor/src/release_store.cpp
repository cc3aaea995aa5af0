// The state directory: its default place, its lock, reading the history, and writing it atomically
// off the loop (see release_store.h).
#include "release_store.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <iterator>

#include <fmt/format.h>

#include "log.h"

namespace hotrestart {
namespace {

using nlohmann::json;

// A history file larger than this is not read: it cannot be one this supervisor wrote.
constexpr std::size_t kMaxHistoryBytes = 16 << 20;

Status make_dirs(const std::string& dir) {
  std::string path;
  std::size_t start = 0;
  while (start <= dir.size()) {
    const auto slash = dir.find('/', start + 1);
    path = dir.substr(0, slash);
    if (!path.empty() && ::mkdir(path.c_str(), 0700) != 0 && errno != EEXIST) {
      return Error::from_errno(fmt::format("mkdir {}", path));
    }
    if (slash == std::string::npos) break;
    start = slash;
  }
  struct stat st {};
  if (::stat(dir.c_str(), &st) != 0) return Error::from_errno(fmt::format("stat {}", dir));
  if (!S_ISDIR(st.st_mode)) return Error::message(fmt::format("{} is not a directory", dir));
  return {};
}

Status write_all(int fd, const std::string& contents) {
  std::size_t done = 0;
  while (done < contents.size()) {
    const ssize_t n = ::write(fd, contents.data() + done, contents.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Error::from_errno("write");
    done += static_cast<std::size_t>(n);
  }
  return {};
}

}  // namespace

std::int64_t wall_clock_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string default_state_dir(const std::string& name) {
  if (const char* systemd = std::getenv("STATE_DIRECTORY"); systemd != nullptr && systemd[0] == '/') {
    // systemd lists several directories separated by ':' when StateDirectory= names several.
    std::string first(systemd);
    first = first.substr(0, first.find(':'));
    return fmt::format("{}/{}", first, name);
  }
  if (::geteuid() == 0) return fmt::format("/var/lib/hotrestart/{}", name);
  if (const char* xdg = std::getenv("XDG_STATE_HOME"); xdg != nullptr && xdg[0] == '/') {
    return fmt::format("{}/hotrestart/{}", xdg, name);
  }
  if (const char* home = std::getenv("HOME"); home != nullptr && home[0] == '/') {
    return fmt::format("{}/.local/state/hotrestart/{}", home, name);
  }
  return fmt::format("/tmp/hotrestart-{}/state/{}", ::geteuid(), name);
}

Status write_file_atomically(const std::string& path, const std::string& contents) {
  const std::string temp = fmt::format("{}.tmp-{}", path, ::getpid());
  Fd fd(::open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600));
  if (!fd) return Error::from_errno(fmt::format("create {}", temp));
  Status ok = write_all(fd.get(), contents);
  if (ok && ::fsync(fd.get()) != 0) ok = Error::from_errno(fmt::format("fsync {}", temp));
  if (ok && ::close(fd.release()) != 0) ok = Error::from_errno(fmt::format("close {}", temp));
  if (ok && ::rename(temp.c_str(), path.c_str()) != 0) ok = Error::from_errno(fmt::format("rename to {}", path));
  if (!ok) {
    ::unlink(temp.c_str());
    return ok.error().context(fmt::format("write {}", path));
  }
  // The rename is durable once the directory is.
  const std::string dir = path.substr(0, path.rfind('/'));
  Fd dir_fd(::open(dir.empty() ? "/" : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!dir_fd || ::fsync(dir_fd.get()) != 0) return Error::from_errno(fmt::format("fsync {}", dir));
  return {};
}

// ---------------------------------------------------------------------------------------------

struct BackgroundFile::Write {
  uv_work_t request{};
  std::string path;
  std::function<std::string()> render;
  Status status;
  std::shared_ptr<BackgroundFile*> file;
};

BackgroundFile::BackgroundFile(uv_loop_t* loop, std::string path, std::function<void(Status)> done)
    : loop_(loop), path_(std::move(path)), done_(std::move(done)) {}

BackgroundFile::~BackgroundFile() {
  *self_ = nullptr;
}

void BackgroundFile::save(std::string contents) {
  save_rendered([contents = std::move(contents)] { return contents; });
}

void BackgroundFile::save_rendered(std::function<std::string()> render) {
  pending_ = std::move(render);
  if (!writing_) start_write();
}

void BackgroundFile::start_write() {
  auto* w = new Write;
  w->path = path_;
  w->render = std::move(pending_);
  pending_ = nullptr;
  w->file = self_;
  w->request.data = w;
  writing_ = true;
  const int rc = uv_queue_work(
      loop_, &w->request,
      [](uv_work_t* req) {
        auto* write = static_cast<Write*>(req->data);
        write->status = write_file_atomically(write->path, write->render());
      },
      [](uv_work_t* req, int) {
        std::unique_ptr<Write> write(static_cast<Write*>(req->data));
        if (BackgroundFile* file = *write->file) file->write_done(std::move(write->status));
      });
  if (rc != 0) {
    writing_ = false;
    const std::string what = fmt::format("write {}: {}", w->path, uv_strerror(rc));
    delete w;
    if (done_) done_(Error::message(what));
  }
}

void BackgroundFile::write_done(Status status) {
  writing_ = false;
  if (done_) done_(std::move(status));
  if (pending_ && !writing_) start_write();
}

ReleaseStore::ReleaseStore(uv_loop_t* loop, std::string dir)
    : loop_(loop),
      dir_(std::move(dir)),
      file_(std::make_unique<BackgroundFile>(loop_, dir_ + "/" + kHistoryFile,
                                             [this](Status status) { write_done(std::move(status)); })) {}

ReleaseStore::~ReleaseStore() = default;

Status ReleaseStore::open() {
  if (auto ok = make_dirs(dir_); !ok) {
    error_ = ok.error().context("state directory").text();
    log_warn("{}; the release history is kept in memory only", error_);
    return {};
  }
  lock_.reset(::open((dir_ + "/lock").c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600));
  if (!lock_) {
    error_ = Error::from_errno(fmt::format("state directory: open {}/lock", dir_)).text();
    log_warn("{}; the release history is kept in memory only", error_);
    return {};
  }
  if (::flock(lock_.get(), LOCK_EX | LOCK_NB) != 0) {
    if (errno == EWOULDBLOCK) {
      return Error::message(fmt::format(
          "the state directory {} is in use by another supervisor; give each supervisor its own --name or --state-dir",
          dir_));
    }
    return Error::from_errno(fmt::format("state directory: flock {}/lock", dir_));
  }
  persistent_ = true;
  const std::string path = dir_ + "/" + kHistoryFile;
  std::ifstream in(path, std::ios::binary);
  if (!in) return {};  // No history yet.
  std::string text;
  text.resize(kMaxHistoryBytes + 1);
  in.read(text.data(), static_cast<std::streamsize>(text.size()));
  text.resize(static_cast<std::size_t>(in.gcount()));
  auto parsed = text.size() > kMaxHistoryBytes ? Result<ReleaseHistory>(Error::message("the file is too large"))
                                               : ReleaseHistory::from_json(json::parse(text, nullptr, false));
  if (!parsed) {
    // Kept aside for a person to look at; the supervisor starts a new history rather than refuse to
    // serve.
    const std::string aside = fmt::format("{}.unreadable-{}", path, wall_clock_ms());
    ::rename(path.c_str(), aside.c_str());
    error_ = fmt::format("{}: {}; kept as {}, and a new history begins", path, parsed.error().text(), aside);
    log_warn("{}", error_);
    return {};
  }
  history_ = std::move(parsed).value();
  history_.end_inherited(wall_clock_ms());
  return {};
}

void ReleaseStore::save() {
  if (!persistent_) return;
  // A copy, rendered off the loop: 50 releases take the loop a millisecond as JSON.
  file_->save_rendered([history = history_] { return history.to_json().dump(1) + "\n"; });
}

void ReleaseStore::write_done(Status status) {
  if (status) {
    if (!error_.empty()) log_info("the release history is written again to {}", dir_);
    error_.clear();
    saved_ms_ = wall_clock_ms();
  } else if (error_ != status.error().text()) {
    error_ = status.error().text();
    log_warn("{}; the release history is kept in memory and written again with the next change", error_);
  }
}

std::shared_ptr<const ExecutableImage> ReleaseStore::pin(std::uint64_t release,
                                                         std::shared_ptr<const ExecutableImage> image) {
  if (!image) return image;
  for (const auto& [number, held] : pins_) {
    if (held != image && held->sha256() == image->sha256() && held->path() == image->path() &&
        held->kind() == image->kind()) {
      image = held;
      break;
    }
  }
  pins_[release] = image;
  return image;
}

std::shared_ptr<const ExecutableImage> ReleaseStore::pinned(std::uint64_t number) const {
  const auto it = pins_.find(number);
  return it == pins_.end() ? nullptr : it->second;
}

void ReleaseStore::trim_pins(std::uint64_t keep) {
  std::size_t good = 0;
  for (auto it = pins_.rbegin(); it != pins_.rend();) {
    const Release* r = history_.find(it->first);
    const bool wanted = it->first == keep || (r != nullptr && r->served() && good++ < kPinned);
    if (wanted) {
      ++it;
    } else {
      it = decltype(it)(pins_.erase(std::next(it).base()));
    }
  }
}

json ReleaseStore::status_json() const {
  return {{"dir", dir_},
          {"persistent", persistent_},
          {"error", error_.empty() ? json(nullptr) : json(error_)},
          {"saved_ms", saved_ms_}};
}

}  // namespace hotrestart
