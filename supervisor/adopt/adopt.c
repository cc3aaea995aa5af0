/* libhotrestart-adopt: lets a server that binds its own port run under `hotrestart run
 * --adopt-binds` unchanged. `hotrestart run` preloads it (LD_PRELOAD) into every generation.
 *
 * - bind() of an address the supervisor listens on (one of the LISTEN_FDS it passed) puts a
 *   duplicate of the supervisor's listening socket in place of the server's new socket, so the
 *   server listens on the socket that outlives it; listen() on it changes nothing. Other addresses
 *   are left alone. No second socket is ever bound to an adopted address, SO_REUSEPORT or not.
 * - The first time the server waits on an adopted listener (epoll_ctl, poll, select) or accepts
 *   from one, the library sends READY=1 to NOTIFY_SOCKET for it.
 * - Commands come through the generation's command page (adopt_page.h), which a thread of the
 *   library's own in each process waits on. On drain, every process puts a listening socket nobody
 *   can connect to (an abstract Unix socket) in place of each descriptor of a shared socket (the
 *   adopted ones, re-registered in the server's epoll sets under the same events; the inherited
 *   ones at 3.., which a server reading LISTEN_FDS itself waits on; any copy), so the server stops
 *   taking connections from the shared socket without noticing, and finishes those it has. The
 *   shared socket itself is never shut down. A park does the same but keeps copies of the library's
 *   own, so that a resume can put the shared sockets back in place; the main process then says
 *   READY=1.
 * - While parked or draining, the HTTP drain (http_drain.h) closes each HTTP/1.x connection the
 *   server accepted on an adopted socket after its next response: the library follows what the
 *   server writes on it (write, writev, send, sendto, sendmsg; sendfile counted as body).
 *
 * No signal is used and no signal disposition is touched: a language runtime that claims every
 * signal (Go's) runs as it would without the library. A Go program's own bind and listen are
 * trapped with seccomp (below). Written in C with no allocation but the HTTP drain's table (one
 * mapping, made at the first drain), because it runs inside any process. See docs/operations.md,
 * "Servers that bind their own port". */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <link.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/futex.h>
#include <linux/seccomp.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/select.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "adopt_page.h"
#include "http_drain.h"

#define MAX_LISTENERS 64
#define MAX_ADOPTED 256
#define MAX_REGISTRATIONS 1024

struct listener {
  int fd;   /* The inherited listening socket (3, 4, ...). */
  int keep; /* The library's own copy, out of the server's way, which a resume puts back. */
  struct sockaddr_storage addr;
  socklen_t addr_len;
  dev_t dev; /* What identifies the shared socket in any descriptor that refers to it. */
  ino_t ino;
};

/* A server descriptor that now refers to an inherited listener. fd -1: free slot. */
struct adopted {
  _Atomic int fd;
  _Atomic int listener; /* Which of `listeners` it refers to (what a resume puts back). */
  /* The blocking mode the server asked for: the shared socket itself is always non-blocking, and
   * a blocking accept() is emulated (see accept_as_asked). */
  _Atomic int wants_nonblock;
};

/* An epoll registration of an adopted descriptor. state: 0 free, 1 being written, 2 valid. */
struct registration {
  _Atomic int state;
  int epfd;
  int fd;
  struct epoll_event event;
};

static struct listener listeners[MAX_LISTENERS];
static int listener_count;
static struct adopted adopted[MAX_ADOPTED];
static struct registration registrations[MAX_REGISTRATIONS];
/* Held while the registrations are read to move a descriptor, or written by epoll_ctl. */
static pthread_mutex_t registrations_lock = PTHREAD_MUTEX_INITIALIZER;
static const struct hr_adopt_page* page; /* NULL: no commands reach this process. */
static _Atomic int parked;
static _Atomic int closed; /* The drain closed every shared socket for good. */
static _Atomic int ready_sent;
static _Atomic int drained;
static struct sockaddr_un notify_addr;
static socklen_t notify_len;
/* Connected at start-up, so that processes the server forks and then runs as another user (nginx's
 * workers) can still report, though they could no longer open the socket's path. */
static int notify_fd = -1;
static long main_pid;            /* The generation's main process (LISTEN_PID); forked helpers are not it. */
static _Atomic int adopted_high; /* Slots of `adopted` ever used: the scans stop there. */

/* The HTTP drain: one entry per descriptor number, made when it is first needed. A descriptor is
 * judged (an accepted connection of an adopted socket or not) at its first write in each drain
 * (epoch), and forgotten when it is closed. */
struct conn {
  uint32_t epoch;
  uint32_t accepted; /* 1: a connection accepted on an adopted socket. */
  struct hr_http http;
};
static int trap_wake = -1;            /* An eventfd: the drain asks the trap thread to trap writes. */
static _Atomic int trap_writes_asked; /* Set before trap_wake is written. */
static struct conn* conns;
static size_t conn_count;
static _Atomic int http_active;
static _Atomic uint32_t http_epoch;

static int (*real_bind)(int, const struct sockaddr*, socklen_t);
static int (*real_listen)(int, int);
static int (*real_accept)(int, struct sockaddr*, socklen_t*);
static int (*real_accept4)(int, struct sockaddr*, socklen_t*, int);
static int (*real_epoll_ctl)(int, int, int, struct epoll_event*);
static int (*real_poll)(struct pollfd*, nfds_t, int);
static int (*real_ppoll)(struct pollfd*, nfds_t, const struct timespec*, const sigset_t*);
static int (*real_select)(int, fd_set*, fd_set*, fd_set*, struct timeval*);
static int (*real_pselect)(int, fd_set*, fd_set*, fd_set*, const struct timespec*, const sigset_t*);
static int (*real_close)(int);
static int (*real_fcntl)(int, int, ...);
static int (*real_fcntl64)(int, int, ...);
static int (*real_ioctl)(int, unsigned long, ...);
static ssize_t (*real_write)(int, const void*, size_t);
static ssize_t (*real_writev)(int, const struct iovec*, int);
static ssize_t (*real_send)(int, const void*, size_t, int);
static ssize_t (*real_sendto)(int, const void*, size_t, int, const struct sockaddr*, socklen_t);
static ssize_t (*real_sendmsg)(int, const struct msghdr*, int);
static ssize_t (*real_sendfile)(int, int, off_t*, size_t);
static ssize_t (*real_sendfile64)(int, int, off64_t*, size_t);

