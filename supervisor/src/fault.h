// A hook for the tests of the death policy: with HOTRESTART_TEST_DIE_AT=POINT in its environment,
// the supervisor kills itself with SIGKILL when it reaches POINT, so that a test can end it at an
// exact phase boundary of an upgrade rather than at a moment a sleep guessed. The points are the
// upgrade's phase names as the supervisor enters them ("handshake", "transferring-state", "warming",
// "health-checking", "cutover", "draining-old", ...) and "fds-sent" (a new generation's listeners
// were just handed to it). docs/operations.md lists them under "Testing hooks".
#pragma once

#include <string_view>

#include <hotrestart/base/result.h>

namespace hotrestart {

void die_if_asked(std::string_view point);

// The same for a start that fails: with HOTRESTART_TEST_FAIL_AT=POINT, an error at POINT. The one
// point is "self-upgrade-start": the new image of `upgrade --self` cannot start, so that a test sees
// the old binary come back.
Status fail_if_asked(std::string_view point);

}  // namespace hotrestart
