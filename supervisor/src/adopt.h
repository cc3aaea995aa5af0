// `hotrestart run --adopt-binds`: the supervisor's side of the preload library
// (supervisor/adopt/adopt.c; docs/operations.md, "Servers that bind their own port").
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <vector>

#include <hotrestart/base/result.h>
#include <hotrestart/fd.h>

#include "process_table.h"

namespace hotrestart {

inline constexpr const char* kAdoptLibraryName = "libhotrestart-adopt.so";

// Where the preload library is: $HOTRESTART_ADOPT_LIBRARY if set, else next to this executable's
// directory (../lib/ in a build tree, $libdir/hotrestart/ once installed). An error lists where it
// looked.
Result<std::string> find_adopt_library();

// Whether the dynamic linker will preload a library into `executable`: a script is judged by its
// interpreter; a statically linked program (no PT_INTERP) or a set-user-ID or set-group-ID one
// (the linker ignores LD_PRELOAD for those) is refused with a sentence saying so.
// `shown_as` names the file in the error when `executable` is a /proc/self/fd path.
Status check_preloadable(const std::string& executable, const std::string& shown_as = {});

// What a generation's processes do with their adopted listeners (supervisor/adopt/adopt_page.h).
enum class AdoptMode : std::uint32_t { Serve = 0, Park = 1, Drain = 2 };

// A generation's command page: a sealed memfd of one page that the supervisor writes and every
// process of the generation reads, woken by a futex. The supervisor never reads what is in it, and
// the seals keep a generation from shrinking it under the supervisor's mapping.
class AdoptPage {
 public:
  AdoptPage() = default;
  AdoptPage(AdoptPage&& other) noexcept;
  AdoptPage& operator=(AdoptPage&& other) noexcept;
  AdoptPage(const AdoptPage&) = delete;
  AdoptPage& operator=(const AdoptPage&) = delete;
  ~AdoptPage();

  // A new page, in mode Serve; `http_drain` turns the HTTP drain on for when it parks or drains.
  static Result<AdoptPage> create(bool http_drain);
  // The page of a generation this supervisor did not start (a takeover), from its main process's
  // descriptor `fd` (through /proc): refused unless it is a sealed page of the right size, name and
  // version.
  static Result<AdoptPage> find(pid_t pid, int fd);

  explicit operator bool() const { return page_ != nullptr; }
  int fd() const { return fd_.get(); }
  // Once the generation holds the page, the mapping is all the supervisor needs.
  void close_fd() { fd_.reset(); }
  // Writes `mode` and wakes every process waiting on the page.
  void set(AdoptMode mode);
  AdoptMode mode() const { return mode_; }

 private:
  Fd fd_;
  void* page_ = nullptr;
  AdoptMode mode_ = AdoptMode::Serve;
};

// The TCP connections, other than listeners, that the processes of process group `pgid` hold on
// any of `ports` (local port), from /proc. -1 when they cannot be counted (/proc/net/tcp, or a
// member's /proc/PID/fd, cannot be read).
int count_connections(pid_t pgid, const std::vector<std::uint16_t>& ports);

}  // namespace hotrestart