static void resolve(void) {
  real_bind = (int (*)(int, const struct sockaddr*, socklen_t))dlsym(RTLD_NEXT, "bind");
  real_listen = (int (*)(int, int))dlsym(RTLD_NEXT, "listen");
  real_accept = (int (*)(int, struct sockaddr*, socklen_t*))dlsym(RTLD_NEXT, "accept");
  real_accept4 = (int (*)(int, struct sockaddr*, socklen_t*, int))dlsym(RTLD_NEXT, "accept4");
  real_epoll_ctl = (int (*)(int, int, int, struct epoll_event*))dlsym(RTLD_NEXT, "epoll_ctl");
  real_poll = (int (*)(struct pollfd*, nfds_t, int))dlsym(RTLD_NEXT, "poll");
  real_ppoll = (int (*)(struct pollfd*, nfds_t, const struct timespec*, const sigset_t*))dlsym(RTLD_NEXT, "ppoll");
  real_select = (int (*)(int, fd_set*, fd_set*, fd_set*, struct timeval*))dlsym(RTLD_NEXT, "select");
  real_pselect =
      (int (*)(int, fd_set*, fd_set*, fd_set*, const struct timespec*, const sigset_t*))dlsym(RTLD_NEXT, "pselect");
  real_close = (int (*)(int))dlsym(RTLD_NEXT, "close");
  real_fcntl = (int (*)(int, int, ...))dlsym(RTLD_NEXT, "fcntl");
  real_fcntl64 = (int (*)(int, int, ...))dlsym(RTLD_NEXT, "fcntl64");
  if (real_fcntl64 == NULL) real_fcntl64 = real_fcntl;
  real_ioctl = (int (*)(int, unsigned long, ...))dlsym(RTLD_NEXT, "ioctl");
  real_write = (ssize_t(*)(int, const void*, size_t))dlsym(RTLD_NEXT, "write");
  real_writev = (ssize_t(*)(int, const struct iovec*, int))dlsym(RTLD_NEXT, "writev");
  real_send = (ssize_t(*)(int, const void*, size_t, int))dlsym(RTLD_NEXT, "send");
  real_sendto =
      (ssize_t(*)(int, const void*, size_t, int, const struct sockaddr*, socklen_t))dlsym(RTLD_NEXT, "sendto");
  real_sendmsg = (ssize_t(*)(int, const struct msghdr*, int))dlsym(RTLD_NEXT, "sendmsg");
  real_sendfile = (ssize_t(*)(int, int, off_t*, size_t))dlsym(RTLD_NEXT, "sendfile");
  real_sendfile64 = (ssize_t(*)(int, int, off64_t*, size_t))dlsym(RTLD_NEXT, "sendfile64");
}

/* One sd_notify datagram; errno is left as it was (this runs inside the server's calls). */
static void notify(const char* text) {
  if (notify_len == 0) return;
  const int saved = errno;
  if (notify_fd >= 0 && send(notify_fd, text, strlen(text), MSG_NOSIGNAL) >= 0) {
    errno = saved;
    return;
  }
  const int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd >= 0) {
    (void)sendto(fd, text, strlen(text), MSG_NOSIGNAL, (const struct sockaddr*)&notify_addr, notify_len);
    if (real_close != NULL) real_close(fd);
  }
  errno = saved;
}

/* The slot of an adopted descriptor, or -1. */
static int adopted_slot(int fd) {
  if (fd < 0) return -1;
  const int high = atomic_load(&adopted_high);
  for (int i = 0; i < high; ++i)
    if (atomic_load(&adopted[i].fd) == fd) return i;
  return -1;
}

static int is_adopted(int fd) {
  return adopted_slot(fd) >= 0;
}

static void note_waiting(int fd) {
  if (atomic_load(&ready_sent) || atomic_load(&drained) || !is_adopted(fd)) return;
  if (atomic_exchange(&ready_sent, 1) == 0) notify("READY=1");
}

/* Whether the server's bind of `a` on socket `fd` asks for the listener at `b_storage`. */
static int same_address(int fd, const struct sockaddr* a, socklen_t a_len, const struct sockaddr_storage* b_storage) {
  const struct sockaddr* b = (const struct sockaddr*)b_storage;
  if (a->sa_family == AF_INET6 && b->sa_family == AF_INET && a_len >= (socklen_t)sizeof(struct sockaddr_in6)) {
    /* The IPv6 wildcard on a dual-stack socket (Node.js's default, Go's) asks for every address of
     * both families on its port: an IPv4 listener of that port is part of what it asked for. A
     * socket made IPv6-only asked for none of it. The reverse (an IPv4 bind adopting an IPv6
     * listener) is never done: the server would get IPv6 addresses where it expects IPv4 ones. */
    const struct sockaddr_in6* x = (const struct sockaddr_in6*)a;
    const struct sockaddr_in* y = (const struct sockaddr_in*)b;
    int v6only = 1;
    socklen_t len = sizeof v6only;
    if (x->sin6_port != y->sin_port || memcmp(&x->sin6_addr, &in6addr_any, sizeof x->sin6_addr) != 0) return 0;
    return getsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, &len) == 0 && v6only == 0;
  }
  if (a->sa_family != b->sa_family) return 0;
  if (a->sa_family == AF_INET && a_len >= (socklen_t)sizeof(struct sockaddr_in)) {
    const struct sockaddr_in* x = (const struct sockaddr_in*)a;
    const struct sockaddr_in* y = (const struct sockaddr_in*)b;
    if (x->sin_port != y->sin_port) return 0;
    /* The supervisor's address, or the wildcard the server asked for on the same port. */
    return x->sin_addr.s_addr == y->sin_addr.s_addr || x->sin_addr.s_addr == htonl(INADDR_ANY);
  }
  if (a->sa_family == AF_INET6 && a_len >= (socklen_t)sizeof(struct sockaddr_in6)) {
    const struct sockaddr_in6* x = (const struct sockaddr_in6*)a;
    const struct sockaddr_in6* y = (const struct sockaddr_in6*)b;
    if (x->sin6_port != y->sin6_port) return 0;
    return memcmp(&x->sin6_addr, &y->sin6_addr, sizeof x->sin6_addr) == 0 ||
           memcmp(&x->sin6_addr, &in6addr_any, sizeof x->sin6_addr) == 0;
  }
  /* Unix sockets are never adopted: servers commonly unlink the path before they bind, which
   * would remove the supervisor's socket file for every generation. */
  return 0;
}

static void start_watcher(void);
static void trap_own_binds(void);
static void before_fork(void);
static void after_fork_in_parent(void);
static void after_fork_in_child(void);

