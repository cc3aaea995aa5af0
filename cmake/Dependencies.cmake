# Every dependency is found here, once, and only when a part that needs it is built. All of them
# are Debian packages (scripts/lib.sh installs them; docs/dependencies.md says why each is used).
#
#   SDK (always)      cereal, libxxhash, Threads
#   supervisor        libuv, fmt, nlohmann-json, CLI11, nettle, libhttp-parser (metrics endpoint)
#   examples          libuv, fmt, CLI11, nlohmann-json, libhttp-parser, libsystemd (hello-server only)
#   tests             doctest (and what the parts above need)
find_package(PkgConfig REQUIRED)
find_package(Threads REQUIRED)
find_package(cereal REQUIRED)
pkg_check_modules(XXHASH REQUIRED IMPORTED_TARGET libxxhash)

if(HOTRESTART_SUPERVISOR)
  # SHA-256 of releases' executables.
  pkg_check_modules(NETTLE REQUIRED IMPORTED_TARGET nettle)
endif()
if(HOTRESTART_SUPERVISOR OR HOTRESTART_EXAMPLES)
  pkg_check_modules(LIBUV REQUIRED IMPORTED_TARGET libuv)
  find_package(fmt REQUIRED)
  find_package(nlohmann_json REQUIRED)
  find_package(CLI11 REQUIRED)
endif()

if(HOTRESTART_SUPERVISOR OR HOTRESTART_EXAMPLES OR HOTRESTART_TESTS)
  # libhttp-parser ships neither a pkg-config file nor a CMake package, so it is found by hand. The
  # supervisor's metrics endpoint and the examples parse requests with it; the tests read what the
  # HTTP drain puts on the wire with it.
  find_path(HTTP_PARSER_INCLUDE_DIR http_parser.h REQUIRED)
  find_library(HTTP_PARSER_LIBRARY NAMES http_parser REQUIRED)
endif()
if(HOTRESTART_EXAMPLES)
  # hello-server speaks socket activation and sd_notify through libsystemd; nothing else uses it.
  pkg_check_modules(LIBSYSTEMD REQUIRED IMPORTED_TARGET libsystemd)
endif()

if(HOTRESTART_TESTS)
  find_package(doctest REQUIRED)
endif()
