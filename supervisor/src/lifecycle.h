// The two things every lifecycle enum of the supervisor has (the upgrade's phases, a generation's
// states): a table of the transitions it allows, and a name for each state. Both are built at
// compile time and checked there: an empty or repeated name would leave a reader of the logs and of
// the control protocol unable to tell two states apart.
#pragma once

#include <array>
#include <cstddef>
#include <initializer_list>
#include <string_view>
#include <utility>

namespace hotrestart {

// The transitions a lifecycle of N states allows, as edges (from, to); every other move is refused.
template <class State, std::size_t N>
class TransitionTable {
 public:
  constexpr TransitionTable(std::initializer_list<std::pair<State, State>> edges) {
    for (const auto& [from, to] : edges)
      allowed_[index(from)][index(to)] = true;
  }
  constexpr bool allows(State from, State to) const { return allowed_[index(from)][index(to)]; }

 private:
  static constexpr std::size_t index(State s) { return static_cast<std::size_t>(s); }
  std::array<std::array<bool, N>, N> allowed_{};
};

// True when every name is non-empty and no two are equal.
template <std::size_t N>
constexpr bool named_apart(const std::string_view (&names)[N]) {
  for (std::size_t i = 0; i < N; ++i) {
    if (names[i].empty()) return false;
    for (std::size_t j = 0; j < i; ++j)
      if (names[j] == names[i]) return false;
  }
  return true;
}

// The name of `e`, or "?" for a value outside the enum, which only a cast can make.
template <class Enum, std::size_t N>
std::string_view name_in(const std::string_view (&names)[N], Enum e) {
  const auto i = static_cast<std::size_t>(e);
  return i < N ? names[i] : "?";
}

}  // namespace hotrestart
