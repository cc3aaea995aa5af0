// What the `hotrestart` binary knows of the tree it was built from. The definition is generated into
// the build directory by cmake/build-info.cmake at every build, so that it follows new commits.
#pragma once

// The commit, as its first 12 hex digits with "-dirty" after them when the tree had changes to
// tracked files, or "unknown" when it was built outside a git checkout.
const char* hotrestart_build_commit();