/* Maps the generation's command page, if the supervisor passed one and it is what it should be. */
static void map_page(void) {
  const char* env = getenv(HR_ADOPT_PAGE_ENV);
  if (env == NULL) return;
  char* end = NULL;
  const long fd = strtol(env, &end, 10);
  if (end == env || *end != '\0' || fd < 0 || fd > INT_MAX) return;
  struct stat st;
  if (fstat((int)fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size < (off_t)HR_ADOPT_PAGE_SIZE) return;
  void* m = mmap(NULL, HR_ADOPT_PAGE_SIZE, PROT_READ, MAP_SHARED, (int)fd, 0);
  if (m == MAP_FAILED) return;
  const struct hr_adopt_page* p = (const struct hr_adopt_page*)m;
  if (p->magic != HR_ADOPT_PAGE_MAGIC || p->version != HR_ADOPT_PAGE_VERSION) {
    munmap(m, HR_ADOPT_PAGE_SIZE);
    return;
  }
  page = p;
}

__attribute__((constructor)) static void adopt_init(void) {
  resolve();
  for (int i = 0; i < MAX_ADOPTED; ++i) {
    atomic_store(&adopted[i].fd, -1);
    atomic_store(&adopted[i].listener, -1);
  }

  const char* sock = getenv("NOTIFY_SOCKET");
  if (sock != NULL && (sock[0] == '/' || sock[0] == '@') && strlen(sock) < sizeof notify_addr.sun_path) {
    notify_addr.sun_family = AF_UNIX;
    memcpy(notify_addr.sun_path, sock, strlen(sock));
    if (sock[0] == '@') notify_addr.sun_path[0] = '\0';
    notify_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(sock));
    const int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd >= 0 && connect(fd, (const struct sockaddr*)&notify_addr, notify_len) == 0) {
      /* Out of the way of the small descriptor numbers servers expect to be theirs. */
      notify_fd = fcntl(fd, F_DUPFD_CLOEXEC, 900);
      real_close(fd);
    } else if (fd >= 0) {
      real_close(fd);
    }
  }
  const char* count = getenv("LISTEN_FDS");
  const long n = count != NULL ? strtol(count, NULL, 10) : 0;
  for (long i = 0; i < n && listener_count < MAX_LISTENERS; ++i) {
    const int fd = 3 + (int)i;
    struct listener* l = &listeners[listener_count];
    l->addr_len = sizeof l->addr;
    int accepting = 0;
    socklen_t len = sizeof accepting;
    if (getsockname(fd, (struct sockaddr*)&l->addr, &l->addr_len) != 0) continue;
    if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &accepting, &len) != 0 || !accepting) continue;
    struct stat st;
    if (fstat(fd, &st) != 0) continue;
    l->dev = st.st_dev;
    l->ino = st.st_ino;
    l->fd = fd;
    /* Close-on-exec and high: an exec'd program finds its own copies at 3.., as this one did. */
    l->keep = fcntl(fd, F_DUPFD_CLOEXEC, 900);
    ++listener_count;
  }
  map_page();
  /* Tells the supervisor the library is in: a generation that never says this was not preloaded.
   * Only the generation's main process says it (LISTEN_PID is its pid): short-lived helpers, such
   * as a version manager's shims, may be gone before the supervisor can tell whose they are. */
  const char* listen_pid = getenv("LISTEN_PID");
  main_pid = listen_pid != NULL ? strtol(listen_pid, NULL, 10) : 0;
  if (main_pid == (long)getpid()) notify("X_HOTRESTART_ADOPT=1");
  if (page != NULL) {
    (void)pthread_atfork(before_fork, after_fork_in_parent, after_fork_in_child);
    start_watcher();
  }
  trap_own_binds();
}

/* Which shared listening socket `fd` refers to, or -1 (the library's own copies are not counted). */
static int shared_index(int fd) {
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISSOCK(st.st_mode)) return -1;
  for (int i = 0; i < listener_count; ++i)
    if (listeners[i].ino == st.st_ino && listeners[i].dev == st.st_dev && listeners[i].keep != fd) return i;
  return -1;
}

static int is_shared(int fd) {
  return shared_index(fd) >= 0;
}

/* Calls `fn` for each descriptor of this process that refers to a shared listening socket: the
 * adopted ones, the inherited ones at 3.. (a server that takes LISTEN_FDS itself waits on those),
 * and any copy the server made. Judged by what they refer to, so that a number the server has since
 * reused for something else is never touched. */
static void for_each_shared(void (*fn)(int fd, int listener)) {
  const int dir = open("/proc/self/fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir >= 0) {
    char buf[4096];
    long n;
    while ((n = syscall(SYS_getdents64, dir, buf, sizeof buf)) > 0) {
      for (long at = 0; at < n;) {
        const unsigned short reclen = *(const unsigned short*)(buf + at + 16);
        const char* name = buf + at + 19;
        at += reclen;
        if (name[0] < '0' || name[0] > '9') continue;
        const int fd = (int)strtol(name, NULL, 10);
        const int l = fd == dir ? -1 : shared_index(fd);
        if (l >= 0) fn(fd, l);
      }
    }
    real_close(dir);
    if (n == 0) return;
  }
  /* No /proc: every number up to the limit. */
  struct rlimit limit;
  int max_fd = 65536;
  if (getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur != RLIM_INFINITY && limit.rlim_cur < 1048576)
    max_fd = (int)limit.rlim_cur;
  for (int fd = 0; fd < max_fd; ++fd) {
    const int l = shared_index(fd);
    if (l >= 0) fn(fd, l);
  }
}

/* Puts the socket `with` in place of `fd`, keeping fd's close-on-exec flag and its epoll
 * registrations (under the same events). */
static void put_in_place(int fd, int with) {
  const int fd_flags = real_fcntl(fd, F_GETFD);
  /* Out of the server's epoll sets as the socket it was, back in as the new one. */
  for (int r = 0; r < MAX_REGISTRATIONS; ++r) {
    if (atomic_load(&registrations[r].state) == 2 && registrations[r].fd == fd)
      (void)real_epoll_ctl(registrations[r].epfd, EPOLL_CTL_DEL, fd, NULL);
  }
  (void)dup2(with, fd);
  if (fd_flags >= 0) (void)real_fcntl(fd, F_SETFD, fd_flags);
  for (int r = 0; r < MAX_REGISTRATIONS; ++r) {
    if (atomic_load(&registrations[r].state) == 2 && registrations[r].fd == fd) {
      struct epoll_event ev = registrations[r].event;
      (void)real_epoll_ctl(registrations[r].epfd, EPOLL_CTL_ADD, fd, &ev);
    }
  }
}

/* Puts a listener nobody can reach in place of `fd`, keeping its flags and epoll registrations. */
static void replace_with_dummy(int fd) {
  const int flags = real_fcntl(fd, F_GETFL);
  const int dummy = socket(AF_UNIX, SOCK_STREAM, 0);
  if (dummy < 0) return;
  /* An address of just the family asks the kernel for a fresh abstract name, which nobody knows. */
  struct sockaddr_un unnamed;
  memset(&unnamed, 0, sizeof unnamed);
  unnamed.sun_family = AF_UNIX;
  if (real_bind(dummy, (const struct sockaddr*)&unnamed, (socklen_t)sizeof(sa_family_t)) != 0 ||
      real_listen(dummy, 1) != 0) {
    real_close(dummy);
    return;
  }
  if (flags >= 0) (void)real_fcntl(dummy, F_SETFL, flags & O_NONBLOCK);
  put_in_place(fd, dummy);
  real_close(dummy);
}

static void remember(int fd, int wants_nonblock, int listener);

static void park_one(int fd, int listener) {
  /* Remembered, so that a resume puts back what it was (a server that took LISTEN_FDS itself
   * waits on the inherited one). */
  if (!is_adopted(fd)) {
    const int flags = real_fcntl(fd, F_GETFL);
    remember(fd, flags >= 0 && (flags & O_NONBLOCK) != 0, listener);
  }
  replace_with_dummy(fd);
}

/* Parking: every descriptor of a shared socket becomes unreachable; the library's own copies stay
 * for a resume. */
static void park(void) {
  if (atomic_load(&closed) || atomic_exchange(&parked, 1) != 0) return;
  atomic_store(&drained, 1);
  for_each_shared(park_one);
}

/* Resume: every adopted descriptor is the shared socket again, as it was before the park. */
static void resume(void) {
  if (atomic_load(&closed) || atomic_load(&parked) == 0) return;
  const int high = atomic_load(&adopted_high);
  for (int i = 0; i < high; ++i) {
    const int fd = atomic_load(&adopted[i].fd);
    const int l = atomic_load(&adopted[i].listener);
    if (fd >= 0 && l >= 0 && l < listener_count && listeners[l].keep >= 0 && !is_shared(fd))
      put_in_place(fd, listeners[l].keep);
  }
  atomic_store(&drained, 0);
  atomic_store(&parked, 0);
  if (main_pid == (long)getpid()) notify("READY=1");
}

