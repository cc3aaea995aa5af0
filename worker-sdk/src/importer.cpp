// The new generation's side of a state transfer: it reads the previous generation's link until
// snapshot-end (or end of file, or the deadline), gives every offered section to its `load` or
// `load_arena` (serialized in a sealed memfd, streamed over a socket of its own, or as an arena),
// and keeps the accounting: each planned section ends imported or cold with its reason, each is
// reported as it is done, and the totals go to the supervisor. It runs on the thread that calls
// start(), and calls the application's load and load_arena there.
#include <algorithm>
#include <cerrno>
#include <istream>
#include <map>

#include <hotrestart/wire/section.h>
#include <hotrestart/wire/stream.h>
#include "arena_section.h"
#include "worker_impl.h"

namespace hotrestart {
namespace {

using sdk::find_section;
using sdk::micros_since;
using sdk::receive_until;

// Why a section offered serialized (`how`: "serialized" or "streamed") in schema `version` cannot
// go to its `load`, or "" when it can.
std::string cannot_load(const Section* section, std::uint32_t version, std::string_view how) {
  if (section == nullptr) return "offered a section this generation does not import";
  if (!section->load)
    return "offered the section " + std::string(how) + ", and this generation imports it only as an arena";
  if (std::find(section->versions.begin(), section->versions.end(), version) == section->versions.end())
    return "offered schema version " + std::to_string(version) + ", which this generation cannot read";
  return {};
}

// Runs the section's `load`: "" when it returned, otherwise why it failed.
std::string run_load(const Section& section, std::uint32_t version, std::istream& in) {
  try {
    section.load(version, in);
    return {};
  } catch (const std::exception& e) {
    return std::string("its load function failed: ") + e.what();
  } catch (...) {
    return "its load function failed with an unknown exception";
  }
}

}  // namespace

wire::TransferTotals Worker::Impl::import_from(int peer, const std::vector<wire::SectionVersions>& plan,
                                               Clock::time_point deadline,
                                               const std::function<void(const wire::SectionReport&)>& report) {
  const auto t0 = Clock::now();
  wire::TransferTotals totals;
  std::map<std::string, ImportedSection> results;
  for (const auto& p : plan)
    results[p.name] = {p.name, false, 0, 0, "the previous generation did not send it"};
  std::string cut_short;
  for (;;) {
    auto r = receive_until(peer, deadline, "the previous generation's snapshot");
    if (!r) {
      const bool closed = r.error().code() == EPIPE || r.error().code() == ECONNRESET;
      cut_short =
          closed ? "the previous generation closed the link before its snapshot was complete" : r.error().text();
      break;
    }
    if (std::holds_alternative<wire::SnapshotEnd>(r->message)) break;
    if (auto* fds = std::get_if<wire::Fds>(&r->message)) {
      for (std::size_t i = 0; i < fds->names.size(); ++i)
        received_fds.emplace_back(fds->names[i], std::move(r->fds[i]));
      continue;
    }
    if (auto* missing = std::get_if<wire::SectionUnavailable>(&r->message)) {
      if (auto it = results.find(missing->name); it != results.end()) it->second.reason = missing->reason;
      report({missing->name, false, 0, 0, 0, missing->reason});
      continue;
    }
    // Each section's result: counted, reported, and kept for imported().
    const auto section_start = Clock::now();
    auto finish = [&](const ImportedSection& result) {
      ++totals.sections;
      if (result.imported) {
        ++totals.done;
        totals.bytes += result.bytes;
      }
      report({result.name, result.imported, result.version, result.bytes, micros_since(section_start), result.reason});
      if (auto planned = results.find(result.name); planned != results.end()) planned->second = result;
    };
    if (auto* arena = std::get_if<wire::ArenaOffer>(&r->message)) {
      finish(import_arena(*arena, std::move(r->fds.at(0)), std::move(r->fds.at(1))));
      continue;
    }
    if (auto* streamed = std::get_if<wire::SectionStream>(&r->message)) {
      finish(results.count(streamed->name) != 0 ? import_stream(*streamed, std::move(r->fds.at(0)), deadline)
                                                : ImportedSection{streamed->name, false, streamed->version, 0,
                                                                  "offered a section this generation does not import"});
      continue;
    }
    auto* offer = std::get_if<wire::SectionOffer>(&r->message);
    if (offer == nullptr) {
      cut_short = std::string("unexpected ") + std::string(wire::type_name(wire::type_of(r->message))) +
                  " before the snapshot was complete";
      break;
    }
    ImportedSection result{offer->name, false, offer->version, offer->length, {}};
    const Section* section = results.count(offer->name) != 0 ? find_section(sections, offer->name) : nullptr;
    if (result.reason = cannot_load(section, offer->version, "serialized"); !result.reason.empty()) {
      // Not for `load`.
    } else if (auto mapped = wire::open_section(std::move(r->fds.at(0)), *offer, options.max_section_bytes); !mapped) {
      result.reason = mapped.error().text();
    } else {
      wire::SpanStreamBuf buffer(mapped->payload());
      std::istream in(&buffer);
      result.reason = run_load(*section, offer->version, in);
      result.imported = result.reason.empty();
    }
    finish(result);
  }
  for (auto& [name, result] : results) {
    if (!result.imported && !cut_short.empty() && result.reason == "the previous generation did not send it") {
      result.reason = cut_short;
    }
    imported.push_back(result);
  }
  totals.micros = micros_since(t0);
  return totals;
}

ImportedSection Worker::Impl::import_stream(const wire::SectionStream& offer, Fd sock, Clock::time_point deadline) {
  ImportedSection result{offer.name, false, offer.version, 0, {}};
  const Section* section = find_section(sections, offer.name);
  // Closing the socket (on return) ends the exporter's `save` at its next write.
  if (result.reason = cannot_load(section, offer.version, "streamed"); !result.reason.empty()) return result;
  wire::StreamReader reader(sock.get(), deadline, options.max_section_bytes);
  // A stream that fails is an exception in `load`, never a plain end of file that a load reading
  // the istream by hand could take for the end of the section.
  reader.throw_on_error(true);
  std::istream in(&reader);
  in.exceptions(std::ios_base::badbit);
  result.reason = run_load(*section, offer.version, in);
  // A load that failed because the stream did (InputArchive throws the reader's error) says so.
  if (!result.reason.empty() && !reader.error().empty()) result.reason = "the stream failed: " + reader.error();
  if (result.reason.empty()) {
    // What the load left unread is read to the end chunk, so that a section counts as imported only
    // once all of it arrived intact.
    if (auto left = reader.finish(); !left) {
      result.reason = "the stream failed after its load function returned: " + left.error().text();
    } else {
      result.imported = true;
    }
  }
  result.bytes = reader.total();
  return result;
}

ImportedSection Worker::Impl::import_arena(const wire::ArenaOffer& offer, Fd header, Fd memfd) {
  ImportedSection result{offer.offer.name, false, offer.offer.version, offer.bytes + offer.offer.length, {}};
  const Section* section = find_section(sections, offer.offer.name);
  if (section == nullptr || !section->load_arena) {
    result.reason = "offered an arena for a section this generation does not import as one";
    return result;
  }
  if (std::find(section->versions.begin(), section->versions.end(), offer.offer.version) == section->versions.end()) {
    result.reason =
        "offered schema version " + std::to_string(offer.offer.version) + ", which this generation cannot read";
    return result;
  }
  auto shared_with = std::make_shared<std::atomic<bool>>(true);
  auto opened =
      wire::open_arena_section(std::move(header), std::move(memfd), offer, options.max_section_bytes, shared_with);
  if (!opened) {
    result.reason = opened.error().text();
    return result;
  }
  // Whatever load_arena does with the arena (keeps it, or drops it and throws), it is the previous
  // generation's too until that one is gone.
  handover.borrow_arena(shared_with);
  wire::SpanStreamBuf buffer(opened->app_header);
  std::istream in(&buffer);
  try {
    section->load_arena(offer.offer.version, in, std::move(opened->arena));
    result.imported = true;
  } catch (const std::exception& e) {
    result.reason = std::string("its load_arena function failed: ") + e.what();
  } catch (...) {
    result.reason = "its load_arena function failed with an unknown exception";
  }
  return result;
}

}  // namespace hotrestart
