#!/usr/bin/env bash
# run.sh is what `make bench` runs: the repo's Go benchmarks, then the
# side-by-side MQTT runs of every target (mosquitto as the reference peer,
# Outpost's hub and edge as they land), with medians and ratios.
#
# Knobs (environment):
#   BENCH_REPS=5          rounds; each round runs every target once, in order
#   BENCH_COUNT=10000     messages per client per run (100k a run: ~5 s on a busy 2-core machine)
#   BENCH_CLIENTS=10 BENCH_INFLIGHT=64 BENCH_SIZE=256 BENCH_QOS=1
#   BENCH_GOTIME=1s       -benchtime of the Go benchmarks; BENCH_GO=0 skips them
#   BENCH_GOPKGS=./internal/...
#   BENCH_ONLY=regex      run only the targets whose name matches
#   BENCH_EXTRA_TARGETS='name=mqttload flags;name2=…'   servers already running,
#                         e.g. 'hub=--addr 127.0.0.1:8883 --tls --ca ca.pem --creds creds.jsonl'
#   BENCH_OUT=/tmp/outpost-bench/latest.md
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD

REPS=${BENCH_REPS:-5}
COUNT=${BENCH_COUNT:-10000}
CLIENTS=${BENCH_CLIENTS:-10}
INFLIGHT=${BENCH_INFLIGHT:-64}
SIZE=${BENCH_SIZE:-256}
QOS=${BENCH_QOS:-1}
OUT=${BENCH_OUT:-/tmp/outpost-bench/latest.md}

# ---------------------------------------------------------------------------
# Targets. One line each: NAME START_FUNCTION [ARGS...]
#
# THE HOOK for Outpost's hub and edge: add one line here, and its start
# function below. The contract of START_FUNCTION DIR [ARGS...]:
#   - DIR is a new empty directory for this one run: put the server's data,
#     certificates and logs there, so every run starts from nothing;
#   - start the server in the background with its stdin, stdout and stderr
#     redirected (it is called inside $(…), which would otherwise wait for it),
#     and write its pid to DIR/pid; the harness stops it with SIGTERM and
#     waits for it to exit;
#   - return once it accepts connections (poll, with a deadline);
#   - print the mqttload flags that reach it on stdout, e.g.
#       --addr 127.0.0.1:PORT --tls --ca DIR/ca.pem --servername localhost --creds DIR/creds.jsonl
#     where creds.jsonl holds one {"clientId","username","password"} a line
#     (SAS tokens for Outpost), at least BENCH_CLIENTS of them.
# The first two targets are the baselines the ratios are quoted against.
TARGETS=(
	"mosquitto-mem      start_mosquitto mem"
	"mosquitto-persist  start_mosquitto persist"
	"mosquitto-bridge   start_mosquitto bridge"
)
BASELINES=(mosquitto-mem mosquitto-persist)

start_mosquitto() { "$ROOT/bench/mosquitto.sh" start "$2" "$1"; }
# ---------------------------------------------------------------------------

log() { echo "bench: $*" >&2; }

# stop_target sends SIGTERM to DIR/pid and waits (polling: the server is not
# our child once its start function's subshell has returned).
stop_target() {
	local dir=$1 pid deadline
	[ -f "$dir/pid" ] || return 0
	pid=$(cat "$dir/pid")
	rm -f "$dir/pid"
	kill -TERM "$pid" 2>/dev/null || return 0
	deadline=$((SECONDS + 60))
	while kill -0 "$pid" 2>/dev/null; do
		if ((SECONDS >= deadline)); then
			log "pid $pid ignored SIGTERM for 60s; killing it"
			kill -KILL "$pid" 2>/dev/null || true
			return 1
		fi
		sleep 0.05
	done
}