static void drain_one(int fd, int listener) {
  (void)listener;
  replace_with_dummy(fd);
}

static void drain(void) {
  if (atomic_exchange(&closed, 1) != 0) return;
  atomic_store(&drained, 1);
  atomic_store(&parked, 0);
  /* An unreachable listener in place of every descriptor of a shared socket, whoever waits on it:
   * a server that took LISTEN_FDS itself stops taking connections as an adopting one does. */
  for_each_shared(drain_one);
  for (int i = 0; i < listener_count; ++i) {
    if (listeners[i].keep >= 0) real_close(listeners[i].keep);
    listeners[i].keep = -1;
  }
  if (main_pid == (long)getpid()) notify("STOPPING=1");
}

/* The HTTP drain on or off. Its table is made the first time, sized by the descriptor limit then
 * (descriptors past it pass untouched). */
static void set_http_drain(int on) {
  if (!on) {
    atomic_store(&http_active, 0);
    return;
  }
  if (atomic_load(&http_active)) return;
  if (conns == NULL) {
    struct rlimit limit;
    size_t count = 65536;
    if (getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur != RLIM_INFINITY) count = (size_t)limit.rlim_cur;
    if (count > 1048576) count = 1048576;
    if (count < 1024) count = 1024;
    /* Untouched pages cost nothing: only the entries of connections written to are ever used. */
    void* table = mmap(NULL, count * sizeof(struct conn), PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (table == MAP_FAILED) return;
    conns = (struct conn*)table;
    conn_count = count;
  }
  /* Each drain judges every connection afresh. */
  atomic_fetch_add(&http_epoch, 1);
  atomic_store(&http_active, 1);
}

static void apply(uint32_t mode, uint32_t flags) {
  pthread_mutex_lock(&registrations_lock);
  if (mode == HR_ADOPT_DRAIN)
    drain();
  else if (mode == HR_ADOPT_PARK)
    park();
  else
    resume();
  pthread_mutex_unlock(&registrations_lock);
  set_http_drain(mode != HR_ADOPT_SERVE && (flags & HR_ADOPT_HTTP_DRAIN) != 0);
  /* A Go program's writes are trapped from its final drain on (not while parked: a trap cannot be
   * taken back, and a resumed server would pay for it on every write). */
  if (mode == HR_ADOPT_DRAIN && (flags & HR_ADOPT_HTTP_DRAIN) != 0 && trap_wake >= 0 &&
      atomic_exchange(&trap_writes_asked, 1) == 0) {
    const uint64_t one = 1;
    (void)real_write(trap_wake, &one, sizeof one);
  }
}

/* The library's thread: carries out each command the supervisor writes to the page. */
static void* watch(void* unused) {
  (void)unused;
  (void)prctl(PR_SET_NAME, "hotrestart-adop", 0, 0, 0);
  for (;;) {
    const uint32_t seen = __atomic_load_n(&page->seq, __ATOMIC_ACQUIRE);
    apply(__atomic_load_n(&page->mode, __ATOMIC_ACQUIRE), __atomic_load_n(&page->flags, __ATOMIC_ACQUIRE));
    /* Returns at once if the page changed since `seen`. */
    (void)syscall(SYS_futex, &page->seq, FUTEX_WAIT, seen, NULL, NULL, 0);
  }
  return NULL;
}

/* Starts a thread of the library's own with every signal blocked, so that no handler of the
 * server's runs on it. */
static void start_thread(void* (*body)(void*)) {
  sigset_t all, previous;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &previous);
  pthread_attr_t attr;
  if (pthread_attr_init(&attr) == 0) {
    (void)pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    (void)pthread_attr_setstacksize(&attr, 128 * 1024);
    pthread_t thread;
    (void)pthread_create(&thread, &attr, body, NULL);
    pthread_attr_destroy(&attr);
  }
  pthread_sigmask(SIG_SETMASK, &previous, NULL);
}

static void start_watcher(void) {
  start_thread(watch);
}

/* A fork keeps the registrations consistent, and the child gets a thread of its own. */
static void before_fork(void) {
  pthread_mutex_lock(&registrations_lock);
}

static void after_fork_in_parent(void) {
  pthread_mutex_unlock(&registrations_lock);
}

static void after_fork_in_child(void) {
  pthread_mutex_unlock(&registrations_lock);
  start_watcher();
}

static void remember(int fd, int wants_nonblock, int listener) {
  for (int i = 0; i < MAX_ADOPTED; ++i) {
    int expected = -1;
    if (atomic_compare_exchange_strong(&adopted[i].fd, &expected, fd)) {
      atomic_store(&adopted[i].wants_nonblock, wants_nonblock);
      atomic_store(&adopted[i].listener, listener);
      int high = atomic_load(&adopted_high);
      while (high < i + 1 && !atomic_compare_exchange_weak(&adopted_high, &high, i + 1)) {
      }
      return;
    }
  }
}

static void forget(int fd) {
  for (int i = 0; i < MAX_ADOPTED; ++i) {
    int expected = fd;
    atomic_compare_exchange_strong(&adopted[i].fd, &expected, -1);
  }
  for (int r = 0; r < MAX_REGISTRATIONS; ++r) {
    if (atomic_load(&registrations[r].state) == 2 && registrations[r].fd == fd)
      atomic_store(&registrations[r].state, 0);
  }
}

/* A bind of `addr` on socket `fd` that asks for a listener the supervisor passed: puts that shared
 * socket in its place and returns 1 (-1 if it could not); 0 for any other bind. */
static int adopt_bind(int fd, const struct sockaddr* addr, socklen_t len) {
  if (addr == NULL || atomic_load(&drained)) return 0;
  for (int i = 0; i < listener_count; ++i) {
    if (!same_address(fd, addr, len, &listeners[i].addr)) continue;
    int type = 0;
    socklen_t type_len = sizeof type;
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &type_len) != 0 || type != SOCK_STREAM) return 0;
    const int flags = real_fcntl(fd, F_GETFL);
    const int fd_flags = real_fcntl(fd, F_GETFD);
    /* From the library's own copy: the server may have closed the inherited one. */
    if (dup2(listeners[i].keep >= 0 ? listeners[i].keep : listeners[i].fd, fd) < 0) return -1;
    /* The shared socket is non-blocking for every generation; the server's own choice is kept
     * per descriptor, and so is its close-on-exec choice. */
    const int shared = real_fcntl(fd, F_GETFL);
    if (shared >= 0 && (shared & O_NONBLOCK) == 0) (void)real_fcntl(fd, F_SETFL, shared | O_NONBLOCK);
    if (fd_flags >= 0) (void)real_fcntl(fd, F_SETFD, fd_flags);
    remember(fd, flags >= 0 && (flags & O_NONBLOCK) != 0, i);
    return 1;
  }
  return 0;
}

int bind(int fd, const struct sockaddr* addr, socklen_t len) {
  if (real_bind == NULL) resolve();
  const int adopted_now = adopt_bind(fd, addr, len);
  if (adopted_now != 0) return adopted_now > 0 ? 0 : -1;
  return real_bind(fd, addr, len);
}

