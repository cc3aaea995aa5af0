/* The HTTP/1.x response rewriter of libhotrestart-adopt (see http_drain.h). A byte-level state
 * machine over one connection's outgoing stream: heads are read byte by byte, bodies are skipped
 * by their length. The same scan serves both halves of a write: planned over all the bytes the
 * server offers (on a copy of the state), then run again on the real state over the bytes the
 * kernel took. Both see the same bytes, so they make the same decisions. */
#include "http_drain.h"

#include <string.h>

/* Head flags. */
#define HF_V10 0x1u        /* The status line says HTTP/1.0. */
#define HF_CL 0x2u         /* A Content-Length header was read... */
#define HF_CL_DIGIT 0x4u   /* ...a digit of the current one... */
#define HF_CL_END 0x8u     /* ...and whitespace after its digits. */
#define HF_TE 0x10u        /* A Transfer-Encoding header was read... */
#define HF_CHUNKED 0x20u   /* ...whose last coding is chunked. */
#define HF_CLOSE 0x40u     /* A Connection header says close... */
#define HF_KEEPALIVE 0x80u /* ...keep-alive... */
#define HF_UPGRADE 0x100u  /* ...upgrade. */
#define HF_IN_PARAM 0x200u /* In a token's parameters (after ';'), up to the next ','. */

/* Where in a line. */
enum { L_START = 0, L_NAME, L_VALUE, L_END_CR, L_SKIP };

/* Header names the rewriter reads (bit i: names[i]); field ids are i + 1. */
static const char* const names[] = {"connection", "content-length", "transfer-encoding"};
enum { F_NONE = 0, F_CONNECTION = 1, F_CONTENT_LENGTH = 2, F_TRANSFER_ENCODING = 3 };
/* Value tokens (bit i: tokens[i]). */
static const char* const tokens[] = {"close", "keep-alive", "upgrade", "chunked"};
enum { T_CLOSE = 1, T_KEEPALIVE = 2, T_UPGRADE = 4, T_CHUNKED = 8 };

/* Scan options. */
#define SCAN_EDIT 1      /* Decide and record edits. */
#define SCAN_HEAD_ONLY 2 /* Stop at the end of the first head (the lookahead). */

static unsigned char lower(unsigned char c) {
  return c >= 'A' && c <= 'Z' ? (unsigned char)(c + 32) : c;
}

/* Copies up to `n` bytes from server offset `pos` into `out`; returns how many there were. */
static size_t peek(const struct iovec* iov, int iovcnt, size_t pos, unsigned char* out, size_t n) {
  size_t got = 0;
  for (int i = 0; i < iovcnt && got < n; ++i) {
    const size_t len = iov[i].iov_len;
    if (pos >= len) {
      pos -= len;
      continue;
    }
    const unsigned char* base = (const unsigned char*)iov[i].iov_base;
    while (pos < len && got < n)
      out[got++] = base[pos++];
    pos = 0;
  }
  return got;
}

/* Whether bytes at `pos` begin an HTTP/1.x status line: "HTTP/1.D DDD" then a space or line end.
 * With `partial`, fewer bytes than the whole pattern may be there, as long as those match. */
static int status_line_at(const struct iovec* iov, int iovcnt, size_t pos, int partial) {
  unsigned char b[13];
  const size_t n = peek(iov, iovcnt, pos, b, sizeof b);
  if (n < (partial ? 5 : 13)) return 0;
  static const char prefix[] = "HTTP/1.";
  for (size_t i = 0; i < n; ++i) {
    const unsigned char c = b[i];
    if (i < 7 && c != (unsigned char)prefix[i]) return 0;
    if (i == 7 && c != '0' && c != '1') return 0;
    if (i == 8 && c != ' ') return 0;
    if (i >= 9 && i <= 11 && (c < '0' || c > '9')) return 0;
    if (i == 12 && c != ' ' && c != '\r' && c != '\n') return 0;
  }
  return 1;
}

static const char keep_alive[] = "keep-alive";

/* How many of the `n` bytes at `pos` go on matching "keep-alive" from its byte `from`. */
static size_t keep_alive_match(const struct iovec* iov, int iovcnt, size_t pos, size_t from, size_t n) {
  unsigned char b[10];
  if (n > sizeof b - from) n = sizeof b - from;
  n = peek(iov, iovcnt, pos, b, n);
  size_t same = 0;
  while (same < n && lower(b[same]) == (unsigned char)keep_alive[from + same])
    ++same;
  return same;
}

