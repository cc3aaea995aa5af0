// EventLog: what happened to the supervisor, its generations and its upgrades, and who asked for
// it, as JSON objects, one per event (docs/protocol.md, "Events").
//
// Each event gets its time (UTC, to the millisecond) and a sequence number that keeps counting
// across restarts of the supervisor. It is appended, one line and one write, to
// STATE-DIR/events.jsonl; when that file would pass the size bound it becomes events.jsonl.1
// (replacing the one before) and a new file begins, so the log holds between one and two bounds'
// worth of the newest events. The last kRecent events are also kept in memory, so that a
// supervisor whose state directory cannot be written still answers `hotrestart events` (the
// first write that fails is logged, and status says why).
//
// Followers (`hotrestart events --follow`) hear each event as it is recorded.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <hotrestart/fd.h>

namespace hotrestart {

class EventLog {
 public:
  static constexpr std::size_t kDefaultMaxBytes = 1024 * 1024;
  static constexpr std::size_t kRecent = 1000;
  static constexpr const char* kFileName = "events.jsonl";

  // `dir`: the state directory ("": events are kept in memory only). `max_bytes`: the bound of one
  // file. Reads the sequence number to go on from.
  EventLog(std::string dir, std::size_t max_bytes);

  // Records `event` (an object with at least "type"): adds "time" and "seq" first, writes it, and
  // hands it to every follower. Returns it as recorded (valid until the next record).
  const nlohmann::json& record(nlohmann::json event);

  // The newest `last` events, oldest first: from memory when it holds that many, else from the
  // ends of the files (reading no more of them than those events take), else from memory.
  std::vector<nlohmann::json> recent(std::size_t last) const;

  using Follower = std::function<void(const nlohmann::json& event)>;
  void follow(std::uint64_t id, Follower f) { followers_[id] = std::move(f); }
  void unfollow(std::uint64_t id) { followers_.erase(id); }

  // Why the file cannot be written ("" while it can, or when there is none).
  const std::string& error() const { return error_; }
  std::string path() const;
  std::uint64_t last_seq() const { return seq_; }

 private:
  // Appends `line` to the file, after turning it over when it would pass the bound.
  void write(const std::string& line);
  // Opens the current file for appending, if it is not open: false (and error_ says why) if it
  // cannot be.
  bool open_file();
  void fail(const std::string& why);

  std::string dir_;
  std::size_t max_bytes_;
  // The current file, kept open between events; closed at a turnover and after a failed write, so
  // that the next event opens it afresh.
  Fd fd_;
  std::size_t size_ = 0;  // Of the current file.
  // The current file does not end with a newline (a crash cut its last line short): the next line
  // written begins with one, so that it is not swallowed by the broken one.
  bool torn_ = false;
  std::uint64_t seq_ = 0;
  // The newest kRecent events, each as its line: a third of the memory of the parsed objects.
  std::deque<std::string> recent_;
  nlohmann::json last_;  // The newest, parsed (what record() returns).
  std::map<std::uint64_t, Follower> followers_;
  std::string error_;
};

}  // namespace hotrestart
