// `run --watch-config` (see config_watch.h).
#include "config_watch.h"

#include <sys/inotify.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <fmt/format.h>

#include "log.h"

namespace hotrestart {

ConfigWatch::ConfigWatch(uv_loop_t* loop, std::function<void(const std::string&)> saved)
    : loop_(loop), saved_(std::move(saved)), quiet_(loop) {}

ConfigWatch::~ConfigWatch() = default;

Status ConfigWatch::add(const std::string& name, const std::string& path) {
  if (!inotify_) {
    inotify_.reset(::inotify_init1(IN_NONBLOCK | IN_CLOEXEC));
    if (!inotify_) return Error::from_errno("--watch-config: inotify_init1");
    watch_ = std::make_unique<FdWatch>(loop_, inotify_.get(), [this] { on_readable(); });
    if (!watch_->ok()) return Error::message("--watch-config: the inotify descriptor cannot be watched");
  }
  const auto slash = path.rfind('/');
  const std::string dir = slash == 0 ? "/" : path.substr(0, slash);
  const std::string file = path.substr(slash + 1);
  const int wd = ::inotify_add_watch(inotify_.get(), dir.c_str(), IN_CLOSE_WRITE | IN_MOVED_TO | IN_ONLYDIR);
  if (wd < 0) return Error::from_errno(fmt::format("--watch-config: cannot watch {}", dir));
  for (auto& d : directories_) {
    if (d.wd == wd) {
      d.files.emplace_back(name, file);
      return {};
    }
  }
  directories_.push_back({wd, dir, {{name, file}}});
  log_info("configuration {}: watching {} for saves", name, path);
  return {};
}

void ConfigWatch::on_readable() {
  alignas(inotify_event) char buffer[16 * 1024];
  for (;;) {
    const ssize_t n = ::read(inotify_.get(), buffer, sizeof buffer);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    for (ssize_t at = 0; at < n;) {
      const auto* event = reinterpret_cast<const inotify_event*>(buffer + at);
      at += static_cast<ssize_t>(sizeof(inotify_event) + event->len);
      if ((event->mask & IN_Q_OVERFLOW) != 0) {
        // Events were lost: any file may have been saved.
        for (const auto& d : directories_)
          for (const auto& [name, file] : d.files)
            due(name);
        continue;
      }
      const std::string changed = event->len > 0 ? std::string(event->name) : std::string();
      // A new version the supervisor stages beside the file itself (--config-check, --reload-signal).
      if (changed.find(".hotrestart-new") != std::string::npos) continue;
      for (const auto& d : directories_) {
        if (d.wd != event->wd) continue;
        for (const auto& [name, file] : d.files) {
          // A rename onto another name may be a symlink swap that changes what the file's name reads.
          if (changed == file || (event->mask & IN_MOVED_TO) != 0) due(name);
        }
      }
    }
  }
}

void ConfigWatch::due(const std::string& name) {
  due_.insert(name);
  if (quiet_.active()) return;
  quiet_.start(kQuiet, [this] {
    const std::set<std::string> now = std::move(due_);
    due_.clear();
    for (const auto& which : now)
      saved_(which);
  });
}

}  // namespace hotrestart