static int is_token_delimiter(unsigned char c) {
  return c == ',' || c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == ';';
}

static void next_head(struct hr_http* s) {
  s->phase = HR_HTTP_STATUS;
  s->remaining = 0;
  s->head_flags = 0;
  s->status = 0;
  s->line = L_START;
  s->field = F_NONE;
  s->body_fresh = 0;
}

static void opaque(struct hr_http* s) {
  s->phase = HR_HTTP_OPAQUE;
  s->repl_left = 0;
  s->ins_pending = 0;
}

/* The end of a value token of field `s->field`. */
static void end_token(struct hr_http* s) {
  if (s->tok_len == 0) return;
  unsigned found = 0;
  for (unsigned i = 0; i < sizeof tokens / sizeof tokens[0]; ++i)
    if ((s->tok_cand & (1u << i)) != 0 && strlen(tokens[i]) == s->tok_len) found = 1u << i;
  if (s->field == F_CONNECTION) {
    if (found == T_CLOSE) s->head_flags |= HF_CLOSE;
    if (found == T_KEEPALIVE) s->head_flags |= HF_KEEPALIVE;
    if (found == T_UPGRADE) s->head_flags |= HF_UPGRADE;
  } else if (s->field == F_TRANSFER_ENCODING) {
    /* Only the last coding decides the framing. */
    if (found == T_CHUNKED)
      s->head_flags |= HF_CHUNKED;
    else
      s->head_flags &= ~HF_CHUNKED;
  }
  s->tok_len = 0;
  s->tok_cand = 0;
}

/* The end of a header line's value. */
static void end_value(struct hr_http* s) {
  end_token(s);
  s->head_flags &= ~HF_IN_PARAM;
  if (s->field == F_CONTENT_LENGTH && (s->head_flags & HF_CL_DIGIT) == 0) opaque(s);
  s->head_flags &= ~(HF_CL_DIGIT | HF_CL_END);
}

/* `n` bytes of a body or a chunk's data (no more than remain) went. */
static void body_bytes(struct hr_http* s, uint64_t n) {
  s->remaining -= n;
  s->body_fresh = 0;
  if (s->remaining > 0) return;
  if (s->phase == HR_HTTP_BODY) {
    next_head(s);
  } else {
    s->phase = HR_HTTP_CHUNK_END;
    s->line = L_START;
  }
}

/* What follows a head that just ended. */
static void after_head(struct hr_http* s) {
  const unsigned f = s->head_flags;
  const unsigned status = s->status;
  if (status == 101) {
    opaque(s); /* Another protocol from here on. */
  } else if (status < 200 || status == 204 || status == 304) {
    next_head(s);
  } else if ((f & HF_TE) != 0) {
    if ((f & HF_CHUNKED) == 0) {
      opaque(s); /* Delimited by the close. */
      return;
    }
    s->phase = HR_HTTP_CHUNK_SIZE;
    s->remaining = 0;
    s->hex_digits = 0;
    s->line = L_START;
    s->body_fresh = 1;
  } else if ((f & HF_CL) != 0) {
    if (s->remaining == 0) {
      next_head(s);
      return;
    }
    s->phase = HR_HTTP_BODY;
    s->body_fresh = 1;
  } else {
    opaque(s); /* Delimited by the close. */
  }
}

/* Reads the head from server offset `pos` to its end or to `total`, without edits: whether it ends
 * within the bytes, and what its Connection headers say. */
static int scan(struct hr_http* s, const struct iovec* iov, int iovcnt, size_t total, size_t stop, int options,
                struct hr_edit* edits, int max_edits, int* nedits, size_t from, size_t* reached);

static unsigned lookahead(const struct hr_http* s, const struct iovec* iov, int iovcnt, size_t total, size_t pos,
                          int* complete) {
  struct hr_http copy = *s;
  int n = 0;
  size_t reached = 0;
  scan(&copy, iov, iovcnt, total, total, SCAN_HEAD_ONLY, NULL, 0, &n, pos, &reached);
  *complete = copy.phase != HR_HTTP_HEADERS || copy.line == 0xff;
  return copy.head_flags;
}

static int add_edit(struct hr_edit* edits, int max_edits, int* nedits, size_t pos, int kind, unsigned lit_off,
                    unsigned len) {
  if (*nedits >= max_edits) return 0;
  edits[*nedits].pos = pos;
  edits[*nedits].kind = (uint8_t)kind;
  edits[*nedits].lit_off = (uint8_t)lit_off;
  edits[*nedits].len = (uint8_t)len;
  ++*nedits;
  return 1;
}

