#!/bin/sh
# Docker HEALTHCHECK of tor2influxdb2 (POSIX sh: runs under busybox sh, dash, bash).
#
# The daemon rewrites its health file after every cycle:
#   OK <unix-seconds>                   the cycle polled every tor and delivered the points
#   FAILED <unix-seconds> <reason>      anything else
# This script is healthy (exit 0) only when the file says OK AND was written within the last
# 3 periods (3 x RUN_EVERY_SECONDS), so a daemon that hangs or is frozen turns unhealthy even though
# its last word was OK. It prints one line saying why; Docker keeps it in `docker inspect`
# (.State.Health.Log). Exit 1 otherwise (Docker reserves 2).
#
# Environment (the container's own, which Docker passes to the probe):
#   HEALTHCHECK_FILE   the health file (default /healthcheck)
#   RUN_EVERY_SECONDS  the daemon's period in seconds (default 10; a fraction is rounded up)

file=${HEALTHCHECK_FILE:-/healthcheck}
period=${RUN_EVERY_SECONDS:-10}

unhealthy() {
    echo "UNHEALTHY: $*"
    exit 1
}

# Period in whole seconds, rounded up ("2.5" -> 3).
case $period in
    *[!0-9.]* | *.*.* | . | '') unhealthy "RUN_EVERY_SECONDS='$period' is not a number of seconds" ;;
esac
whole=${period%%.*}
whole=${whole:-0}
case $period in
    *.*[1-9]*) whole=$((whole + 1)) ;;
esac
# Strip leading zeros so $(( )) does not read the number as octal.
while :; do
    case $whole in 0?*) whole=${whole#0} ;; *) break ;; esac
done
[ "$whole" -gt 0 ] || unhealthy "RUN_EVERY_SECONDS='$period' must be above 0"
limit=$((3 * whole))

[ -e "$file" ] || unhealthy "no health file $file yet (the daemon has not finished a cycle, or writes elsewhere)"
[ -r "$file" ] || unhealthy "health file $file is not readable"
line=
IFS= read -r line <"$file" || [ -n "$line" ] || unhealthy "health file $file is empty"

set -f
# shellcheck disable=SC2086 # split the line into words on purpose
set -- $line
status=${1:-}
stamp=${2:-}
[ $# -gt 0 ] && shift
[ $# -gt 0 ] && shift
reason=$*

stamp=${stamp%%.*}
case $stamp in
    '' | *[!0-9]*) unhealthy "health file $file says '$line': no unix time in it" ;;
esac
while :; do
    case $stamp in 0?*) stamp=${stamp#0} ;; *) break ;; esac
done

now=$(date +%s) || unhealthy "cannot read the clock"
age=$((now - stamp))

if [ "$age" -lt "-$limit" ]; then
    unhealthy "health file $file was written $((-age)) s in the future: the clock jumped"
fi
if [ "$age" -gt "$limit" ]; then
    unhealthy "last report ($status) is $age s old, more than 3 periods ($limit s): the daemon is hung or stopped"
fi
case $status in
    OK)
        echo "HEALTHY: OK $age s ago (stale after $limit s)"
        exit 0
        ;;
    FAILED)
        unhealthy "FAILED $age s ago: ${reason:-no reason given}"
        ;;
    *)
        unhealthy "health file $file says '$line' (neither OK nor FAILED)"
        ;;
esac
