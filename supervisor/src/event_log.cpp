// The event log: its files, their turnover, and its followers (see event_log.h).
#include "event_log.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <iterator>

#include <fmt/format.h>

#include <hotrestart/fd.h>

#include "log.h"

namespace hotrestart {
namespace {

// How much of a file is read at a time, from its end backwards.
constexpr std::size_t kTailChunk = 64 * 1024;

// The events of the last `want` complete lines of the file at `path` (fewer if it has fewer), oldest
// first, appended to `out`; a line that is not an object (cut short by a crash) is passed over. Reads
// the file from its end backwards, no further than those lines reach.
void read_tail(const std::string& path, std::size_t want, std::vector<nlohmann::json>& out) {
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  struct stat st {};
  if (!fd || ::fstat(fd.get(), &st) != 0 || st.st_size <= 0 || want == 0) return;
  std::string text;  // The bytes from `offset` to the end.
  auto offset = static_cast<std::size_t>(st.st_size);
  std::size_t newlines = 0;
  // One newline more than the lines wanted: the bytes before it may be a line only partly read.
  while (offset > 0 && newlines <= want) {
    const std::size_t n = std::min(kTailChunk, offset);
    std::string chunk(n, '\0');
    const ssize_t got = ::pread(fd.get(), chunk.data(), n, static_cast<off_t>(offset - n));
    if (got != static_cast<ssize_t>(n)) break;  // Shrunk or unreadable: parse what was read.
    offset -= n;
    newlines += static_cast<std::size_t>(std::count(chunk.begin(), chunk.end(), '\n'));
    text.insert(0, chunk);
  }
  std::size_t begin = 0;
  if (offset > 0) {
    // The first line read may have begun before `offset`.
    begin = text.find('\n');
    begin = begin == std::string::npos ? text.size() : begin + 1;
  }
  std::vector<nlohmann::json> events;
  while (begin < text.size()) {
    std::size_t end = text.find('\n', begin);
    if (end == std::string::npos) end = text.size();
    auto j = nlohmann::json::parse(text.begin() + static_cast<std::ptrdiff_t>(begin),
                                   text.begin() + static_cast<std::ptrdiff_t>(end), nullptr, false);
    if (j.is_object()) events.push_back(std::move(j));
    begin = end + 1;
  }
  const std::size_t skip = events.size() > want ? events.size() - want : 0;
  out.insert(out.end(), std::make_move_iterator(events.begin() + static_cast<std::ptrdiff_t>(skip)),
             std::make_move_iterator(events.end()));
}

std::string dump(const nlohmann::json& j) {
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

std::uint64_t seq_of(const nlohmann::json& e) {
  const auto it = e.find("seq");
  return it != e.end() && it->is_number_unsigned() ? it->get<std::uint64_t>() : 0;
}

}  // namespace

EventLog::EventLog(std::string dir, std::size_t max_bytes) : dir_(std::move(dir)), max_bytes_(max_bytes) {
  if (dir_.empty()) return;
  // The sequence goes on from the newest event of the files a supervisor before this one left: the
  // last few lines of the newest file that has any (a crash may have cut the very last one short).
  for (const std::string& path : {this->path(), this->path() + ".1"}) {
    std::vector<nlohmann::json> events;
    read_tail(path, 4, events);
    for (const auto& e : events)
      seq_ = std::max(seq_, seq_of(e));
    if (seq_ > 0) break;
  }
  Fd fd(::open(path().c_str(), O_RDONLY | O_CLOEXEC));
  struct stat st {};
  if (fd && ::fstat(fd.get(), &st) == 0 && st.st_size > 0) {
    size_ = static_cast<std::size_t>(st.st_size);
    char last = '\n';
    torn_ = ::pread(fd.get(), &last, 1, static_cast<off_t>(size_ - 1)) == 1 && last != '\n';
  }
}

std::string EventLog::path() const {
  return dir_.empty() ? std::string() : dir_ + "/" + kFileName;
}

const nlohmann::json& EventLog::record(nlohmann::json event) {
  last_ = {{"time", utc_timestamp()}, {"seq", ++seq_}};
  last_.update(event);
  std::string line = dump(last_);
  if (!dir_.empty()) write(line + "\n");
  for (auto it = followers_.begin(); it != followers_.end();) {
    // A follower may stop following from its call (its connection is gone).
    auto next = std::next(it);
    it->second(last_);
    it = next;
  }
  recent_.push_back(std::move(line));
  if (recent_.size() > kRecent) recent_.pop_front();
  return last_;
}

bool EventLog::open_file() {
  if (fd_) return true;
  const std::string file = path();
  fd_.reset(::open(file.c_str(), O_RDWR | O_APPEND | O_CREAT | O_CLOEXEC, 0600));
  if (!fd_) {
    fail(fmt::format("cannot open {}: {}", file, std::strerror(errno)));
    return false;
  }
  // Opened afresh (at a turnover, or after a failure): its size and ending are what is on disk. (It
  // is opened for reading too, for the pread of its last byte.)
  struct stat st {};
  size_ = ::fstat(fd_.get(), &st) == 0 ? static_cast<std::size_t>(st.st_size) : 0;
  char last = '\n';
  torn_ = size_ > 0 && ::pread(fd_.get(), &last, 1, static_cast<off_t>(size_ - 1)) == 1 && last != '\n';
  return true;
}

void EventLog::write(const std::string& line) {
  const std::string file = path();
  if (size_ > 0 && size_ + line.size() > max_bytes_) {
    fd_.reset();
    if (::rename(file.c_str(), (file + ".1").c_str()) != 0 && errno != ENOENT) {
      fail(fmt::format("cannot turn over {}: {}", file, std::strerror(errno)));
      return;
    }
    size_ = 0;
    torn_ = false;
  }
  if (!open_file()) return;
  // A line a crash cut short must not swallow this one.
  const std::string bytes = torn_ ? "\n" + line : line;
  const ssize_t n = ::write(fd_.get(), bytes.data(), bytes.size());
  if (n != static_cast<ssize_t>(bytes.size())) {
    fail(n < 0 ? fmt::format("cannot write {}: {}", file, std::strerror(errno))
               : fmt::format("cannot write {}: short write", file));
    // The next event opens the file again and looks at how it ends.
    fd_.reset();
    return;
  }
  size_ += bytes.size();
  torn_ = false;
  if (!error_.empty()) {
    log_info("event log: {} can be written again", file);
    error_.clear();
  }
}

void EventLog::fail(const std::string& why) {
  if (error_.empty()) log_warn("event log: {}; events are kept in memory only until it can be written", why);
  error_ = why;
}

std::vector<nlohmann::json> EventLog::recent(std::size_t last) const {
  const auto from_memory = [this](std::size_t n) {
    std::vector<nlohmann::json> out;
    for (auto it = recent_.end() - static_cast<std::ptrdiff_t>(n); it != recent_.end(); ++it)
      out.push_back(nlohmann::json::parse(*it, nullptr, false));
    return out;
  };
  if (last <= recent_.size()) return from_memory(last);
  std::vector<nlohmann::json> events;
  if (!dir_.empty() && error_.empty()) {
    read_tail(path(), last, events);
    if (events.size() < last) {
      std::vector<nlohmann::json> older;
      read_tail(path() + ".1", last - events.size(), older);
      events.insert(events.begin(), std::make_move_iterator(older.begin()), std::make_move_iterator(older.end()));
    }
  }
  // The files may have been removed or be unreadable: memory holds the newest then.
  if (events.empty() || (!recent_.empty() && seq_of(events.back()) < seq_)) events = from_memory(recent_.size());
  if (events.size() > last) events.erase(events.begin(), events.end() - static_cast<std::ptrdiff_t>(last));
  return events;
}

}  // namespace hotrestart
