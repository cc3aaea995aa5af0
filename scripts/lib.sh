#!/usr/bin/env bash
# Shared helpers for the scripts in scripts/. Source it; sourcing runs nothing by itself:
#
#   source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"
#
# Run directly, it calls one of its functions with `set -euo pipefail`:
#   scripts/lib.sh hr_install_deps      scripts/lib.sh hr_build -DHOTRESTART_TESTS=OFF
#
# It sets HR_ROOT (the repository root), HR_BUILD_DIR (from the environment, default
# $HR_ROOT/build; hr_set_build_dir changes it later) and HR_BIN ($HR_BUILD_DIR/bin), and never
# changes the caller's shell options or working directory.
#
#   hr_install_deps            install the Debian packages the project needs, if any is missing
#   hr_build [CMAKE ARGS...]   configure $HR_BUILD_DIR (RelWithDebInfo, -O2 -g1) and build it;
#                              HR_BUILD_TARGETS="a b" limits the build to those targets;
#                              HR_BUILD_FLAGS replaces "-O2 -g1 -DNDEBUG"
#   hr_wait_for CMD TIMEOUT_S  run CMD (a string, eval'd) until it succeeds; 1 after TIMEOUT_S
#   hr_sup_*                   start, query and stop one `hotrestart run` by pid and control socket
#   hr_wrk_lua PATH            write the wrk script that counts responses per version label

if [[ -n "${HR_LIB_SOURCED:-}" && "${BASH_SOURCE[0]}" != "$0" ]]; then return 0; fi
HR_LIB_SOURCED=1

