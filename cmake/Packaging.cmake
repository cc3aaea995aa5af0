# The Debian packages, made by CPack from the install rules: `cpack -G DEB` in the build directory
# writes hotrestart_VERSION_ARCH.deb (the supervisor, its preload library, the man page, the bash
# completion and the documentation) and hotrestart-dev_VERSION_ARCH.deb (the worker SDK: headers,
# static archive, CMake and pkg-config files). Installed under /usr: the supervisor looks for
# libhotrestart-adopt.so in ../lib/hotrestart from its own directory, which is /usr/lib/hotrestart.
set(CPACK_PACKAGE_NAME hotrestart)
set(CPACK_PACKAGE_VENDOR "hotrestart")
set(CPACK_PACKAGE_CONTACT "hotrestart maintainers <hotrestart@localhost>")
# Each package's description is its synopsis, a newline, then the long text. (No
# CPACK_PACKAGE_DESCRIPTION_SUMMARY: CPack would put that one synopsis before both.)
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_GENERATOR DEB)
set(CPACK_DEB_COMPONENT_INSTALL ON)
set(CPACK_COMPONENTS_ALL runtime dev)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_SECTION admin)
set(CPACK_DEBIAN_PACKAGE_HOMEPAGE "https://github.com/hotrestart/hotrestart")
set(CPACK_DEBIAN_RUNTIME_PACKAGE_NAME hotrestart)
set(CPACK_DEBIAN_RUNTIME_PACKAGE_SECTION admin)
set(CPACK_DEBIAN_RUNTIME_DESCRIPTION
    "zero-downtime hot-restart supervisor\nhotrestart binds a server's listening sockets once, runs the server behind \
them, and swaps in a new binary without refusing a single connection, rolling back by itself when the new one fails.")
# Depends: from the libraries the binary and the preload library link (dpkg-shlibdeps, in dpkg-dev).
# (CPack adds a postinst and a postrm that run ldconfig, for the shared object under /usr/lib; it
# is harmless, though /usr/lib/hotrestart is no directory of the dynamic linker's.)
set(CPACK_DEBIAN_RUNTIME_PACKAGE_SHLIBDEPS ON)
set(CPACK_DEBIAN_DEV_PACKAGE_NAME hotrestart-dev)
set(CPACK_DEBIAN_DEV_PACKAGE_SECTION libdevel)
set(CPACK_DEBIAN_DEV_DESCRIPTION
    "worker SDK of hotrestart\nThe worker SDK's headers, static library, CMake package and pkg-config file, for \
servers that carry their in-memory state across an upgrade under hotrestart.")
# The SDK's headers include cereal's and the archive links xxHash (see hotrestart-worker.pc).
set(CPACK_DEBIAN_DEV_PACKAGE_DEPENDS "libcereal-dev, libxxhash-dev")
set(CPACK_DEBIAN_DEV_PACKAGE_SUGGESTS "hotrestart")
include(CPack)
