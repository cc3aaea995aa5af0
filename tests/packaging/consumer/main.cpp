// The smallest server that uses the SDK: it starts, binds its fallback address when run by hand,
// saves and loads one section through the stub, reads a configuration, and says which mode it ran
// in.
#include <cstdio>
#include <map>
#include <string>

#include <hotrestart/archive.h>
#include <hotrestart/config.h>
#include <hotrestart/testing.h>
#include <hotrestart/worker.h>
#include <cereal/types/map.hpp>
#include <cereal/types/string.hpp>

int main() {
  std::map<std::string, std::string> before{{"k", "v"}}, after;
  auto attach = [](hotrestart::Worker& w, std::map<std::string, std::string>& data) {
    w.add_section({.name = "data",
                   .versions = {1},
                   .save =
                       [&data](std::uint32_t, std::ostream& out) {
                         hotrestart::OutputArchive archive(out);
                         archive(data);
                       },
                   .load =
                       [&data](std::uint32_t, std::istream& in) {
                         hotrestart::InputArchive archive(in);
                         archive(data);
                       },
                   .apply_delta = {}});
  };
  hotrestart::Worker old_worker({.fallback_listen = {{"http", "127.0.0.1:0"}}});
  hotrestart::Worker new_worker({.fallback_listen = {{"http", "127.0.0.1:0"}}});
  attach(old_worker, before);
  attach(new_worker, after);
  if (auto e = hotrestart::testing::StubSupervisor::start(old_worker); !e.empty()) return std::puts(e.c_str()), 1;
  if (auto e = hotrestart::testing::StubSupervisor::start_from(new_worker, old_worker); !e.empty()) {
    return std::puts(e.c_str()), 1;
  }
  hotrestart::Worker plain({.fallback_listen = {{"http", "127.0.0.1:0"}}});
  if (auto e = plain.start(); !e.empty()) return std::puts(e.c_str()), 1;
  hotrestart::Config<std::string> config([](std::string_view bytes) -> hotrestart::Parsed<std::string> {
    if (bytes.empty()) return hotrestart::ConfigError{"empty"};
    return std::string(bytes);
  });
  auto reader = config.reader();
  const bool configured =
      config.load("greeting=hi").empty() && !config.load("").empty() && *reader.get() == "greeting=hi";
  std::printf("consumer: mode=%s listener=%s state=%s config=%s\n",
              std::string(hotrestart::mode_name(plain.mode())).c_str(), plain.listener("http") >= 0 ? "yes" : "no",
              after == before ? "carried" : "lost", configured ? "loaded" : "wrong");
  return after == before && configured ? 0 : 1;
}
