// ListenerSet: the listening sockets the supervisor owns for its whole life.
//
// Invariant 1: each socket is bound once, here, and never closed while the supervisor
// runs. Workers receive duplicates of the same open file description, so the accept
// queue is shared and survives any worker exiting; no moment exists in which a connect
// could be refused.
#pragma once

#include <string>
#include <vector>

#include <hotrestart/base/result.h>
#include <hotrestart/fd.h>
#include "listen_spec.h"

namespace hotrestart {

struct Listener {
  ListenSpec spec;
  Fd fd;
  std::string address;     // What the socket is bound to: "127.0.0.1:41234", "[::1]:80", "unix:/run/x.sock".
  bool adopted = false;    // Received from our own parent (systemd socket activation).
  bool inherited = false;  // Taken over from a supervisor that died (takeover.h).
  bool unlink_on_exit = false;
};

class ListenerSet {
 public:
  // Binds every spec. On any error, sockets bound so far are closed again and the error
  // names the listener.
  static Result<ListenerSet> bind_all(const std::vector<ListenSpec>& specs);

  // What socket activation passed: whether anything was, and the names of the passed sockets that
  // were not adopted (no --listen names them, or one names them at another address, or a second
  // socket came under a name already taken). A supervisor that keeps its sockets in systemd's fd
  // store removes those names from it, so that a socket no --listen wants is not handed back at
  // every restart for ever.
  struct Activation {
    bool activated = false;
    std::vector<std::string> discarded;
  };

  // Adopts sockets passed by systemd (LISTEN_PID == our pid, LISTEN_FDS = n, fds 3..3+n-1), from
  // socket units or from the fd store, matched to specs by LISTEN_FDNAMES: a passed socket is
  // adopted for the spec of its name when it is at the spec's address (the same unix path, or the
  // same port; port 0 takes any). With no specs, every passed socket is adopted under its own name.
  // Specs without a passed socket of their name and address are bound as usual. The same socket
  // passed twice under one name (a socket unit's, and its copy in the fd store) is adopted once; a
  // descriptor that is not a listening stream socket is closed, with a warning.
  static Result<ListenerSet> adopt_or_bind(const std::vector<ListenSpec>& specs, Activation* activation);

  // Takes the listening sockets a supervisor that died left behind (`names[i]` is `fds[i]`'s name),
  // matched to specs by name. The sets must be the same, each at the address its spec asks for
  // (port 0 takes any): the generations taken over serve those sockets, and a new generation must
  // get the same ones. With no specs, every socket is taken under its own name.
  static Result<ListenerSet> inherit(const std::vector<ListenSpec>& specs, const std::vector<std::string>& names,
                                     std::vector<Fd> fds);

  ListenerSet() = default;
  ListenerSet(ListenerSet&&) = default;
  ListenerSet& operator=(ListenerSet&&) = default;
  ~ListenerSet();

  const std::vector<Listener>& listeners() const { return listeners_; }
  bool empty() const { return listeners_.empty(); }

  // The unix socket files stay when the supervisor exits: the sockets live on in systemd's fd store,
  // and the next supervisor serves them at the same paths.
  void keep_unix_files() {
    for (auto& l : listeners_)
      l.unlink_on_exit = false;
  }

  // "http:web" style value for LISTEN_FDNAMES.
  std::string fdnames() const;

 private:
  std::vector<Listener> listeners_;
};

// The address a socket is bound to, in the spelling used by status and logs.
std::string describe_bound_address(int fd);

}  // namespace hotrestart
