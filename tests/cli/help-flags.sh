# shellcheck shell=bash
# Sourced by the checks in tests/cli: reads the commands and flags from hotrestart's own --help, so
# that what they check follows the binary.

# hr_commands BIN: each command, one a line, from the list in `BIN --help`.
hr_commands() {
  "$1" --help | awk '/^Subcommands:/ { on = 1; next } on && /^  [a-z]/ { print $1 } on && /^$/ { exit }'
}

# hr_long_flags BIN COMMAND: each long flag COMMAND's --help shows, one a line. Only the name column
# of each option row is read, never the flags its description mentions.
hr_long_flags() {
  "$1" "$2" --help | grep -E '^  -' | cut -c1-32 | grep -oE -- '--[a-z][a-z-]*' | sort -u
}
