# Shared by the crashcart helper commands (bash). Sourced, not run.
# shellcheck shell=bash disable=SC2034  # PID and SHIFT are read by the helpers
. /dev/crashcart/.crashcart/env.sh

# cc_help "$@": print usage() and exit when asked for help.
cc_help() {
    case "${1:-}" in
        -h|--help) usage; exit 0 ;;
    esac
}

cc_die() {
    echo "${0##*/}: $*" >&2
    exit 2
}

# cc_is_pid ARG: true when ARG looks like a PID.
cc_is_pid() {
    [[ ${1:-} =~ ^[0-9]+$ ]]
}

# cc_check_pid PID: the PID must name a process in *this* pid namespace, which is the
# target's (session mode joins it; docker exec runs in it). A host PID means nothing here.
cc_check_pid() {
    cc_is_pid "$1" || cc_die "not a PID: $1"
    [ -d "/proc/$1" ] || cc_die "no process $1 in the target's pid namespace" \
        "(PIDs are the target's own, as 'ps' shows them here; the main process is" \
        "$CRASHCART_TARGET_PID; host PIDs do not apply)"
}

# cc_pid_arg "$@": sets PID to the first argument when it is a PID (and SHIFT=1), else to
# the target's main process (SHIFT=0).
cc_pid_arg() {
    if cc_is_pid "${1:-}"; then
        PID=$1
        SHIFT=1
    else
        PID=$CRASHCART_TARGET_PID
        SHIFT=0
    fi
    cc_check_pid "$PID"
}

cc_pid_usage() {
    cat <<USAGE
PID is as seen inside the target's pid namespace (what 'ps' shows in this shell); the
default is \$CRASHCART_TARGET_PID ($CRASHCART_TARGET_PID), the target's main process.
Host PIDs do not apply here.
USAGE
}
