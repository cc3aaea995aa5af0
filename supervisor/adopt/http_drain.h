/* The HTTP/1.x drain of libhotrestart-adopt: once a generation drains, each response head a server
 * writes on a connection it accepted carries `Connection: close`, so that the client closes after
 * that response instead of racing the server's own close of an idle keep-alive connection
 * (docs/operations.md, "The HTTP drain").
 *
 * The rewriter follows the server's outgoing bytes on one connection as a stream of HTTP/1.x
 * responses: each status line and header block, and each body by its framing (Content-Length,
 * chunked, or none for 1xx, 204 and 304), so that it knows where the next head begins however the
 * server splits its writes. In each head it either rewrites a `keep-alive` token of a Connection
 * header in place (same length: `close` and five spaces, which HTTP reads as trailing whitespace)
 * or inserts `Connection: close` after the status line. Bytes that do not read as an HTTP/1.x
 * response (TLS, HTTP/2, a protocol switched to after 101) make it stop for that connection: from
 * then on everything passes untouched.
 *
 * It is pure: no system calls, no allocation. The caller offers a write's bytes, gets back the edits
 * to apply (hr_http_plan), writes, and then tells it how many bytes the kernel took
 * (hr_http_commit), which it maps back to the count of the server's own bytes: a server never sees
 * a byte it did not write. Only whole bytes the server wrote are ever changed in place, and only
 * those not yet sent. */
#ifndef HOTRESTART_ADOPT_HTTP_DRAIN_H
#define HOTRESTART_ADOPT_HTTP_DRAIN_H

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#ifdef __cplusplus
extern "C" {
#endif

/* What goes in after the status line of a head that has no Connection header to rewrite. */
#define HR_HTTP_CLOSE_HEADER "Connection: close\r\n"
#define HR_HTTP_CLOSE_HEADER_LEN 19
/* The most edits one write gets; a write that would need more is offered in part (hr_http_plan). */
#define HR_HTTP_MAX_EDITS 64
/* What a `keep-alive` token becomes, byte for byte. */
#define HR_HTTP_CLOSE_TOKEN "close     "
#define HR_HTTP_CLOSE_TOKEN_LEN 10

/* Where a connection's outgoing stream is. */
enum hr_http_phase {
  HR_HTTP_UNSYNCED = 0, /* Not yet known: the next write that begins with a status line starts a head. */
  HR_HTTP_STATUS,       /* In a status line. */
  HR_HTTP_HEADERS,      /* In the header block. */
  HR_HTTP_BODY,         /* In a body of known length. */
  HR_HTTP_CHUNK_SIZE,   /* In a chunk's size line. */
  HR_HTTP_CHUNK_DATA,   /* In a chunk's data. */
  HR_HTTP_CHUNK_END,    /* In the CRLF after a chunk's data. */
  HR_HTTP_TRAILERS,     /* In the trailer block after the last chunk. */
  HR_HTTP_OPAQUE        /* Not HTTP/1.x, or no longer: everything passes untouched. */
};

/* One connection's state: 48 bytes, zero is "unsynced". */
struct hr_http {
  uint64_t remaining;  /* Body or chunk bytes still to come; in a status line, the bytes matched. */
  uint32_t head_flags; /* HR_HF_* of the head being read. */
  uint16_t status;
  uint8_t phase;
  uint8_t line;        /* Where in the current line (HR_LINE_*). */
  uint8_t name_len;    /* Bytes of the header name read so far (saturates). */
  uint8_t name_cand;   /* Which known header names it can still be (bit per name). */
  uint8_t field;       /* Which known header the current value belongs to (0: none). */
  uint8_t tok_len;     /* Bytes of the current value token (saturates). */
  uint8_t tok_cand;    /* Which known tokens it can still be. */
  uint8_t repl_left;   /* Bytes of a keep-alive token still to be replaced. */
  uint8_t ins_pending; /* An inserted header not all sent yet... */
  uint8_t ins_off;     /* ...from this offset in it. */
  uint8_t body_fresh;  /* A body just began: no byte of it was written yet. */
  uint8_t hex_digits;
  uint8_t reserved[18];
};

/* One edit of a write: insert bytes of HR_HTTP_CLOSE_HEADER before server byte `pos`, or replace
 * `len` server bytes from `pos` with bytes of HR_HTTP_CLOSE_TOKEN. */
enum hr_edit_kind { HR_EDIT_INSERT = 1, HR_EDIT_REPLACE = 2 };
struct hr_edit {
  size_t pos;
  uint8_t kind;
  uint8_t lit_off; /* From this offset in the literal... */
  uint8_t len;     /* ...this many bytes. */
};

/* The edits of one write of `total` server bytes (the concatenation of `iov`), from state `s`
 * (not changed). At most `max_edits` (and HR_HTTP_MAX_EDITS) are returned in `edits`; `*offer` is
 * set to how many server bytes to write with them (less than `total` only when more edits were
 * due: a short write, which the server goes on from as from any other). */
int hr_http_plan(const struct hr_http* s, const struct iovec* iov, int iovcnt, size_t total, struct hr_edit* edits,
                 int max_edits, size_t* offer);

/* After writing the first `offer` server bytes with `edits` (from hr_http_plan on the same bytes),
 * of which the kernel took `written` bytes (output bytes: edits included): advances `s` and returns
 * how many of the server's own bytes were written. */
size_t hr_http_commit(struct hr_http* s, const struct iovec* iov, int iovcnt, size_t total, const struct hr_edit* edits,
                      int nedits, size_t written);

/* `n` bytes the rewriter does not see went out (sendfile): a body's, or the connection is no
 * longer followed. */
void hr_http_skip(struct hr_http* s, uint64_t n);

/* How many output bytes the edits add to `offer` server bytes. */
size_t hr_http_added(const struct hr_edit* edits, int nedits);

/* Builds the output of a planned write in `out` (at most `max_out` entries): the first `offer`
 * server bytes of `iov` with `edits` applied. Returns the number of entries, or -1 if they do not
 * fit. */
int hr_http_output(const struct iovec* iov, int iovcnt, size_t offer, const struct hr_edit* edits, int nedits,
                   struct iovec* out, int max_out);

/* Whether a state passes everything untouched for good. */
static inline int hr_http_opaque(const struct hr_http* s) {
  return s->phase == HR_HTTP_OPAQUE;
}

#ifdef __cplusplus
}
#endif

#endif