/* ---------------------------------------------------------------------------------------------
 * Programs that make their own system calls (Go's runtime: its bind, listen, accept and writes
 * never pass through the C library). Their bind and listen are trapped instead, with a seccomp
 * filter whose notifications a thread of the library's own answers: a bind of a --listen address
 * gets the shared socket as from the interposed bind above, and every other call goes on as it
 * was (SECCOMP_USER_NOTIF_FLAG_CONTINUE). The drain needs nothing more: the library's thread
 * replaces the descriptors as it does for any server. */

#if defined(__x86_64__)
#define HR_AUDIT_ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define HR_AUDIT_ARCH AUDIT_ARCH_AARCH64
#endif

static int trap_fd = -1; /* The filter's notification descriptor. */

static int install_write_trap(void);
static long raw_syscall(long nr, long a, long b, long c, long d, long e);
static void answer_write_trap(struct seccomp_notif* req, struct seccomp_notif_resp* resp);

/* Whether the program itself (the first object the dynamic linker lists) carries Go's build-id
 * note: a Go program, whatever it was built with. */
static int program_is_go(struct dl_phdr_info* info, size_t size, void* data) {
  (void)size;
  for (int i = 0; i < info->dlpi_phnum; ++i) {
    const ElfW(Phdr)* ph = &info->dlpi_phdr[i];
    if (ph->p_type != PT_NOTE) continue;
    const unsigned char* p = (const unsigned char*)(info->dlpi_addr + ph->p_vaddr);
    const unsigned char* end = p + ph->p_memsz;
    while (end - p >= 12) {
      uint32_t namesz, descsz, type;
      memcpy(&namesz, p, 4);
      memcpy(&descsz, p + 4, 4);
      memcpy(&type, p + 8, 4);
      const size_t step = 12 + (((size_t)namesz + 3) & ~(size_t)3) + (((size_t)descsz + 3) & ~(size_t)3);
      if ((namesz == 3 || namesz == 4) && end - p >= 15 && memcmp(p + 12, "Go", 3) == 0 && type == 4) {
        *(int*)data = 1;
        return 1;
      }
      if (step > (size_t)(end - p)) break;
      p += step;
    }
  }
  return 1; /* The program only, not the libraries. */
}

/* Whether thread `tid` is one of this process's (a forked child's calls reach the same filter). */
static int own_thread(uint32_t tid) {
  return syscall(SYS_tgkill, getpid(), (pid_t)tid, 0) == 0;
}

static void answer_trap(struct seccomp_notif* req, struct seccomp_notif_resp* resp) {
  const int fd = (int)req->data.args[0];
  if (req->data.nr == __NR_bind) {
    struct sockaddr_storage addr;
    socklen_t len = (socklen_t)req->data.args[2];
    if (len > sizeof addr) len = sizeof addr;
    /* Read as the kernel would: a bad pointer is an error, never a crash of this thread. */
    struct iovec local = {&addr, len};
    struct iovec remote = {(void*)(uintptr_t)req->data.args[1], len};
    if (len < sizeof(sa_family_t) || process_vm_readv(getpid(), &local, 1, &remote, 1, 0) != (ssize_t)len) return;
    const int r = adopt_bind(fd, (const struct sockaddr*)&addr, len);
    if (r == 0) return;
    resp->flags = 0;
    resp->val = r > 0 ? 0 : -1;
    resp->error = r > 0 ? 0 : -errno;
  } else if (req->data.nr == __NR_listen && is_adopted(fd)) {
    /* Already listening, with the supervisor's backlog. A Go server's accept loop starts right
     * after its listen, and the library sees neither its epoll_ctl nor its accept: it is ready. */
    note_waiting(fd);
    resp->flags = 0;
    resp->val = 0;
    resp->error = 0;
  }
}

static void* answer_traps(void* unused) {
  (void)unused;
  (void)prctl(PR_SET_NAME, "hotrestart-trap", 0, 0, 0);
  union {
    struct seccomp_notif notif;
    char room[512];
  } req;
  int writes = 0; /* Trapping writes (after the drain) rather than binds. */
  for (;;) {
    struct pollfd p[2] = {{trap_fd, POLLIN, 0}, {trap_wake, POLLIN, 0}};
    if (real_poll(p, writes || trap_wake < 0 ? 1 : 2, -1) < 0) {
      if (errno == EINTR) continue;
      return NULL;
    }
    if (!writes && p[1].revents != 0 && atomic_load(&trap_writes_asked)) {
      /* The drain: the bind trap goes (a process's filters may have one listener only; binds now
       * fail with ENOSYS, which a draining server does not do), the write trap comes. */
      real_close(trap_fd);
      trap_fd = install_write_trap();
      if (trap_fd < 0) return NULL;
      writes = 1;
      continue;
    }
    if ((p[0].revents & POLLIN) == 0) {
      if (p[0].revents != 0) return NULL;
      continue;
    }
    memset(&req, 0, sizeof req);
    if (real_ioctl(trap_fd, SECCOMP_IOCTL_NOTIF_RECV, &req) != 0) {
      if (errno == EINTR || errno == ENOENT) continue;
      return NULL;
    }
    struct seccomp_notif_resp resp;
    memset(&resp, 0, sizeof resp);
    resp.id = req.notif.id;
    resp.flags = SECCOMP_USER_NOTIF_FLAG_CONTINUE;
    if (own_thread(req.notif.pid)) {
      const int saved = errno;
      if (writes)
        answer_write_trap(&req.notif, &resp);
      else
        answer_trap(&req.notif, &resp);
      errno = saved;
    }
    (void)real_ioctl(trap_fd, SECCOMP_IOCTL_NOTIF_SEND, &resp);
  }
}

/* Installs the trap for a Go program with listeners to adopt, before its runtime starts. */
static void trap_own_binds(void) {
#ifdef HR_AUDIT_ARCH
  int go = 0;
  dl_iterate_phdr(program_is_go, &go);
  if (!go || listener_count == 0) return;
  struct sock_filter filter[] = {
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, HR_AUDIT_ARCH, 1, 0),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_bind, 2, 0),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_listen, 1, 0),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_USER_NOTIF),
  };
  struct sock_fprog prog = {(unsigned short)(sizeof filter / sizeof filter[0]), filter};
  long fd = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER, &prog);
  if (fd < 0 && errno == EACCES) {
    /* Without CAP_SYS_ADMIN a filter needs no_new_privs: this process and its children can then
     * gain no privilege through exec (set-user-ID programs run without it). */
    (void)prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
    fd = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER, &prog);
  }
  if (fd < 0) return; /* An older kernel, or a filter already there: its bind fails as before. */
  trap_fd = fcntl((int)fd, F_DUPFD_CLOEXEC, 900);
  real_close((int)fd);
  if (trap_fd < 0) return;
  const int wake = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  trap_wake = wake >= 0 ? fcntl(wake, F_DUPFD_CLOEXEC, 900) : -1;
  if (wake >= 0) real_close(wake);
  start_thread(answer_traps);
#endif
}

int listen(int fd, int backlog) {
  if (real_listen == NULL) resolve();
  /* Already listening, with the supervisor's backlog, shared by every generation. */
  if (is_adopted(fd)) return 0;
  return real_listen(fd, backlog);
}

/* accept() as the server asked for it: on a descriptor it wants blocking, EAGAIN (another
 * generation took the connection, or none is there yet) means waiting, as a blocking accept does. */
