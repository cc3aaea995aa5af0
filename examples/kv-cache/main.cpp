// kv-cache: an HTTP key-value cache built on the hotrestart worker SDK. Its contents survive an
// upgrade (v1 -> v2) and a downgrade (v2 -> v1): the old generation hands a snapshot to the new
// one, then streams the writes it still accepts while it drains, and hands over its idle
// keep-alive connections so that clients never see them close.
//
//   GET /kv/KEY      200 with the value (Content-Type as stored, in v2), or 404
//   PUT /kv/KEY      body = value (at most 1 MiB, else 413): 204, or 503 if the write could not be
//                    handed to the next generation (it is then not applied), or 507 if the cache
//                    could not get memory for it
//   DELETE /kv/KEY   204, or 404
//   GET /stats       one line of JSON: counters and what was imported
//   GET /            kv-cache version=VERSION pid=P generation=G
//
// Every answer has X-Config-Version: the version of the configuration (settings.h) it was made
// under, 0 without one. Keys under a blocked prefix get 403; a PUT over max-value-bytes 413.
//
// Threads: the HTTP server runs on a libuv loop on the main thread; the SDK calls on_drain,
// on_stop and on_fd on its own thread, which reach the loop through uv_async_send. The cache has a
// lock of its own, taken by both.
//
// This file is the worker SDK's side: the section that carries the cache, the callbacks that reach
// the HTTP server (server.h), and what a new generation does before it says it is ready.

#include <uv.h>

// GCC 12 reports a false -Wnull-dereference inside CLI11's inlined string splitting (a std::vector<std::string>
// reallocation), so that warning is silenced for CLI11's code only.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wnull-dereference"
#include <CLI/CLI.hpp>
#pragma GCC diagnostic pop
#include <fmt/core.h>

#include <hotrestart/worker.h>

#include <cstdint>
#include <exception>
#include <fstream>
#include <iterator>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>

#include "cache.h"
#include "server.h"

namespace {

using namespace kv_cache;

// The command line into `opts`; an exit code when there is nothing to serve (--help, a bad flag).
std::optional<int> parse_flags(int argc, char** argv, Options& opts) {
  CLI::App app{
      fmt::format("kv-cache (schema {}): an HTTP key-value cache that keeps its contents across upgrades.", KV_SCHEMA)};
  app.add_option("--version", opts.label, "Version label reported in every response")->capture_default_str();
  app.add_option("--listen", opts.listen, "HOST:PORT to bind for the 'http' listener when not supervised")
      ->capture_default_str();
  app.add_option("--max-memory", opts.max_memory, "Bytes the cache may hold (keys, values and per-entry overhead)")
      ->check(CLI::Range(std::uint64_t{1}, std::uint64_t{1} << 46))
      ->capture_default_str();
  app.add_option("--idle-grace", opts.idle_grace_ms,
                 "Milliseconds after a drain begins before connections that could not be handed over are closed")
      ->check(CLI::Range(0, 86'400'000))  // Without a check, CLI11 would wrap a negative number around.
      ->capture_default_str();
  app.add_option("--prefill", opts.prefill,
                 "Entries key-0000000000, key-0000000001, ... to fill in at start-up, only if nothing was imported "
                 "from a previous generation (for benchmarks)")
      ->check(CLI::Range(std::uint64_t{0}, std::uint64_t{1} << 32))
      ->capture_default_str();
  app.add_option("--prefill-value-bytes", opts.prefill_value_bytes, "Size of each prefilled value")
      ->check(CLI::Range(std::size_t{0}, static_cast<std::size_t>(kMaxBodyBytes)))
      ->capture_default_str();
  app.add_option("--config-file", opts.config_file,
                 "The configuration to start with when run by hand (settings.h); under `hotrestart run --config "
                 "kv-cache=PATH` the supervisor's version replaces it, and reloads change it");
  app.add_flag("--serialized-state", opts.serialized_state,
               "Take the previous generation's cache serialized (a copy of its arena) rather than mapping its "
               "memory as it is (for benchmarks)");
  app.add_flag("--stream-state", opts.stream_state,
               "When the next generation takes the cache serialized, stream it while it is written rather than "
               "write it whole into a memfd first: export and import overlap and no third copy is held in memory");
  app.add_flag("--locked-save", opts.locked_save,
               "Write the serialized cache under the cache's lock, pausing every request for the whole save, rather "
               "than from a forked process that saves the cache as it was at one instant (for benchmarks)");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }
  return std::nullopt;
}

