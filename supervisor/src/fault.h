// A hook for the tests of the death policy: with HOTRESTART_TEST_DIE_AT=POINT in its environment,
// the supervisor kills itself with SIGKILL when it reaches POINT, so that a test can end it at an
// exact phase boundary of an upgrade rather than at a moment a sleep guessed. The points are the
// upgrade's phase names as the supervisor enters them ("handshake", "transferring-state", "warming",
// "health-checking", "cutover", "draining-old", ...) and "fds-sent" (a new generation's listeners
// were just handed to it). docs/operations.md lists it under "Testing hooks".
#pragma once

#include <string_view>

namespace hotrestart {

void die_if_asked(std::string_view point);

}  // namespace hotrestart
