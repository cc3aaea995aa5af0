# bash completion for hotrestart(1). Installed as share/bash-completion/completions/hotrestart,
# where bash-completion loads it on first use; or source it from ~/.bashrc. It needs nothing from
# bash-completion itself. tests/cli/check-completion checks that it offers every flag of every
# command's --help.
# shellcheck shell=bash

_hotrestart_commands="run upgrade rollback promote abort history events status stop reload config version"
_hotrestart_common="--name --control --help"

# The flags of one command, after the common ones.
_hotrestart_flags() {
  case "$1" in
    run)
      echo "$_hotrestart_common --listen --ready --ready-timeout --min-ready --drain-signal --drain-timeout" \
        "--state-timeout --state-dir --event-log-size --state-required --watch-window --no-park --max-draining" \
        "--watchdog --health --health-interval --health-failures --adopt-binds --no-http-drain --preflight" \
        "--preflight-timeout --log-level --log-format --metrics --env --env-file --clear-env --chdir --fdstore" \
        "--config --reload-timeout --watch-config --config-check --reload-signal"
      ;;
    upgrade) echo "$_hotrestart_common --exec --hold --preflight --json --wait --force --self" ;;
    rollback) echo "$_hotrestart_common --to --hold --preflight --json --wait" ;;
    promote | abort) echo "$_hotrestart_common" ;;
    stop) echo "$_hotrestart_common --no-wait" ;;
    history) echo "$_hotrestart_common --json" ;;
    events) echo "$_hotrestart_common --last --follow --json" ;;
    status) echo "$_hotrestart_common --json --check" ;;
    reload) echo "$_hotrestart_common --file --json" ;;
    # config's own subcommands, and their flags.
    config) echo "$_hotrestart_common history show diff rollback --config --json" ;;
    version) echo "--help" ;;
  esac
}

# The names of the supervisors whose control sockets exist where `hotrestart` looks for them.
_hotrestart_names() {
  local dir sock
  for dir in ${RUNTIME_DIRECTORY:+"${RUNTIME_DIRECTORY%%:*}"} /run/hotrestart \
    ${XDG_RUNTIME_DIR:+"$XDG_RUNTIME_DIR/hotrestart"} "/tmp/hotrestart-$(id -u)"; do
    for sock in "$dir"/*.sock; do
      [[ -S "$sock" ]] || continue
      sock="${sock##*/}"
      echo "${sock%.sock}"
    done
  done
}

_hotrestart() {
  local cur="${COMP_WORDS[COMP_CWORD]}" prev=""
  ((COMP_CWORD > 0)) && prev="${COMP_WORDS[COMP_CWORD - 1]}"
  COMPREPLY=()
  # The command is the first word that is not a flag; after `--` comes a program and its arguments.
  local command="" i
  for ((i = 1; i < COMP_CWORD; i++)); do
    if [[ "${COMP_WORDS[i]}" == "--" ]]; then
      if ((i == COMP_CWORD - 1)); then
        mapfile -t COMPREPLY < <(compgen -A command -f -- "$cur")
      else
        mapfile -t COMPREPLY < <(compgen -f -- "$cur")
      fi
      return 0
    fi
    if [[ -z "$command" && "${COMP_WORDS[i]}" != -* ]]; then command="${COMP_WORDS[i]}"; fi
  done
  if [[ -z "$command" ]]; then
    mapfile -t COMPREPLY < <(compgen -W "$_hotrestart_commands --help --version" -- "$cur")
    return 0
  fi
  # The values of the flags that take one.
  case "$prev" in
    --name)
      mapfile -t COMPREPLY < <(compgen -W "$(_hotrestart_names)" -- "$cur")
      return 0
      ;;
    --control | --exec | --state-dir | --env-file | --file)
      mapfile -t COMPREPLY < <(compgen -f -- "$cur")
      return 0
      ;;
    --ready) mapfile -t COMPREPLY < <(compgen -W "notify exec: delay:" -- "$cur") && return 0 ;;
    --hold) mapfile -t COMPREPLY < <(compgen -W "manual 30s 5m" -- "$cur") && return 0 ;;
    --drain-signal | --reload-signal) mapfile -t COMPREPLY < <(compgen -W "SIGTERM SIGQUIT SIGINT SIGHUP SIGUSR1 SIGWINCH" -- "$cur") && return 0 ;;
    --drain-timeout) mapfile -t COMPREPLY < <(compgen -W "30s 1m infinity" -- "$cur") && return 0 ;;
    --log-level) mapfile -t COMPREPLY < <(compgen -W "debug info warning error" -- "$cur") && return 0 ;;
    --log-format) mapfile -t COMPREPLY < <(compgen -W "auto text journal json" -- "$cur") && return 0 ;;
    --chdir) mapfile -t COMPREPLY < <(compgen -d -- "$cur") && return 0 ;;
    --metrics) mapfile -t COMPREPLY < <(compgen -W "tcp://127.0.0.1: unix:" -- "$cur") && compopt -o nospace 2>/dev/null; return 0 ;;
    --listen) mapfile -t COMPREPLY < <(compgen -W "tcp:// unix:" -- "$cur") && compopt -o nospace 2>/dev/null; return 0 ;;
    --ready-timeout | --min-ready | --state-timeout | --watch-window | --watchdog | --health | --health-interval | \
      --health-failures | --preflight | --preflight-timeout | --max-draining | --event-log-size | --state-required | \
      --to | --last | -n | --env | --config | --reload-timeout | --config-check)
      return 0
      ;;
  esac
  mapfile -t COMPREPLY < <(compgen -W "$(_hotrestart_flags "$command")" -- "$cur")
  return 0
}

complete -F _hotrestart hotrestart
