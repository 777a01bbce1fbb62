#!/usr/bin/env bash
# killtest.sh measures what mosquitto keeps of a bridge backlog across a
# restart: the question an offline edge must answer with "everything".
#
#   killtest.sh [kill|term] [N]      (default: kill 1000)
#
# 1. mosquitto A runs with persistence and a bridge whose upstream is down;
# 2. N QoS 1 messages are published to A and acked, so they sit in the
#    bridge's queue;
# 3. A is stopped with SIGKILL (a crash, or a power cut) or SIGTERM (a clean
#    shutdown, which saves its db);
# 4. the upstream, mosquitto B, comes up with a persistent QoS 1
#    subscription, A restarts from its persistence dir, and its bridge
#    forwards what it still has;
# 5. a marker published to A after the restart queues behind the backlog,
#    so when B's subscriber sees it, everything that survived has arrived.
# Prints "SURVIVED/N". Needs bench/install.sh (mosquitto, mosquitto-clients).
#
# KILLTEST_A_CONF adds config lines to A (e.g. 'autosave_interval 1');
# KILLTEST_WAIT is how many seconds to wait between the last ack and the stop.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

how=${1:-kill}
n=${2:-1000}
case $how in kill | term) ;; *) echo "usage: killtest.sh [kill|term] [N]" >&2; exit 2 ;; esac
((n % 10 == 0)) || { echo "killtest.sh: N must be a multiple of 10 (10 clients)" >&2; exit 2; }

W=$(mktemp -d "${TMPDIR:-/tmp}/outpost-killtest.XXXXXX")
SUBPID=""
cleanup() {
	[ -n "$SUBPID" ] && kill "$SUBPID" 2>/dev/null
	"$ROOT/bench/mosquitto.sh" stop "$W/a" || true
	"$ROOT/bench/mosquitto.sh" stop "$W/b" || true
	rm -rf "$W"
}
trap cleanup EXIT

go build -o "$W/mqttload" ./bench/mqttload
up=$("$ROOT/bench/mosquitto.sh" free-port)

flags=$(MOSQUITTO_CONF_EXTRA=${KILLTEST_A_CONF:-} "$ROOT/bench/mosquitto.sh" start bridge "$W/a" "$up")
"$W/mqttload" $flags --clients 10 --count $((n / 10)) --inflight 64 --label "A" >&2
sleep "${KILLTEST_WAIT:-0}" # the experiment's variable, not a wait for a condition

if [ "$how" = kill ]; then
	"$ROOT/bench/mosquitto.sh" kill "$W/a"
else
	"$ROOT/bench/mosquitto.sh" stop "$W/a"
fi
echo "killtest: A stopped with SIG${how^^}; db: $(ls -l "$W/a/data" | tail -n +2 | awk '{print $5, $9}' | tr '\n' ' ')" >&2

# B: the upstream. Unlimited queue, so the subscriber's offline session
# can't drop anything either.
MOSQUITTO_PORT=$up MOSQUITTO_CONF_EXTRA=$'max_queued_messages 0\nmax_queued_bytes 0' \
	"$ROOT/bench/mosquitto.sh" start mem "$W/b" >/dev/null
# Register a persistent session and subscription, then resume it live: no
# message that B receives from here on can be missed, whenever the live
# subscriber gets connected.
mosquitto_sub -p "$up" -i killtest-sub -c -q 1 -t '#' -E
mosquitto_sub -p "$up" -i killtest-sub -c -q 1 -t '#' -v -W 120 >"$W/received" 2>&1 &
SUBPID=$!

aflags=$(MOSQUITTO_CONF_EXTRA=${KILLTEST_A_CONF:-} "$ROOT/bench/mosquitto.sh" start bridge "$W/a" "$up")
aport=${aflags##*:}
mosquitto_pub -p "$aport" -q 1 -t killtest/marker -m done

deadline=$((SECONDS + 90))
until grep -q '^killtest/marker done' "$W/received"; do
	if ((SECONDS >= deadline)); then
		echo "killtest: the marker never reached the upstream" >&2
		exit 1
	fi
	sleep 0.1
done
survived=$(grep -c '^devices/' "$W/received" || true)
echo "$survived/$n"
