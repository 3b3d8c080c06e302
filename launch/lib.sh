# shellcheck shell=bash
# Helpers sourced by the launch scripts: errors, dry-run printing, required settings.
# Not run on its own.

DRY_RUN=0

die() {
  echo "error: $*" >&2
  exit 2
}

# Prints its arguments as one copy-pasteable shell command (quoting only where needed).
quote_cmd() {
  local out="" arg q="'"
  for arg in "$@"; do
    if [[ "$arg" =~ ^[A-Za-z0-9_./:=@,+%-]+$ ]]; then
      out+="$arg "
    elif [[ "$arg" =~ ^(--[A-Za-z0-9._-]+=)(.*)$ ]]; then
      local value="${BASH_REMATCH[2]}"
      out+="${BASH_REMATCH[1]}'${value//$q/$q\\$q$q}' "
    else
      out+="'${arg//$q/$q\\$q$q}' "
    fi
  done
  echo "${out% }"
}

# Runs a command, or only prints it with --dry-run. Real runs echo it to stderr first.
run() {
  if ((DRY_RUN)); then
    quote_cmd "$@"
  else
    echo "+ $(quote_cmd "$@")" >&2
    "$@"
  fi
}

# require VALUE FLAG ENVVAR: fails naming both ways to give a setting that has no default.
require() {
  [[ -n "$1" ]] || die "missing $2 (or set \$$3). See --help."
}

# need_value FLAG "$#": an option that takes a value must have one.
need_value() {
  (($2 >= 2)) || die "$1 needs a value. See --help."
}

# Like run, but replaces the shell with the command so signals (SIGTERM on preemption) reach it.
run_exec() {
  if ((DRY_RUN)); then
    quote_cmd "$@"
    exit 0
  fi
  echo "+ $(quote_cmd "$@")" >&2
  exec "$@"
}

# Prints the comment block at the top of a script (its --help).
print_header() {
  sed -n '2,/^set -euo pipefail/p' "$1" | sed '$d' | sed 's/^# \{0,1\}//'
}