static int accept_as_asked(int fd, struct sockaddr* addr, socklen_t* len, int flags, int four) {
  note_waiting(fd);
  const int slot = adopted_slot(fd);
  const socklen_t room = len != NULL ? *len : 0;
  for (;;) {
    const int r = four ? real_accept4(fd, addr, len, flags) : real_accept(fd, addr, len);
    if (r >= 0 || slot < 0 || (errno != EAGAIN && errno != EWOULDBLOCK) || atomic_load(&adopted[slot].wants_nonblock))
      return r;
    /* A bounded wait, so that a descriptor a resume has made the shared socket again (while this
     * waited on the unreachable one a park put there) is accepted from within half a second. */
    struct pollfd p = {fd, POLLIN, 0};
    if (real_poll(&p, 1, 500) < 0 && errno == EINTR) return -1; /* As an interrupted accept. */
    if (len != NULL) *len = room;
  }
}

int accept(int fd, struct sockaddr* addr, socklen_t* len) {
  if (real_accept == NULL) resolve();
  return accept_as_asked(fd, addr, len, 0, 0);
}

int accept4(int fd, struct sockaddr* addr, socklen_t* len, int flags) {
  if (real_accept4 == NULL) resolve();
  return accept_as_asked(fd, addr, len, flags, 1);
}

/* F_GETFL and F_SETFL on an adopted descriptor see and set the server's own blocking mode; the
 * shared socket stays non-blocking. Everything else goes through as it is. */
static int fcntl_as_asked(int (*real)(int, int, ...), int fd, int cmd, void* arg) {
  const int slot = cmd == F_GETFL || cmd == F_SETFL ? adopted_slot(fd) : -1;
  if (slot < 0 || atomic_load(&drained)) return real(fd, cmd, arg);
  if (cmd == F_GETFL) {
    const int flags = real(fd, F_GETFL);
    if (flags < 0) return flags;
    return (flags & ~O_NONBLOCK) | (atomic_load(&adopted[slot].wants_nonblock) ? O_NONBLOCK : 0);
  }
  const long wanted = (long)arg;
  atomic_store(&adopted[slot].wants_nonblock, (wanted & O_NONBLOCK) != 0);
  return real(fd, F_SETFL, wanted | O_NONBLOCK);
}

int fcntl(int fd, int cmd, ...) {
  if (real_fcntl == NULL) resolve();
  va_list ap;
  va_start(ap, cmd);
  void* arg = va_arg(ap, void*);
  va_end(ap);
  return fcntl_as_asked(real_fcntl, fd, cmd, arg);
}

int fcntl64(int fd, int cmd, ...) {
  if (real_fcntl64 == NULL) resolve();
  va_list ap;
  va_start(ap, cmd);
  void* arg = va_arg(ap, void*);
  va_end(ap);
  return fcntl_as_asked(real_fcntl64, fd, cmd, arg);
}

int ioctl(int fd, unsigned long request, ...) {
  if (real_ioctl == NULL) resolve();
  va_list ap;
  va_start(ap, request);
  void* arg = va_arg(ap, void*);
  va_end(ap);
  if (request == FIONBIO && arg != NULL && !atomic_load(&drained)) {
    const int slot = adopted_slot(fd);
    if (slot >= 0) {
      atomic_store(&adopted[slot].wants_nonblock, *(const int*)arg != 0);
      return 0;
    }
  }
  return real_ioctl(fd, request, arg);
}

int epoll_ctl(int epfd, int op, int fd, struct epoll_event* event) {
  if (real_epoll_ctl == NULL) resolve();
  if (!is_adopted(fd)) return real_epoll_ctl(epfd, op, fd, event);
  /* The library's thread moves descriptors by this table: no move between the call and its record. */
  pthread_mutex_lock(&registrations_lock);
  const int result = real_epoll_ctl(epfd, op, fd, event);
  if (result != 0) {
    const int failed = errno;
    pthread_mutex_unlock(&registrations_lock);
    errno = failed;
    return result;
  }
  const int saved = errno;
  if (op == EPOLL_CTL_ADD || op == EPOLL_CTL_MOD) {
    int slot = -1;
    for (int r = 0; r < MAX_REGISTRATIONS && slot < 0; ++r) {
      if (atomic_load(&registrations[r].state) == 2 && registrations[r].epfd == epfd && registrations[r].fd == fd)
        slot = r;
    }
    for (int r = 0; r < MAX_REGISTRATIONS && slot < 0; ++r) {
      int expected = 0;
      if (atomic_compare_exchange_strong(&registrations[r].state, &expected, 1)) slot = r;
    }
    if (slot >= 0) {
      atomic_store(&registrations[slot].state, 1);
      registrations[slot].epfd = epfd;
      registrations[slot].fd = fd;
      if (event != NULL) registrations[slot].event = *event;
      atomic_store(&registrations[slot].state, 2);
    }
    note_waiting(fd);
  } else if (op == EPOLL_CTL_DEL) {
    for (int r = 0; r < MAX_REGISTRATIONS; ++r) {
      if (atomic_load(&registrations[r].state) == 2 && registrations[r].epfd == epfd && registrations[r].fd == fd)
        atomic_store(&registrations[r].state, 0);
    }
  }
  pthread_mutex_unlock(&registrations_lock);
  errno = saved;
  return result;
}

int poll(struct pollfd* fds, nfds_t n, int timeout) {
  if (real_poll == NULL) resolve();
  for (nfds_t i = 0; i < n && !atomic_load(&ready_sent); ++i)
    if (fds[i].events & POLLIN) note_waiting(fds[i].fd);
  return real_poll(fds, n, timeout);
}

int ppoll(struct pollfd* fds, nfds_t n, const struct timespec* timeout, const sigset_t* mask) {
  if (real_ppoll == NULL) resolve();
  for (nfds_t i = 0; i < n && !atomic_load(&ready_sent); ++i)
    if (fds[i].events & POLLIN) note_waiting(fds[i].fd);
  return real_ppoll(fds, n, timeout, mask);
}

/* What -D_FORTIFY_SOURCE builds call instead of poll() and ppoll() (glibc's bits/poll2.h). */
int __poll_chk(struct pollfd* fds, nfds_t n, int timeout, size_t fds_len) {
  (void)fds_len;
  return poll(fds, n, timeout);
}

int __ppoll_chk(struct pollfd* fds, nfds_t n, const struct timespec* timeout, const sigset_t* mask, size_t fds_len) {
  (void)fds_len;
  return ppoll(fds, n, timeout, mask);
}

static void note_select(int n, const fd_set* readable) {
  if (readable == NULL || atomic_load(&ready_sent)) return;
  for (int fd = 0; fd < n && fd < FD_SETSIZE; ++fd)
    if (FD_ISSET(fd, readable)) note_waiting(fd);
}

int select(int n, fd_set* readable, fd_set* writable, fd_set* failed, struct timeval* timeout) {
  if (real_select == NULL) resolve();
  note_select(n, readable);
  return real_select(n, readable, writable, failed, timeout);
}

int pselect(int n, fd_set* readable, fd_set* writable, fd_set* failed, const struct timespec* timeout,
            const sigset_t* mask) {
  if (real_pselect == NULL) resolve();
  note_select(n, readable);
  return real_pselect(n, readable, writable, failed, timeout, mask);
}