// The section that carries the cache to the next generation, and the callbacks through which the
// SDK's thread reaches the server's loop.
void connect_worker(hotrestart::Worker& worker, Cache& cache, Server& server, const Options& opts) {
  hotrestart::Section section = kv::make_section(cache);
  if (opts.serialized_state) section.load_arena = {};
  section.stream = opts.stream_state;
  worker.add_section(std::move(section));
  worker.add_config(std::string(kv::kConfigName), server.settings);
  worker.on_drain([&server] { uv_async_send(&server.drain_async); });
  worker.on_stop([&server] { uv_async_send(&server.stop_async); });
  worker.on_active([&server] { uv_async_send(&server.active_async); });
  worker.on_fd([&server](std::string name, hotrestart::Fd fd) {
    if (name != kConnFdName) return;  // `fd` closes it.
    {
      std::lock_guard lock(server.passed_mutex);
      server.passed.push_back(std::move(fd));
    }
    uv_async_send(&server.fd_async);
  });
  // No change can come from the previous generation any more: tombstones have done their job.
  // Once the other generation is gone, the cache's memory (lent to it or borrowed from it at the
  // last upgrade) is this process's alone again.
  worker.on_previous_gone([&cache] {
    cache.drop_tombstones();
    cache.reclaim_memory();
  });
  worker.on_next_gone([&cache, &server] {
    // The upgrade rolled back (or the new generation crashed): this one serves on.
    const bool lent = cache.memory_borrowed();
    if (cache.reclaim_memory() && lent) {
      server.log("the next generation is gone; the cache's memory is this generation's alone again");
    }
  });
}

// Logs what the previous generation handed over; returns whether the cache came from it.
bool log_imports(const hotrestart::Worker& worker, const Cache& cache, const Server& server) {
  bool from_previous = false;
  for (const auto& s : worker.imported()) {
    if (s.imported) {
      from_previous = from_previous || s.name == kv::kSectionName;
      const kv::LoadReport load = cache.last_load();
      server.log(
          "section '{}': imported schema version {}, {} bytes, {} entries; load {:.3f} s ({}: copy {:.3f} s, "
          "checks {:.3f} s, conversion {:.3f} s)",
          s.name, s.version, s.bytes, cache.stats().entries, static_cast<double>(load.micros) / 1e6, load.layout,
          static_cast<double>(load.copy_micros) / 1e6, static_cast<double>(load.check_micros) / 1e6,
          static_cast<double>(load.convert_micros) / 1e6);
    } else {
      server.log("section '{}': starts cold: {}", s.name, s.reason);
    }
  }
  return from_previous;
}

// Fills in the entries of --prefill, for a benchmark's first generation.
void prefill(Cache& cache, const Server& server, const Options& opts) {
  const std::uint64_t t0 = kv::monotonic_ns();
  cache.prefill(opts.prefill, opts.prefill_value_bytes);
  const kv::Stats s = cache.stats();
  server.log(
      "prefilled {} entries of {} value bytes in {:.3f} s: {} entries, {} bytes charged, {} bytes of pages, "
      "{} bytes of index",
      opts.prefill, opts.prefill_value_bytes, static_cast<double>(kv::monotonic_ns() - t0) / 1e9, s.entries, s.bytes,
      s.page_bytes, s.index_bytes);
}

}  // namespace

int main(int argc, char** argv) {
  Options opts;
  if (const auto exit_code = parse_flags(argc, argv, opts)) return *exit_code;

  http::init_process();
  try {
    // Destroyed in reverse order: the Worker first (it flushes what the next generation is owed and
    // joins its thread, so no callback outlives the server), then the server, then the cache.
    Cache cache(opts.max_memory);
    Server server(opts, cache);
    // Resumable: after its drain, this generation waits (its cache kept) in case a revert brings it
    // back, rather than have the release start again from nothing.
    hotrestart::Worker::Options worker_options{.fallback_listen = {{"http", opts.listen}}, .resumable = true};
    if (opts.locked_save) worker_options.max_snapshot_copy_bytes = 0;
    hotrestart::Worker worker(worker_options);
    server.worker = &worker;
    if (!opts.config_file.empty()) {
      std::ifstream in(opts.config_file, std::ios::binary);
      std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      if (!in.good() && !in.eof()) throw std::runtime_error("cannot read " + opts.config_file);
      if (auto error = server.settings.load(text); !error.empty())
        throw std::runtime_error(opts.config_file + ": " + error);
    }
    connect_worker(worker, cache, server, opts);
    if (auto error = worker.start(); !error.empty()) {
      fmt::print(stderr, "kv-cache {}: {}\n", opts.label, error);
      return 1;
    }
    const bool from_previous = log_imports(worker, cache, server);
    // Tombstones guard against late changes from a previous generation; without an imported
    // snapshot there is none worth guarding (or none at all, and on_previous_gone never comes).
    if (!from_previous) cache.drop_tombstones();
    // Before READY, so that a benchmark's first generation serves a full cache; a later generation
    // that imported the state keeps only what came over.
    if (!from_previous && opts.prefill > 0) prefill(cache, server, opts);
    int rc = server.run();
    while (rc == 0 && worker.wait_for_resume()) {
      server.log("resumed: serving again with {} entries", cache.stats().entries);
      rc = server.resume();
    }
    return rc;
  } catch (const std::exception& e) {
    fmt::print(stderr, "kv-cache {}: {}\n", opts.label, e.what());
    return 1;
  }
}