/* Advances `s` over server bytes [from, stop) of the `total` in `iov`. With SCAN_EDIT, records the
 * edits; returns 0 if they did not all fit in `max_edits`, and then *reached is the offset before
 * the byte whose consumption would have decided the one that did not fit (the bytes before it can
 * be written with the edits that did), and *nedits says how many did. SCAN_HEAD_ONLY stops at the
 * end of the first head and marks that by line = 0xff. */
static int scan(struct hr_http* s, const struct iovec* iov, int iovcnt, size_t total, size_t stop, int options,
                struct hr_edit* edits, int max_edits, int* nedits, size_t from, size_t* reached) {
  const int edit = (options & SCAN_EDIT) != 0;
  size_t pos = 0;
  *reached = stop;
  /* A write starts: what the last one left unfinished comes first. */
  if (from == 0 && edit) {
    if (s->ins_pending) {
      if (!add_edit(edits, max_edits, nedits, 0, HR_EDIT_INSERT, s->ins_off, HR_HTTP_CLOSE_HEADER_LEN - s->ins_off)) {
        *reached = 0;
        return 0;
      }
      s->ins_pending = 0;
    }
    if (s->repl_left > 0) {
      /* The rest of a token whose start went out rewritten, for as long as it is still keep-alive
       * (a token that only began like it was written whole, in the server's next write). */
      const size_t done = HR_HTTP_CLOSE_TOKEN_LEN - s->repl_left;
      const size_t want = s->repl_left < total ? s->repl_left : total;
      const size_t len = keep_alive_match(iov, iovcnt, 0, done, want);
      if (len < want) s->repl_left = (uint8_t)len;
      if (len > 0 && !add_edit(edits, max_edits, nedits, 0, HR_EDIT_REPLACE, (unsigned)done, (unsigned)len)) {
        *reached = 0;
        return 0;
      }
    }
  }
  if (from == 0 && total > 0) {
    if (s->phase == HR_HTTP_UNSYNCED) {
      if (!status_line_at(iov, iovcnt, 0, 1)) return 1; /* Stays unsynced; the bytes pass. */
      next_head(s);
    } else if (s->body_fresh && (s->phase == HR_HTTP_BODY || s->phase == HR_HTTP_CHUNK_SIZE) &&
               status_line_at(iov, iovcnt, 0, 0)) {
      /* A head where a body was due, at a write of its own: the last response had none (it answered
       * a HEAD request). */
      next_head(s);
    }
  }
  pos = from;
  int i = 0;
  size_t off = 0;
  /* Finds the segment of `pos`. */
  {
    size_t skip = pos;
    while (i < iovcnt && skip >= iov[i].iov_len) {
      skip -= iov[i].iov_len;
      ++i;
    }
    off = skip;
  }
  while (pos < stop && i < iovcnt) {
    if (s->phase == HR_HTTP_OPAQUE || s->phase == HR_HTTP_UNSYNCED) return 1;
    const unsigned char* base = (const unsigned char*)iov[i].iov_base;
    const size_t seg_left = iov[i].iov_len - off;
    if (seg_left == 0) {
      ++i;
      off = 0;
      continue;
    }
    if (s->phase == HR_HTTP_BODY || s->phase == HR_HTTP_CHUNK_DATA) {
      size_t take = seg_left;
      if (take > stop - pos) take = stop - pos;
      if (take > s->remaining) take = (size_t)s->remaining;
      body_bytes(s, take);
      pos += take;
      off += take;
      continue;
    }
    const unsigned char c = base[off];
    /* Decisions made before the byte at `pos` is consumed. */
    if (edit && s->phase == HR_HTTP_HEADERS && s->line == L_VALUE && s->field == F_CONNECTION && s->tok_len == 0 &&
        s->repl_left == 0 && !is_token_delimiter(c) && (s->head_flags & HF_IN_PARAM) == 0 && s->status >= 200) {
      /* A keep-alive token is rewritten whole when the write holds it and what ends it. One that
       * the write ends inside is rewritten as far as it goes, and the rest follows in the next
       * write while it still matches: a head split there is rare, and a Connection option that
       * only begins like keep-alive rarer still. */
      unsigned char b[11];
      const size_t avail = peek(iov, iovcnt, pos, b, sizeof b);
      const size_t same = keep_alive_match(iov, iovcnt, pos, 0, HR_HTTP_CLOSE_TOKEN_LEN);
      const size_t len = avail == sizeof b ? (same == HR_HTTP_CLOSE_TOKEN_LEN && is_token_delimiter(b[10]) ? same : 0)
                                           : (same == avail ? avail : 0);
      if (len > 0) {
        if (!add_edit(edits, max_edits, nedits, pos, HR_EDIT_REPLACE, 0, (unsigned)len)) {
          *reached = pos;
          return 0;
        }
        s->repl_left = HR_HTTP_CLOSE_TOKEN_LEN;
      }
    }
    ++pos;
    ++off;
    if (s->repl_left > 0) --s->repl_left;
    switch (s->phase) {
      case HR_HTTP_STATUS: {
        const size_t k = (size_t)s->remaining;
        static const char prefix[] = "HTTP/1.";
        if (k < 7) {
          if (c != (unsigned char)prefix[k]) opaque(s);
        } else if (k == 7) {
          if (c == '0')
            s->head_flags |= HF_V10;
          else if (c != '1')
            opaque(s);
        } else if (k == 8) {
          if (c != ' ') opaque(s);
        } else if (k <= 11) {
          if (c < '0' || c > '9')
            opaque(s);
          else
            s->status = (uint16_t)(s->status * 10 + (c - '0'));
        } else if (c == '\n') {
          /* The status line ends: the head's edit is decided here. */
          s->phase = HR_HTTP_HEADERS;
          s->line = L_START;
          if (edit && s->status >= 200) {
            int complete = 0;
            const unsigned f = lookahead(s, iov, iovcnt, total, pos, &complete);
            const int needed =
                complete ? (f & (HF_CLOSE | HF_KEEPALIVE)) == 0 && (s->head_flags & HF_V10) == 0 : (f & HF_CLOSE) == 0;
            if (needed && !add_edit(edits, max_edits, nedits, pos, HR_EDIT_INSERT, 0, HR_HTTP_CLOSE_HEADER_LEN)) {
              /* The write stops before this line's end, so that the next one decides again. */
              *reached = pos - 1;
              return 0;
            }
          }
          break;
        } else if (k == 12 && c != ' ' && c != '\r') {
          opaque(s);
        }
        if (s->remaining < 13) ++s->remaining;
        break;
      }
      case HR_HTTP_HEADERS:
      case HR_HTTP_TRAILERS: {
        if (s->line == L_START) {
          if (c == '\r') {
            s->line = L_END_CR;
          } else if (c == '\n') {
            goto head_end;
          } else if ((c == ' ' || c == '\t') && s->phase == HR_HTTP_HEADERS) {
            s->line = L_VALUE; /* A folded continuation of the last value. */
            end_token(s);
          } else if (s->phase == HR_HTTP_TRAILERS) {
            s->line = L_SKIP;
          } else if (c == ':') {
            opaque(s);
          } else {
            s->line = L_NAME;
            s->field = F_NONE;
            s->name_len = 1;
            s->name_cand = 0;
            for (unsigned n = 0; n < sizeof names / sizeof names[0]; ++n)
              if (lower(c) == (unsigned char)names[n][0]) s->name_cand |= (uint8_t)(1u << n);
          }
        } else if (s->line == L_END_CR) {
          if (c != '\n') {
            opaque(s);
            break;
          }
        head_end:
          if (s->phase == HR_HTTP_TRAILERS) {
            next_head(s);
          } else if (options & SCAN_HEAD_ONLY) {
            s->line = 0xff;
            *reached = pos;
            return 1;
          } else {
            after_head(s);
          }
        } else if (s->line == L_SKIP) {
          if (c == '\n') s->line = L_START;
        } else if (s->line == L_NAME) {
          if (c == ':') {
            s->line = L_VALUE;
            s->field = F_NONE;
            for (unsigned n = 0; n < sizeof names / sizeof names[0]; ++n)
              if ((s->name_cand & (1u << n)) != 0 && strlen(names[n]) == s->name_len) s->field = (uint8_t)(n + 1);
            s->tok_len = 0;
            s->tok_cand = 0;
            if (s->field == F_CONTENT_LENGTH) {
              /* Two lengths that differ are a response nobody can frame. */
              if ((s->head_flags & HF_CL) != 0) {
                opaque(s);
                break;
              }
              s->head_flags |= HF_CL;
              s->remaining = 0;
            }
            if (s->field == F_TRANSFER_ENCODING) s->head_flags |= HF_TE;
          } else if (c == '\n') {
            opaque(s);
          } else {
            for (unsigned n = 0; n < sizeof names / sizeof names[0]; ++n)
              if (s->name_len >= strlen(names[n]) || lower(c) != (unsigned char)names[n][s->name_len])
                s->name_cand &= (uint8_t) ~(1u << n);
            if (s->name_len < 0xfe) ++s->name_len;
          }
        } else if (s->line == L_VALUE) {
          if (c == '\n') {
            end_value(s);
            if (s->phase != HR_HTTP_OPAQUE) s->line = L_START;
          } else if (s->field == F_CONTENT_LENGTH) {
            if (c >= '0' && c <= '9') {
              if ((s->head_flags & HF_CL_END) != 0 || s->remaining > (UINT64_MAX >> 5)) {
                opaque(s);
                break;
              }
              s->remaining = s->remaining * 10 + (c - '0');
              s->head_flags |= HF_CL_DIGIT;
            } else if (c == ' ' || c == '\t' || c == '\r') {
              if ((s->head_flags & HF_CL_DIGIT) != 0) s->head_flags |= HF_CL_END;
            } else {
              opaque(s);
            }
          } else if (s->field == F_CONNECTION || s->field == F_TRANSFER_ENCODING) {
            if (c == ',') {
              end_token(s);
              s->head_flags &= ~HF_IN_PARAM;
            } else if (c == ';') {
              end_token(s);
              s->head_flags |= HF_IN_PARAM;
            } else if (is_token_delimiter(c)) {
              end_token(s);
            } else if ((s->head_flags & HF_IN_PARAM) == 0) {
              if (s->tok_len == 0) s->tok_cand = 0xf;
              for (unsigned t = 0; t < sizeof tokens / sizeof tokens[0]; ++t)
                if (s->tok_len >= strlen(tokens[t]) || lower(c) != (unsigned char)tokens[t][s->tok_len])
                  s->tok_cand &= (uint8_t) ~(1u << t);
              if (s->tok_len < 0xfe) ++s->tok_len;
            }
          }
        }
        break;
      }
      case HR_HTTP_CHUNK_SIZE: {
        int digit = -1;
        if (c >= '0' && c <= '9') digit = c - '0';
        if (lower(c) >= 'a' && lower(c) <= 'f') digit = lower(c) - 'a' + 10;
        if (s->line == L_START && digit >= 0) {
          if (s->hex_digits >= 15) {
            opaque(s);
            break;
          }
          s->remaining = s->remaining * 16 + (unsigned)digit;
          ++s->hex_digits;
          s->body_fresh = 0;
        } else if (s->hex_digits == 0) {
          opaque(s);
        } else if (c == '\n') {
          s->hex_digits = 0;
          if (s->remaining == 0) {
            s->phase = HR_HTTP_TRAILERS;
            s->line = L_START;
          } else {
            s->phase = HR_HTTP_CHUNK_DATA;
          }
        } else {
          s->line = L_SKIP; /* Extensions, up to the line's end. */
        }
        break;
      }
      case HR_HTTP_CHUNK_END: {
        if (c == '\r' && s->line == L_START) {
          s->line = L_END_CR;
        } else if (c == '\n') {
          s->phase = HR_HTTP_CHUNK_SIZE;
          s->remaining = 0;
          s->hex_digits = 0;
          s->line = L_START;
        } else {
          opaque(s);
        }
        break;
      }
      default:
        break;
    }
  }
  return 1;
}

