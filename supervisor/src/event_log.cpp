// The event log: its files, their turnover, and its followers (see event_log.h).
#include "event_log.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>

#include <fmt/format.h>

#include <hotrestart/fd.h>

#include "log.h"

namespace hotrestart {
namespace {

// The whole of a file of at most a few bounds, or "" when it cannot be read.
std::string read_small_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return {};
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

// The events in `text`, one a line; a line that is not an object (cut short by a crash) is passed
// over.
void parse_lines(const std::string& text, std::vector<nlohmann::json>& out) {
  std::size_t begin = 0;
  while (begin < text.size()) {
    std::size_t end = text.find('\n', begin);
    if (end == std::string::npos) end = text.size();
    auto j = nlohmann::json::parse(text.begin() + static_cast<std::ptrdiff_t>(begin),
                                   text.begin() + static_cast<std::ptrdiff_t>(end), nullptr, false);
    if (j.is_object()) out.push_back(std::move(j));
    begin = end + 1;
  }
}

std::string dump(const nlohmann::json& j) {
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

}  // namespace

EventLog::EventLog(std::string dir, std::size_t max_bytes) : dir_(std::move(dir)), max_bytes_(max_bytes) {
  if (dir_.empty()) return;
  // The sequence goes on from the newest event of the files a supervisor before this one left.
  for (const std::string& path : {this->path(), this->path() + ".1"}) {
    std::vector<nlohmann::json> events;
    parse_lines(read_small_file(path), events);
    for (const auto& e : events)
      if (e.contains("seq") && e["seq"].is_number_unsigned()) seq_ = std::max(seq_, e["seq"].get<std::uint64_t>());
    if (seq_ > 0) break;
  }
  struct stat st {};
  if (::stat(path().c_str(), &st) == 0) size_ = static_cast<std::size_t>(st.st_size);
}

std::string EventLog::path() const {
  return dir_.empty() ? std::string() : dir_ + "/" + kFileName;
}

void EventLog::record(nlohmann::json event) {
  nlohmann::json e = {{"time", utc_timestamp()}, {"seq", ++seq_}};
  e.update(event);
  if (!dir_.empty()) write(dump(e) + "\n");
  for (auto it = followers_.begin(); it != followers_.end();) {
    // A follower may stop following from its call (its connection is gone).
    auto next = std::next(it);
    it->second(e);
    it = next;
  }
  recent_.push_back(std::move(e));
  if (recent_.size() > kRecent) recent_.pop_front();
}

void EventLog::write(const std::string& line) {
  const std::string file = path();
  if (size_ > 0 && size_ + line.size() > max_bytes_) {
    if (::rename(file.c_str(), (file + ".1").c_str()) != 0 && errno != ENOENT) {
      fail(fmt::format("cannot turn over {}: {}", file, std::strerror(errno)));
      return;
    }
    size_ = 0;
  }
  Fd fd(::open(file.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600));
  if (!fd) {
    fail(fmt::format("cannot open {}: {}", file, std::strerror(errno)));
    return;
  }
  std::string bytes = line;
  // A line a crash cut short must not swallow this one.
  if (size_ > 0) {
    char last = '\n';
    if (::pread(fd.get(), &last, 1, static_cast<off_t>(size_ - 1)) == 1 && last != '\n') bytes.insert(0, "\n");
  }
  const ssize_t n = ::write(fd.get(), bytes.data(), bytes.size());
  if (n != static_cast<ssize_t>(bytes.size())) {
    fail(n < 0 ? fmt::format("cannot write {}: {}", file, std::strerror(errno))
               : fmt::format("cannot write {}: short write", file));
    struct stat st {};
    if (::fstat(fd.get(), &st) == 0) size_ = static_cast<std::size_t>(st.st_size);
    return;
  }
  size_ += bytes.size();
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
  std::vector<nlohmann::json> events;
  if (!dir_.empty() && error_.empty()) {
    parse_lines(read_small_file(path() + ".1"), events);
    parse_lines(read_small_file(path()), events);
  }
  // The files may have been removed or be unreadable: memory holds the newest then.
  if (events.empty() || (!recent_.empty() && events.back().value("seq", std::uint64_t{0}) < recent_.back()["seq"])) {
    events.assign(recent_.begin(), recent_.end());
  }
  if (events.size() > last) events.erase(events.begin(), events.end() - static_cast<std::ptrdiff_t>(last));
  return events;
}

}  // namespace hotrestart