WORK=$(mktemp -d "${TMPDIR:-/tmp}/outpost-bench.XXXXXX")
CURRENT=""
cleanup() {
	[ -n "$CURRENT" ] && stop_target "$CURRENT"
	rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

BENCH_QUIET=1 "$ROOT/bench/install.sh" >"$WORK/peer-version"
log "peer: $(cat "$WORK/peer-version")"

LOAD=$WORK/mqttload
go build -o "$LOAD" ./bench/mqttload

status=0

# --- Go benchmarks ------------------------------------------------------------
GOBENCH=$WORK/gobench.txt
if [ "${BENCH_GO:-1}" != 0 ]; then
	log "go benchmarks (${BENCH_GOPKGS:-./internal/...}, -benchtime ${BENCH_GOTIME:-1s})"
	# shellcheck disable=SC2086 # BENCH_GOPKGS is a list of patterns
	if ! go test -run '^$' -bench . -benchtime "${BENCH_GOTIME:-1s}" -timeout 5m ${BENCH_GOPKGS:-./internal/...} >"$GOBENCH" 2>&1; then
		log "go benchmarks failed (output follows)"
		status=1
	fi
	grep -E '^(Benchmark|FAIL|---|ok |panic)' "$GOBENCH" >&2 || true
else
	echo "(skipped: BENCH_GO=0)" >"$GOBENCH"
fi

# --- side-by-side MQTT runs ---------------------------------------------------
if [ -n "${BENCH_EXTRA_TARGETS:-}" ]; then
	IFS=';' read -ra extra <<<"$BENCH_EXTRA_TARGETS"
	for e in "${extra[@]}"; do
		[ -n "$e" ] && TARGETS+=("${e%%=*} external ${e#*=}")
	done
fi
# external FLAGS...: a server someone else runs; nothing to start or stop.
external() {
	shift
	echo "$*"
}

RESULTS=$WORK/results.jsonl
: >"$RESULTS"
load_flags=(--clients "$CLIENTS" --inflight "$INFLIGHT" --size "$SIZE" --qos "$QOS" --count "$COUNT" --json)
log "mqtt: ${#TARGETS[@]} targets x $REPS rounds; $CLIENTS clients, QoS $QOS, $SIZE B, $INFLIGHT in flight, $COUNT msgs/client"
for rep in $(seq "$REPS"); do
	for t in "${TARGETS[@]}"; do
		read -r name fn args <<<"$t"
		if [ -n "${BENCH_ONLY:-}" ] && ! [[ $name =~ $BENCH_ONLY ]]; then
			continue
		fi
		CURRENT="$WORK/run-$rep-$name"
		mkdir -p "$CURRENT"
		# shellcheck disable=SC2086 # args and flags are word lists
		if ! flags=$($fn "$CURRENT" $args); then
			log "$name: start failed"
			status=1
			stop_target "$CURRENT" || true
			CURRENT=""
			continue
		fi
		# shellcheck disable=SC2086
		if line=$("$LOAD" $flags "${load_flags[@]}" --label "$name"); then
			echo "$line" >>"$RESULTS"
			log "round $rep $name: $(sed -E 's/.*"msgsPerSec":([0-9]+).*"p50us":([0-9.]+).*"p99us":([0-9.]+).*/\1 msg\/s, p50 \2 us, p99 \3 us/' <<<"$line")"
		else
			log "$name: load run failed"
			status=1
		fi
		stop_target "$CURRENT" || status=1
		CURRENT=""
	done
done

# --- report ---------------------------------------------------------------------
mkdir -p "$(dirname "$OUT")"
{
	echo "# Outpost benchmarks"
	echo
	echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, $(go version | cut -d' ' -f3), $(cat "$WORK/peer-version")."
	echo
	echo "## MQTT publish, side by side"
	echo
	echo "$CLIENTS clients, QoS $QOS, $SIZE B payloads, $INFLIGHT PUBLISHes in flight per client, $COUNT messages per client per run;"
	echo "$REPS rounds alternating the targets. Medians over rounds; ratios are medians of per-round ratios of msg/s."
	echo
	if [ -s "$RESULTS" ]; then
		baseline_flags=()
		for b in "${BASELINES[@]}"; do baseline_flags+=(--baseline "$b"); done
		"$LOAD" summarize "${baseline_flags[@]}" <"$RESULTS" || status=1
	else
		echo "(no results)"
	fi
	echo
	echo "## Go benchmarks"
	echo
	echo '```'
	grep -vE '^(goos|goarch|cpu|PASS$|\?)' "$GOBENCH" || true
	echo '```'
	echo
	echo "## Raw MQTT results"
	echo
	echo '```'
	cat "$RESULTS"
	echo '```'
} >"$OUT"

sed -n '/^## MQTT/,/^## Go/p' "$OUT" | sed '$d'
log "full report: $OUT"
exit "$status"