int hr_http_plan(const struct hr_http* s, const struct iovec* iov, int iovcnt, size_t total, struct hr_edit* edits,
                 int max_edits, size_t* offer) {
  struct hr_http copy = *s;
  int n = 0;
  *offer = total;
  if (copy.phase == HR_HTTP_OPAQUE) return 0;
  if (max_edits > HR_HTTP_MAX_EDITS) max_edits = HR_HTTP_MAX_EDITS;
  size_t reached = total;
  /* When the edits do not all fit, the write stops before the first that did not. */
  if (!scan(&copy, iov, iovcnt, total, total, SCAN_EDIT, edits, max_edits, &n, 0, &reached)) *offer = reached;
  return n;
}

void hr_http_skip(struct hr_http* s, uint64_t n) {
  if (s->phase == HR_HTTP_UNSYNCED || s->phase == HR_HTTP_OPAQUE || n == 0) return;
  if ((s->phase == HR_HTTP_BODY || s->phase == HR_HTTP_CHUNK_DATA) && n <= s->remaining) {
    body_bytes(s, n);
    return;
  }
  opaque(s);
}

size_t hr_http_added(const struct hr_edit* edits, int nedits) {
  size_t added = 0;
  for (int e = 0; e < nedits; ++e)
    if (edits[e].kind == HR_EDIT_INSERT) added += edits[e].len;
  return added;
}

