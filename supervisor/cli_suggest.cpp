// What the command line says of a word it does not know (see cli_common.h): the nearest command or
// flag, by edit distance.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "cli_common.h"

namespace hotrestart {
namespace {

// The optimal string alignment distance: insertions, deletions, substitutions and swaps of two
// neighbours ("drian" for "drain") each count one.
std::size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<std::vector<std::size_t>> d(a.size() + 1, std::vector<std::size_t>(b.size() + 1));
  for (std::size_t i = 0; i <= a.size(); ++i)
    d[i][0] = i;
  for (std::size_t j = 0; j <= b.size(); ++j)
    d[0][j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    for (std::size_t j = 1; j <= b.size(); ++j) {
      const std::size_t cost = a[i - 1] == b[j - 1] ? 0 : 1;
      d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1])
        d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
    }
  }
  return d[a.size()][b.size()];
}

// The candidate nearest to `word`, if one is near enough to be what was meant: at most a third of
// its letters wrong, and never more than three.
std::optional<std::string> nearest(std::string_view word, const std::vector<std::string>& candidates) {
  std::optional<std::string> best;
  std::size_t best_distance = std::min<std::size_t>(3, std::max<std::size_t>(1, word.size() / 3)) + 1;
  for (const std::string& candidate : candidates) {
    const std::size_t distance = edit_distance(word, candidate);
    if (distance < best_distance) {
      best_distance = distance;
      best = candidate;
    }
  }
  return best;
}

}  // namespace

// A command's whole name below hotrestart: "upgrade", "config history".
std::string full_name(const CLI::App* command) {
  std::string name;
  for (const CLI::App* at = command; at->get_parent() != nullptr; at = at->get_parent())
    name = name.empty() ? at->get_name() : at->get_name() + " " + name;
  return name;
}

// After CLI11 refused a command line: the first command or option in it that does not exist, with
// the one it is nearest to, as "unknown option --drian-timeout; did you mean --drain-timeout?".
// Nothing when every word is known (the error was in a value).
std::optional<std::string> unknown_word(const CLI::App& app, int argc, char** argv) {
  const CLI::App* command = nullptr;
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    const CLI::App& in = command != nullptr ? *command : app;
    if (arg.size() > 1 && arg.front() == '-') {
      const std::string name(arg.substr(0, arg.find('=')));
      if (const CLI::Option* opt = in.get_option_no_throw(name)) {
        // Its value is the next word unless it came after '='.
        if (opt->get_expected_max() != 0 && name.size() == arg.size()) ++i;
        continue;
      }
      const auto long_names = [](const CLI::App& of) {
        std::vector<std::string> names;
        for (const CLI::Option* opt : of.get_options()) {
          for (const std::string& long_name : opt->get_lnames())
            names.push_back("--" + long_name);
        }
        return names;
      };
      if (auto guess = nearest(name, long_names(in)))
        return fmt::format("unknown option {}; did you mean {}?", name, *guess);
      // A flag of another command, given to this one (run's --drain-timeout to upgrade).
      if (command != nullptr) {
        for (const CLI::App* other : app.get_subcommands({})) {
          if (other == command) continue;
          if (auto guess = nearest(name, long_names(*other))) {
            return fmt::format(
                "unknown option {}; did you mean {}? (a flag of `hotrestart {}`, which {} does not take)", name, *guess,
                full_name(other), full_name(command));
          }
        }
      }
      const std::string where = command != nullptr ? fmt::format(" for {}", full_name(command)) : "";
      return fmt::format("unknown option {}{} (see `hotrestart {}--help`)", name, where,
                         command != nullptr ? full_name(command) + " " : "");
    }
    // A word is a command until a command without commands of its own is reached; then its
    // positional arguments follow.
    const auto subs = in.get_subcommands({});
    if (subs.empty()) continue;
    const CLI::App* found = nullptr;
    std::vector<std::string> names;
    for (const CLI::App* sub : subs) {
      if (sub->get_name() == arg) found = sub;
      names.push_back(sub->get_name());
    }
    if (found != nullptr) {
      command = found;
      continue;
    }
    const std::string what = command != nullptr ? full_name(command) + " " + std::string(arg) : std::string(arg);
    if (auto guess = nearest(arg, names)) return fmt::format("unknown command '{}'; did you mean {}?", what, *guess);
    return fmt::format("unknown command '{}' (the commands{}: {})", what,
                       command != nullptr ? " of " + full_name(command) : "", fmt::join(names, ", "));
  }
  return std::nullopt;
}

}  // namespace hotrestart