HR_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HR_BUILD_DIR="${HR_BUILD_DIR:-$HR_ROOT/build}"
[[ "$HR_BUILD_DIR" == /* ]] || HR_BUILD_DIR="$HR_ROOT/$HR_BUILD_DIR"
HR_BIN="$HR_BUILD_DIR/bin"
HR_SUP_PID=""  # Set by hr_sup_start.

# Everything the project needs to build, test and benchmark, as Debian package names.
HR_DEPS=(
  build-essential cmake pkg-config dpkg-dev groff-base
  libuv1-dev libcereal-dev libcli11-dev doctest-dev libfmt-dev nlohmann-json3-dev
  libxxhash-dev libhttp-parser-dev libsystemd-dev nettle-dev
  clang libclang-rt-14-dev
  wrk curl ansible-core
  python3 python3-yaml nodejs nginx-light gunicorn lighttpd caddy
  prometheus
)
# Servers the tests run in the foreground themselves: their packages must not start them as
# system services when they are installed (nginx would take port 80).
HR_SERVICE_DEPS=(nginx-light gunicorn lighttpd caddy haproxy prometheus)

hr_log() { printf '==> %s\n' "$*" >&2; }
hr_warn() { printf 'warning: %s\n' "$*" >&2; }
hr_die() {
  printf 'error: %s\n' "$*" >&2
  exit 1
}

# hr_join SEP ITEMS...: prints the items separated by SEP.
hr_join() {
  local sep="$1" out=""
  shift
  (($# > 0)) || return 0
  out="$1"
  shift
  local item
  for item in "$@"; do out+="$sep$item"; done
  printf '%s\n' "$out"
}

# ---------------------------------------------------------------------------------------------
# Dependencies and build

# Prints the packages of HR_DEPS (or of the arguments) that are not installed, one per line.
hr_missing_deps() {
  local pkg status
  (($# > 0)) || set -- "${HR_DEPS[@]}"
  for pkg in "$@"; do
    status="$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)"
    [[ "$status" == "install ok installed" ]] || printf '%s\n' "$pkg"
  done
}

# Installs whatever of HR_DEPS is missing; does nothing (and needs no privilege) when all is there.
# shellcheck disable=SC2120  # Arguments are optional.
hr_install_deps() {
  command -v dpkg-query >/dev/null 2>&1 || hr_die "dpkg-query not found: hr_install_deps supports Debian and Ubuntu only"
  local missing
  mapfile -t missing < <(hr_missing_deps "$@")
  if ((${#missing[@]} == 0)); then
    hr_log "dependencies: all ${#HR_DEPS[@]} packages are installed"
    return 0
  fi
  local -a sudo=()
  if ((EUID != 0)); then
    if command -v sudo >/dev/null 2>&1; then
      sudo=(sudo)
    else
      hr_die "missing packages: ${missing[*]}; installing them needs root, and sudo is not available." \
        "Run this as root, or install them: apt-get install ${missing[*]}"
    fi
  fi
  hr_log "installing missing packages: ${missing[*]}"
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q ||
    hr_die "apt-get update failed"
  # While a service package is installed, a policy-rc.d that refuses every start keeps its
  # maintainer scripts from starting it (invoke-rc.d and deb-systemd-invoke both ask it). One the
  # machine already has is left as it is.
  local policy="/usr/sbin/policy-rc.d" own_policy=0 pkg
  for pkg in "${missing[@]}"; do
    if [[ " ${HR_SERVICE_DEPS[*]} " == *" $pkg "* ]] && [[ ! -e "$policy" ]]; then
      printf '#!/bin/sh\n# hotrestart scripts/lib.sh: no service starts while test servers are installed\nexit 101\n' |
        "${sudo[@]}" tee "$policy" >/dev/null && "${sudo[@]}" chmod 755 "$policy" && own_policy=1
      break
    fi
  done
  local rc=0
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" || rc=$?
  if ((own_policy)); then "${sudo[@]}" rm -f "$policy"; fi
  ((rc == 0)) || hr_die "apt-get install failed for: ${missing[*]}"
  mapfile -t missing < <(hr_missing_deps "$@")
  ((${#missing[@]} == 0)) || hr_die "still missing after apt-get install: ${missing[*]}"
}

# Configures $HR_BUILD_DIR as RelWithDebInfo (extra arguments go to cmake's configure step) and
# builds it with one job per core. HR_BUILD_TARGETS (space separated) builds only those targets.
# shellcheck disable=SC2120  # Arguments are optional.
hr_build() {
  local -a targets=()
  if [[ -n "${HR_BUILD_TARGETS:-}" ]]; then
    local t
    for t in $HR_BUILD_TARGETS; do targets+=(--target "$t"); done
  fi
  local log
  log="$(mktemp)"
  hr_log "configuring $HR_BUILD_DIR"
  # Optimised, with line tables only (-g1): backtraces, perf and sanitizer reports name every
  # frame's function, file and line, and a whole build takes about a quarter less time than with
  # -g. For a debugger session, configure a build directory of its own with
  # -DCMAKE_BUILD_TYPE=Debug.
  local flags="${HR_BUILD_FLAGS:--O2 -g1 -DNDEBUG}"
  if ! cmake -S "$HR_ROOT" -B "$HR_BUILD_DIR" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="$flags" -DCMAKE_C_FLAGS_RELWITHDEBINFO="$flags" "$@" >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    hr_die "cmake configure failed"
  fi
  rm -f "$log"
  hr_log "building${HR_BUILD_TARGETS:+ $HR_BUILD_TARGETS} with -j$(nproc)"
  cmake --build "$HR_BUILD_DIR" -j"$(nproc)" "${targets[@]}" || hr_die "build failed"
}

# Points HR_BUILD_DIR and HR_BIN at another build directory (relative paths are taken from the
# repository root), e.g. `hr_set_build_dir build-asan` before `hr_build -DHOTRESTART_SANITIZE=ON`.
hr_set_build_dir() {
  HR_BUILD_DIR="$1"
  [[ "$HR_BUILD_DIR" == /* ]] || HR_BUILD_DIR="$HR_ROOT/$HR_BUILD_DIR"
  HR_BIN="$HR_BUILD_DIR/bin"
}

# Dies unless every named program exists in $HR_BIN.
hr_need_bins() {
  local b
  for b in "$@"; do
    [[ -x "$HR_BIN/$b" ]] || hr_die "$HR_BIN/$b is missing: build it first (scripts/lib.sh: hr_build)"
  done
}

# ---------------------------------------------------------------------------------------------
# Time and bounded waits

# Milliseconds since the epoch, without forking.
hr_now_ms() {
  local t="${EPOCHREALTIME//[.,]/}"
  printf '%s\n' $((t / 1000))
}

# Converts seconds (integer or decimal, "1.5") to integer milliseconds.
hr_seconds_to_ms() {
  awk -v s="$1" 'BEGIN { if (s !~ /^[0-9]+(\.[0-9]+)?$/) exit 1; printf "%d\n", s * 1000 + 0.5 }' ||
    hr_die "not a number of seconds: '$1'"
}

# hr_wait_for CMD TIMEOUT_S [INTERVAL_S]: evaluates CMD (a string, so it may use functions,
# pipes and redirections) every INTERVAL_S (default 0.1) until it exits 0, for at most TIMEOUT_S.
# Returns 0 as soon as CMD succeeds, 1 when the time is up. CMD's output is discarded.
hr_wait_for() {
  local cmd="$1" timeout_ms interval="${3:-0.1}" deadline
  timeout_ms="$(hr_seconds_to_ms "${2:?hr_wait_for: CMD TIMEOUT_S}")"
  deadline=$(($(hr_now_ms) + timeout_ms))
  while true; do
    if eval "$cmd" >/dev/null 2>&1; then return 0; fi
    (($(hr_now_ms) < deadline)) || return 1
    sleep "$interval"
  done
}

# Sleeps until the given epoch millisecond (returns at once if it has passed).
hr_sleep_until_ms() {
  local left=$(($1 - $(hr_now_ms)))
  ((left > 0)) || return 0
  sleep "$(awk -v ms="$left" 'BEGIN { printf "%.3f\n", ms / 1000 }')"
}

# ---------------------------------------------------------------------------------------------
# Processes, by pid only

hr_alive() { [[ -n "${1:-}" ]] && kill -0 "$1" 2>/dev/null; }

# Prints the pids whose parent is PID (read from /proc, no procps needed).
hr_children() {
  local stat rest ppid pid
  for stat in /proc/[0-9]*/stat; do
    { IFS= read -r rest <"$stat"; } 2>/dev/null || continue  # The process may have just exited.
    pid="${rest%% *}"
    rest="${rest##*) }"  # Skip "pid (comm) "; comm may contain spaces and parentheses.
    ppid="$(cut -d' ' -f2 <<<"$rest")"
    [[ "$ppid" == "$1" ]] && printf '%s\n' "$pid"
  done
  return 0
}

# hr_wait_exit PID TIMEOUT_S: waits until PID is gone (reaps it when it is our child).
hr_wait_exit() {
  hr_wait_for "! kill -0 $1" "$2" 0.05 || return 1
  wait "$1" 2>/dev/null || true
  return 0
}

# ---------------------------------------------------------------------------------------------
# One supervisor: started, queried and stopped through its pid and its own control socket.

# hr_sup_start CONTROL LOG [RUN OPTIONS...] -- COMMAND [ARGS...]
# Starts `hotrestart run --control CONTROL RUN OPTIONS -- COMMAND` in the background with its
# stderr in LOG, sets HR_SUP_PID, and waits (up to HR_SUP_START_TIMEOUT, default 15 s) until its
# first generation is ready. Returns 1 (supervisor stopped, LOG printed) if it does not get there.
hr_sup_start() {
  local control="$1" log="$2"
  shift 2
  hr_need_bins hotrestart
  # The release history goes beside the control socket, never into the user's own state directory.
  "$HR_BIN/hotrestart" run --control "$control" --state-dir "${control%.sock}.state" "$@" </dev/null >>"$log" 2>&1 &
  HR_SUP_PID=$!
  if ! hr_wait_for "hr_sup_ready '$control'" "${HR_SUP_START_TIMEOUT:-15}"; then
    hr_warn "supervisor pid $HR_SUP_PID did not report a ready generation; its log:"
    sed 's/^/    /' "$log" >&2
    hr_sup_stop "$HR_SUP_PID" "$control" 5
    return 1
  fi
}

# Prints `hotrestart status --json` (fails when the supervisor does not answer within 5 s).
hr_sup_status_json() { timeout 5 "$HR_BIN/hotrestart" status --control "$1" --json 2>/dev/null; }

# True when the active generation is ready and no upgrade is running.
hr_sup_ready() {
  local s
  s="$(hr_sup_status_json "$1")" || return 1
  grep -q '"state": "ready"' <<<"$s" && grep -q '"upgrade": null' <<<"$s"
}

# hr_sup_address CONTROL [LISTENER NAME]: prints HOST:PORT of the named (default: first) listener.
hr_sup_address() {
  local s
  s="$(hr_sup_status_json "$1")" || return 1
  awk -v want="${2:-}" '
    /"listeners": \[/ { inside = 1 }
    inside && /"address":/ { gsub(/.*"address": "|".*/, ""); addr = $0 }
    inside && /"name":/ { gsub(/.*"name": "|".*/, ""); name = $0 }
    inside && /^    }/ { if (want == "" || want == name) { print addr; found = 1; exit } }
    END { exit found ? 0 : 1 }' <<<"$s"
}

# hr_sup_counter CONTROL NAME: prints one of .counters (upgrades_done, upgrades_rolled_back, ...).
hr_sup_counter() {
  local s
  s="$(hr_sup_status_json "$1")" || return 1
  sed -n "s/^ *\"$2\": \([0-9][0-9]*\),\{0,1\}$/\1/p" <<<"$s" | head -n1 | grep .
}

# Prints how many generations are running (active, candidate and old ones still draining).
hr_sup_generation_count() {
  local s
  s="$(hr_sup_status_json "$1")" || return 1
  grep -c '"role": "' <<<"$s" || true
}

# Prints the pids of the running generations, one per line.
hr_sup_worker_pids() {
  local s
  s="$(hr_sup_status_json "$1")" || return 1
  awk '/"generations": \[/ { g = 1 } g && /^  \]/ { g = 0 }
       g && /^      "pid": / { gsub(/[^0-9]/, ""); print }' <<<"$s"
}

# hr_sup_stop PID CONTROL [TIMEOUT_S]: stops the supervisor PID gracefully (`hotrestart stop`),
# then with SIGTERM, then SIGKILL (and SIGKILL to the workers it leaves behind). Only these pids.
hr_sup_stop() {
  local pid="$1" control="$2" t="${3:-15}" workers
  hr_alive "$pid" || {
    wait "$pid" 2>/dev/null || true
    return 0
  }
  workers="$(hr_children "$pid")"
  timeout "$t" "$HR_BIN/hotrestart" stop --control "$control" >/dev/null 2>&1 || true
  hr_wait_exit "$pid" 2 && return 0
  hr_warn "supervisor pid $pid did not stop through its control socket; sending SIGTERM"
  workers="$workers $(hr_children "$pid")"
  kill -TERM "$pid" 2>/dev/null || true
  hr_wait_exit "$pid" "$t" && return 0
  hr_warn "supervisor pid $pid ignored SIGTERM; sending SIGKILL to it and its workers: ${workers//$'\n'/ }"
  kill -KILL "$pid" 2>/dev/null || true
  local w
  for w in $workers; do kill -KILL "$w" 2>/dev/null || true; done
  hr_wait_exit "$pid" 5 || true
}

# ---------------------------------------------------------------------------------------------
# wrk

# hr_wrk_lua PATH: writes a wrk script that counts, over all threads, the responses per version
# label (the `version=LABEL` in hello-server's body) and the non-2xx responses, and prints, at the
# end, lines "HR KEY VALUE" (see hr_wrk_get). Latencies are in microseconds.
hr_wrk_lua() {
  cat >"$1" <<'LUA'
-- Written by scripts/lib.sh (hr_wrk_lua). Each wrk thread has its own Lua state: response()
-- counts in the thread's globals, done() adds the threads' counts up.
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  versions = {}
  non2xx = 0
end

function response(status, headers, body)
  if status < 200 or status > 299 then non2xx = non2xx + 1 end
  local v = body and body:match("version=(%S+)") or nil
  if v == nil then v = "(none)" end
  versions[v] = (versions[v] or 0) + 1
end

function done(summary, latency, requests)
  local total = {}
  local bad = 0
  for _, t in ipairs(threads) do
    bad = bad + (t:get("non2xx") or 0)
    for label, n in pairs(t:get("versions") or {}) do
      total[label] = (total[label] or 0) + n
    end
  end
  local e = summary.errors
  io.write(string.format("HR requests %d\n", summary.requests))
  io.write(string.format("HR duration_us %d\n", summary.duration))
  io.write(string.format("HR bytes %d\n", summary.bytes))
  io.write(string.format("HR err_connect %d\nHR err_read %d\nHR err_write %d\nHR err_timeout %d\n",
                         e.connect, e.read, e.write, e.timeout))
  io.write(string.format("HR err_status %d\nHR non2xx %d\n", e.status, bad))
  io.write(string.format("HR lat_p50_us %d\nHR lat_p90_us %d\nHR lat_p99_us %d\nHR lat_p999_us %d\n",
                         latency:percentile(50), latency:percentile(90), latency:percentile(99),
                         latency:percentile(99.9)))
  io.write(string.format("HR lat_max_us %d\nHR lat_mean_us %d\n", latency.max, latency.mean))
  local labels = {}
  for label in pairs(total) do table.insert(labels, label) end
  table.sort(labels)
  for _, label in ipairs(labels) do
    io.write(string.format("HR version %s %d\n", label, total[label]))
  end
end
LUA
}

# hr_wrk_get FILE KEY: prints the value of "HR KEY VALUE" from wrk's output (0 when absent).
hr_wrk_get() {
  awk -v k="$2" '$1 == "HR" && $2 == k { print $3; found = 1; exit } END { if (!found) print 0 }' "$1"
}

# hr_wrk_versions FILE: prints "LABEL COUNT" per version label seen.
hr_wrk_versions() { awk '$1 == "HR" && $2 == "version" { print $3, $4 }' "$1"; }

# hr_wrk_socket_errors FILE: connect + read + write + timeout errors.
hr_wrk_socket_errors() {
  local k n=0
  for k in err_connect err_read err_write err_timeout; do n=$((n + $(hr_wrk_get "$1" "$k"))); done
  printf '%s\n' "$n"
}

# Formats microseconds as milliseconds with two decimals.
hr_us_to_ms() { awk -v us="$1" 'BEGIN { printf "%.2f ms\n", us / 1000 }'; }

# ---------------------------------------------------------------------------------------------
# Run directly (not sourced): scripts/lib.sh FUNCTION [ARGS...]
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  set -euo pipefail
  if (($# == 0)) || [[ "$1" != hr_* ]] || ! declare -F "$1" >/dev/null; then
    echo "usage: scripts/lib.sh FUNCTION [ARGS...], FUNCTION one of:" >&2
    declare -F | awk '$3 ~ /^hr_/ { print "  " $3 }' >&2
    exit 2
  fi
  "$@"
fi