size_t hr_http_commit(struct hr_http* s, const struct iovec* iov, int iovcnt, size_t total, const struct hr_edit* edits,
                      int nedits, size_t written) {
  /* Where the kernel's count falls among the output's pieces. */
  size_t out = 0, srv = 0, consumed = 0;
  int pending = 0;
  unsigned pending_off = 0;
  int e = 0;
  for (;; ++e) {
    const size_t next = e < nedits ? edits[e].pos : (size_t)-1;
    if (e >= nedits) {
      consumed = srv + (written - out);
      break;
    }
    const size_t seg = next - srv;
    if (written < out + seg) {
      consumed = srv + (written - out);
      break;
    }
    out += seg;
    srv = next;
    if (edits[e].kind == HR_EDIT_INSERT) {
      if (written < out + edits[e].len) {
        consumed = srv;
        pending = 1;
        pending_off = edits[e].lit_off + (unsigned)(written - out);
        break;
      }
      out += edits[e].len;
    } else {
      if (written <= out + edits[e].len) {
        consumed = srv + (written - out);
        break;
      }
      out += edits[e].len;
      srv += edits[e].len;
    }
  }
  if (consumed > total) consumed = total;
  /* The same scan as the plan's, over what was taken: the same decisions, and no more edits than
   * the plan had room for. Its edits are not needed again: where the write stopped in one is set
   * below. */
  struct hr_edit scratch[HR_HTTP_MAX_EDITS];
  int n = 0;
  size_t reached = 0;
  if (s->phase != HR_HTTP_OPAQUE)
    scan(s, iov, iovcnt, total, consumed, SCAN_EDIT, scratch, HR_HTTP_MAX_EDITS, &n, 0, &reached);
  s->ins_pending = (uint8_t)pending;
  s->ins_off = (uint8_t)pending_off;
  return consumed;
}

