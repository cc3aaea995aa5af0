// Fixed-size little-endian fields in a byte buffer, for the frame and section headers. The wire is
// little-endian (message.cpp asserts the host is too), so a field is its bytes in memory order;
// memcpy keeps unaligned access defined.
#pragma once

#include <cstddef>
#include <cstring>

namespace hotrestart::wire {

template <class T>
void put(char* at, T value) {
  std::memcpy(at, &value, sizeof value);
}

template <class T>
T get(const std::byte* at) {
  T value;
  std::memcpy(&value, at, sizeof value);
  return value;
}

}  // namespace hotrestart::wire