int close(int fd) {
  if (real_close == NULL) resolve();
  if (is_adopted(fd)) forget(fd);
  if (conns != NULL && fd >= 0 && (size_t)fd < conn_count) conns[fd].epoch = 0;
  return real_close(fd);
}

/* Whether `fd` is a connection accepted on an adopted socket: a stream socket, not listening, whose
 * own port is one the supervisor listens on (a connection the server made has another). */
static int accepted_connection(int fd) {
  int value = 0;
  socklen_t len = sizeof value;
  if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &value, &len) != 0 || value != SOCK_STREAM) return 0;
  len = sizeof value;
  if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &value, &len) != 0 || value != 0) return 0;
  struct sockaddr_storage local;
  socklen_t local_len = sizeof local;
  if (getsockname(fd, (struct sockaddr*)&local, &local_len) != 0) return 0;
  in_port_t port = 0;
  if (local.ss_family == AF_INET)
    port = ((const struct sockaddr_in*)&local)->sin_port;
  else if (local.ss_family == AF_INET6)
    port = ((const struct sockaddr_in6*)&local)->sin6_port;
  else
    return 0;
  for (int i = 0; i < listener_count; ++i) {
    const struct sockaddr* l = (const struct sockaddr*)&listeners[i].addr;
    if (l->sa_family == AF_INET && ((const struct sockaddr_in*)l)->sin_port == port) return 1;
    if (l->sa_family == AF_INET6 && ((const struct sockaddr_in6*)l)->sin6_port == port) return 1;
  }
  return 0;
}

/* The HTTP drain's entry for `fd` if it is one to rewrite now, else NULL. */
static struct conn* http_conn(int fd) {
  if (!atomic_load_explicit(&http_active, memory_order_relaxed) || fd < 0 || (size_t)fd >= conn_count) return NULL;
  struct conn* c = &conns[fd];
  const uint32_t epoch = atomic_load_explicit(&http_epoch, memory_order_relaxed);
  if (c->epoch != epoch) {
    memset(&c->http, 0, sizeof c->http); /* Unsynced: the next write that begins a response starts. */
    c->accepted = (uint32_t)accepted_connection(fd);
    c->epoch = epoch;
  }
  return c->accepted && !hr_http_opaque(&c->http) ? c : NULL;
}

#define HTTP_MAX_IOV 128

/* A write on a connection under the HTTP drain, as writev (msg NULL) or as sendmsg: the server's
 * bytes with the rewriter's edits, and the count of its own bytes that went. */
static long raw_syscall(long nr, long a, long b, long c, long d, long e);

/* As writev and sendmsg do, through the C library, or (raw) through the library's own system call
 * instruction, which the write trap lets through (a Go program's writes are answered from there). */
static ssize_t send_out(int raw, int fd, const struct iovec* iov, int iovcnt, const struct msghdr* m, int flags) {
  if (!raw) return m == NULL ? real_writev(fd, iov, iovcnt) : real_sendmsg(fd, m, flags);
  const long r = m == NULL ? raw_syscall(__NR_writev, fd, (long)iov, iovcnt, 0, 0)
                           : raw_syscall(__NR_sendmsg, fd, (long)m, flags, 0, 0);
  if (r < 0) {
    errno = (int)-r;
    return -1;
  }
  return (ssize_t)r;
}

static ssize_t http_write(struct conn* c, int fd, const struct iovec* iov, int iovcnt, const struct msghdr* msg,
                          int flags, int raw) {
  size_t total = 0;
  for (int i = 0; i < iovcnt; ++i) {
    if (iov[i].iov_len > (size_t)SSIZE_MAX - total) return -2; /* As the kernel would have it. */
    total += iov[i].iov_len;
  }
  for (int attempt = 0;; ++attempt) {
    struct hr_edit edits[HR_HTTP_MAX_EDITS];
    size_t offer = total;
    const int n = hr_http_plan(&c->http, iov, iovcnt, total, edits, HR_HTTP_MAX_EDITS, &offer);
    struct iovec out[HTTP_MAX_IOV];
    int outn = hr_http_output(iov, iovcnt, offer, edits, n, out, HTTP_MAX_IOV);
    if (outn < 0) {
      /* More pieces than this writes at once: this write goes as it is, and the connection's
       * responses are no longer followed. */
      c->http.phase = HR_HTTP_OPAQUE;
      return -2;
    }
    ssize_t r;
    if (msg == NULL) {
      r = send_out(raw, fd, out, outn, NULL, 0);
    } else {
      struct msghdr m = *msg;
      m.msg_iov = out;
      m.msg_iovlen = (size_t)outn;
      if (attempt > 0) {
        m.msg_control = NULL;
        m.msg_controllen = 0;
      }
      r = send_out(raw, fd, out, outn, &m, flags);
    }
    if (r < 0) return -1;
    const size_t told = hr_http_commit(&c->http, iov, iovcnt, total, edits, n, (size_t)r);
    if (told > 0 || r == 0 || total == 0) return (ssize_t)told;
    /* Only bytes the rewriter added went: the server's own follow while the socket takes them. */
    if (attempt == 2) {
      errno = EAGAIN;
      return -1;
    }
  }
}

ssize_t write(int fd, const void* buf, size_t n) {
  if (real_write == NULL) resolve();
  struct conn* c = http_conn(fd);
  if (c != NULL) {
    struct iovec v = {(void*)buf, n};
    const ssize_t r = http_write(c, fd, &v, 1, NULL, 0, 0);
    if (r != -2) return r;
  }
  return real_write(fd, buf, n);
}

/* A write of more pieces than the rewriter takes at once goes as it is, and its connection is
 * no longer followed: its framing would be lost. */
static struct conn* http_conn_for(int fd, size_t pieces) {
  struct conn* c = http_conn(fd);
  if (c != NULL && pieces > HTTP_MAX_IOV / 2) {
    c->http.phase = HR_HTTP_OPAQUE;
    return NULL;
  }
  return c;
}

ssize_t writev(int fd, const struct iovec* iov, int iovcnt) {
  if (real_writev == NULL) resolve();
  struct conn* c = iovcnt >= 0 ? http_conn_for(fd, (size_t)iovcnt) : NULL;
  if (c != NULL) {
    const ssize_t r = http_write(c, fd, iov, iovcnt, NULL, 0, 0);
    if (r != -2) return r;
  }
  return real_writev(fd, iov, iovcnt);
}

ssize_t send(int fd, const void* buf, size_t n, int flags) {
  if (real_send == NULL) resolve();
  struct conn* c = http_conn(fd);
  if (c != NULL) {
    struct iovec v = {(void*)buf, n};
    struct msghdr m;
    memset(&m, 0, sizeof m);
    const ssize_t r = http_write(c, fd, &v, 1, &m, flags, 0);
    if (r != -2) return r;
  }
  return real_send(fd, buf, n, flags);
}

ssize_t sendto(int fd, const void* buf, size_t n, int flags, const struct sockaddr* to, socklen_t to_len) {
  if (real_sendto == NULL) resolve();
  struct conn* c = http_conn(fd);
  if (c != NULL) {
    struct iovec v = {(void*)buf, n};
    struct msghdr m;
    memset(&m, 0, sizeof m);
    m.msg_name = (void*)to;
    m.msg_namelen = to_len;
    const ssize_t r = http_write(c, fd, &v, 1, &m, flags, 0);
    if (r != -2) return r;
  }
  return real_sendto(fd, buf, n, flags, to, to_len);
}