/* A walk over the server's bytes, for hr_http_output. */
struct walk {
  const struct iovec* iov;
  int iovcnt;
  int i;      /* The entry of the next byte... */
  size_t off; /* ...and where in it. */
  size_t srv; /* Its server offset. */
};

/* Moves to server offset `until`: as output entries in `out` (emit), or passing them (a replaced
 * run). Returns 0 if `out` is full. */
static int walk_to(struct walk* w, size_t until, int emit, struct iovec* out, int* n, int max_out) {
  while (w->srv < until && w->i < w->iovcnt) {
    const size_t avail = w->iov[w->i].iov_len - w->off;
    if (avail == 0) {
      ++w->i;
      w->off = 0;
      continue;
    }
    const size_t take = avail < until - w->srv ? avail : until - w->srv;
    if (emit) {
      if (*n >= max_out) return 0;
      out[*n].iov_base = (char*)w->iov[w->i].iov_base + w->off;
      out[*n].iov_len = take;
      ++*n;
    }
    w->off += take;
    w->srv += take;
  }
  return 1;
}

int hr_http_output(const struct iovec* iov, int iovcnt, size_t offer, const struct hr_edit* edits, int nedits,
                   struct iovec* out, int max_out) {
  struct walk w = {iov, iovcnt, 0, 0, 0};
  int n = 0;
  for (int e = 0; e < nedits; ++e) {
    if (!walk_to(&w, edits[e].pos, 1, out, &n, max_out) || n >= max_out) return -1;
    const char* literal = edits[e].kind == HR_EDIT_INSERT ? HR_HTTP_CLOSE_HEADER : HR_HTTP_CLOSE_TOKEN;
    out[n].iov_base = (char*)literal + edits[e].lit_off;
    out[n].iov_len = edits[e].len;
    ++n;
    if (edits[e].kind == HR_EDIT_REPLACE) walk_to(&w, edits[e].pos + edits[e].len, 0, out, &n, max_out);
  }
  if (!walk_to(&w, offer, 1, out, &n, max_out)) return -1;
  return n;
}
