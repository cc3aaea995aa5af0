/* The command page between `hotrestart run --adopt-binds` and libhotrestart-adopt
 * (docs/protocol.md, "Preload library command page"). One small shared memory file per generation,
 * made by the supervisor and passed to the generation's main process as a descriptor; every
 * process of the generation maps it (a forked one inherits the mapping, an exec'd one maps it
 * again from the descriptor). The supervisor writes a command and bumps `seq`, then wakes every
 * process waiting on it with a futex; a thread of the library's own in each process waits there
 * and carries the command out. No signal is involved, so no signal disposition of the server or
 * of its language runtime is ever touched.
 *
 * The supervisor only ever writes the page: what a generation writes into it is never read. */
#ifndef HOTRESTART_ADOPT_PAGE_H
#define HOTRESTART_ADOPT_PAGE_H

#include <stdint.h>

#define HR_ADOPT_PAGE_MAGIC 0x44415248u /* "HRAD" */
#define HR_ADOPT_PAGE_VERSION 1u
#define HR_ADOPT_PAGE_SIZE 4096u
/* The memfd's name, which the supervisor checks when it finds a page again after a takeover. */
#define HR_ADOPT_PAGE_NAME "hotrestart-adopt"
/* The environment variable naming the page's descriptor in a generation. */
#define HR_ADOPT_PAGE_ENV "HOTRESTART_ADOPT_PAGE_FD"

/* What the generation's processes do with their adopted listeners. */
enum hr_adopt_mode {
  HR_ADOPT_SERVE = 0, /* Take connections (the start, and a resume). */
  HR_ADOPT_PARK = 1,  /* Stop taking connections, keep the shared sockets for a resume. */
  HR_ADOPT_DRAIN = 2  /* Stop taking connections for good. */
};

/* Flags. */
#define HR_ADOPT_HTTP_DRAIN 0x1u /* While parked or draining, close HTTP/1.x connections after their next response. */

struct hr_adopt_page {
  uint32_t magic;
  uint32_t version;
  uint32_t seq;   /* Bumped after each change; the futex word. */
  uint32_t mode;  /* enum hr_adopt_mode */
  uint32_t flags; /* HR_ADOPT_* */
};

#endif