ssize_t sendmsg(int fd, const struct msghdr* msg, int flags) {
  if (real_sendmsg == NULL) resolve();
  struct conn* c = msg != NULL ? http_conn_for(fd, msg->msg_iovlen) : NULL;
  if (c != NULL) {
    const ssize_t r = http_write(c, fd, msg->msg_iov, (int)msg->msg_iovlen, msg, flags, 0);
    if (r != -2) return r;
  }
  return real_sendmsg(fd, msg, flags);
}

/* A body sent from a file is not seen, only counted. */
ssize_t sendfile(int out, int in, off_t* offset, size_t count) {
  if (real_sendfile == NULL) resolve();
  const ssize_t r = real_sendfile(out, in, offset, count);
  struct conn* c = r > 0 ? http_conn(out) : NULL;
  if (c != NULL) hr_http_skip(&c->http, (uint64_t)r);
  return r;
}

ssize_t sendfile64(int out, int in, off64_t* offset, size_t count) {
  if (real_sendfile64 == NULL) resolve();
  const ssize_t r = real_sendfile64(out, in, offset, count);
  struct conn* c = r > 0 ? http_conn(out) : NULL;
  if (c != NULL) hr_http_skip(&c->http, (uint64_t)r);
  return r;
}

/* ---------------------------------------------------------------------------------------------
 * The HTTP drain for a Go program. Its writes are its own system calls, so at the drain the
 * library's trap thread gives up the bind trap (a process's filters may have one notification
 * listener only) and installs a second filter on every thread (TSYNC) that sends write, writev,
 * sendto, sendmsg, sendfile and close to it. It answers each on a connection to rewrite with the
 * rewriter, writing through a system call instruction of its own, which the filter lets through by
 * its address; everything else goes on as it was. Only a draining generation pays for the trap. */

#if defined(__x86_64__)
/* raw_syscall(nr, a, b, c, d, e): the system call, its result or -errno. hr_raw_syscall_return is
 * the address right after its syscall instruction: what the kernel reports as the caller's. */
__asm__(
    ".text\n"
    ".p2align 4\n"
    ".type hr_raw_syscall, @function\n"
    "hr_raw_syscall:\n"
    "  movq %rdi, %rax\n"
    "  movq %rsi, %rdi\n"
    "  movq %rdx, %rsi\n"
    "  movq %rcx, %rdx\n"
    "  movq %r8, %r10\n"
    "  movq %r9, %r8\n"
    "  syscall\n"
    "hr_raw_syscall_return:\n"
    "  ret\n"
    ".size hr_raw_syscall, .-hr_raw_syscall\n");
extern long hr_raw_syscall(long nr, long a, long b, long c, long d, long e) __attribute__((visibility("hidden")));
extern const char hr_raw_syscall_return[] __attribute__((visibility("hidden")));
#define HR_HAVE_RAW_SYSCALL 1
#endif

static long raw_syscall(long nr, long a, long b, long c, long d, long e) {
#ifdef HR_HAVE_RAW_SYSCALL
  return hr_raw_syscall(nr, a, b, c, d, e);
#else
  (void)nr, (void)a, (void)b, (void)c, (void)d, (void)e;
  return -ENOSYS;
#endif
}

/* Installs the write trap on every thread; its notification descriptor, or -1. */
static int install_write_trap(void) {
#if defined(HR_AUDIT_ARCH) && defined(HR_HAVE_RAW_SYSCALL)
  const uint64_t ip = (uint64_t)(uintptr_t)hr_raw_syscall_return;
  struct sock_filter filter[] = {
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, HR_AUDIT_ARCH, 1, 0),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
      /* The library's own instruction: let through. */
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, instruction_pointer)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (uint32_t)ip, 0, 3),
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, instruction_pointer) + 4),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (uint32_t)(ip >> 32), 0, 1),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_write, 6, 0),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_writev, 5, 0),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_sendto, 4, 0),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_sendmsg, 3, 0),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_sendfile, 2, 0),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_close, 1, 0),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_USER_NOTIF),
  };
  struct sock_fprog prog = {(unsigned short)(sizeof filter / sizeof filter[0]), filter};
  const long fd =
      syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER,
              SECCOMP_FILTER_FLAG_NEW_LISTENER | SECCOMP_FILTER_FLAG_TSYNC | SECCOMP_FILTER_FLAG_TSYNC_ESRCH, &prog);
  if (fd < 0) return -1;
  const int high = fcntl((int)fd, F_DUPFD_CLOEXEC, 900);
  /* This thread is trapped too from here on: its own closes go through the library's instruction. */
  (void)raw_syscall(__NR_close, fd, 0, 0, 0, 0);
  return high;
#else
  return -1;
#endif
}

/* Answers a trapped write-like call of this process's; leaves `resp` as "go on" for the others. */
static void answer_write_trap(struct seccomp_notif* req, struct seccomp_notif_resp* resp) {
  const long nr = req->data.nr;
  const int fd = (int)req->data.args[0];
  if (nr == __NR_close) {
    if (conns != NULL && fd >= 0 && (size_t)fd < conn_count) conns[fd].epoch = 0;
    return;
  }
  struct conn* c = http_conn(fd);
  if (c == NULL) return;
  ssize_t r = -2;
  if (nr == __NR_write) {
    struct iovec v = {(void*)(uintptr_t)req->data.args[1], (size_t)req->data.args[2]};
    r = http_write(c, fd, &v, 1, NULL, 0, 1);
  } else if (nr == __NR_writev) {
    const int count = (int)req->data.args[2];
    if (count >= 0 && count <= HTTP_MAX_IOV / 2)
      r = http_write(c, fd, (const struct iovec*)(uintptr_t)req->data.args[1], count, NULL, 0, 1);
    else
      c->http.phase = HR_HTTP_OPAQUE; /* As the interposed writev does. */
  } else if (nr == __NR_sendto) {
    struct iovec v = {(void*)(uintptr_t)req->data.args[1], (size_t)req->data.args[2]};
    struct msghdr m;
    memset(&m, 0, sizeof m);
    m.msg_name = (void*)(uintptr_t)req->data.args[4];
    m.msg_namelen = (socklen_t)req->data.args[5];
    r = http_write(c, fd, &v, 1, &m, (int)req->data.args[3], 1);
  } else if (nr == __NR_sendmsg) {
    const struct msghdr* m = (const struct msghdr*)(uintptr_t)req->data.args[1];
    if (m != NULL && m->msg_iovlen <= HTTP_MAX_IOV / 2)
      r = http_write(c, fd, m->msg_iov, (int)m->msg_iovlen, m, (int)req->data.args[2], 1);
    else
      c->http.phase = HR_HTTP_OPAQUE;
  } else if (nr == __NR_sendfile) {
    const long sent =
        raw_syscall(__NR_sendfile, fd, (long)req->data.args[1], (long)req->data.args[2], (long)req->data.args[3], 0);
    if (sent > 0) hr_http_skip(&c->http, (uint64_t)sent);
    r = sent < 0 ? -1 : sent;
    if (sent < 0) errno = (int)-sent;
  }
  if (r == -2) return; /* As it is. */
  resp->flags = 0;
  resp->val = r >= 0 ? r : -1;
  resp->error = r >= 0 ? 0 : -errno;
}
