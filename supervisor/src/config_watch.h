// ConfigWatch: `run --watch-config`. Watches the directory of each configuration file with inotify,
// read on the loop, and calls `saved(name)` when a file was saved: by a rename onto its name (how
// most editors and tools save, IN_MOVED_TO), by any rename in its directory (how Kubernetes swaps a
// ConfigMap's files, through a `..data` symlink), or in place once the writer closed it
// (IN_CLOSE_WRITE; libuv's own uv_fs_event does not ask for that event, hence inotify itself). The
// events of one burst are coalesced for kQuiet first. A call for a file whose bytes did not change
// costs a read and a hash: the reload finds it unchanged and does nothing.
#pragma once

#include <uv.h>

#include <chrono>
#include <functional>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include <hotrestart/base/result.h>
#include <hotrestart/fd.h>

#include "uv_handles.h"

namespace hotrestart {

class ConfigWatch {
 public:
  static constexpr std::chrono::milliseconds kQuiet{2};

  ConfigWatch(uv_loop_t* loop, std::function<void(const std::string& name)> saved);
  ~ConfigWatch();
  ConfigWatch(const ConfigWatch&) = delete;
  ConfigWatch& operator=(const ConfigWatch&) = delete;

  // Watches `path` (absolute) as configuration `name`.
  Status add(const std::string& name, const std::string& path);

 private:
  struct Directory {
    int wd = -1;
    std::string path;
    // Configuration name, and the file's name in the directory.
    std::vector<std::pair<std::string, std::string>> files;
  };
  void on_readable();
  void due(const std::string& name);

  uv_loop_t* loop_;
  std::function<void(const std::string&)> saved_;
  Fd inotify_;
  std::unique_ptr<FdWatch> watch_;
  std::vector<Directory> directories_;
  std::set<std::string> due_;
  Timer quiet_;
};

}  // namespace hotrestart
