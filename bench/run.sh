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
#   BENCH_METHODS=1       direct method round trips (outpost hub vs a raw MQTT
#                         request/response through mosquitto); 0 skips them
#   BENCH_METHOD_CALLS=1000  calls per run, one after another
#   BENCH_DRAIN=1         the edge drain scenario (100k backlog); 0 skips it
#   BENCH_DRAIN_REPS=3    drain rounds
#   BENCH_DRAIN_1M=1      also drain a 1M backlog (one round; ~4 min more)
#   BENCH_DRAIN_READER=1  also time the drains by a reader of the hub's events
#                         running during them (the old method; slows them)
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
	"mosquitto-tls      start_mosquitto tls"
	"outpost-hub        start_outpost_hub"
	"outpost-edge       start_outpost_edge"
)
BASELINES=(mosquitto-mem mosquitto-persist)
# Each Outpost target against the peer that does the same job: the hub
# (TLS, in-memory-ish ack: JetStream without fsync) against mosquitto with
# and without TLS; the offline edge (fsync before the ack) against
# mosquitto queueing for a bridge whose upstream is down.
PAIRS=(outpost-hub=mosquitto-mem outpost-hub=mosquitto-tls outpost-edge=mosquitto-bridge)

start_mosquitto() { "$ROOT/bench/mosquitto.sh" start "$2" "$1"; }

# wait_line FILE REGEX PID SECONDS: poll until a line of FILE matches, or
# the process exits, or the deadline passes.
wait_line() {
	local file=$1 re=$2 pid=$3 deadline=$((SECONDS + $4))
	until grep -qE "$re" "$file" 2>/dev/null; do
		if ! kill -0 "$pid" 2>/dev/null; then
			log "pid $pid exited before printing /$re/; its output:"
			tail -20 "$file" >&2
			return 1
		fi
		if ((SECONDS >= deadline)); then
			log "no /$re/ in $file after $4 s"
			return 1
		fi
		sleep 0.05
	done
}

# start_hub DIR: an Outpost hub with its data in DIR/hub, on random ports;
# appends its pid to DIR/pid and prints its MQTT address.
start_hub() {
	local dir=$1 pid
	mkdir -p "$dir/hub"
	"$OUTPOST" hub --data-dir "$dir/hub" --https-addr 127.0.0.1:0 --mqtt-addr 127.0.0.1:0 --edge-loopback-names \
		</dev/null >"$dir/hub.out" 2>"$dir/hub.log" &
	pid=$!
	echo "$pid" >>"$dir/pid"
	wait_line "$dir/hub.out" '^hub ready: ' "$pid" 60 || return 1
	sed -n 's/^hub ready: https=[^ ]* mqtt=//p' "$dir/hub.out"
}

# start_outpost_hub DIR: the hub, with BENCH_CLIENTS devices created
# through its service REST API and their SAS tokens in DIR/creds.jsonl.
start_outpost_hub() {
	local dir=$1 mqtt
	mqtt=$(start_hub "$dir") || return 1
	"$BENCHTOOL" provision-hub --hub-dir "$dir/hub" --devices "$CLIENTS" --out "$dir/creds.jsonl" >&2 || return 1
	echo "--addr $mqtt --tls --ca $dir/hub/ca.pem --servername localhost --creds $dir/creds.jsonl"
}

# start_outpost_edge DIR: an offline edge with BENCH_CLIENTS children. The
# edge refuses to serve before its first sync, so it starts once against a
# hub, syncs, and stops; the hub stops too, and the edge restarts with its
# upstream on a port nothing listens on, as mosquitto-bridge's is. The
# children's tokens name the hub (HostName) and are checked by the edge
# from its offline identity cache; its server certificate chains to the
# hub's CA.
start_outpost_edge() {
	local dir=$1 mqtt pid closed
	mqtt=$(start_hub "$dir") || return 1
	"$BENCHTOOL" provision-edge --hub-dir "$dir/hub" --edge-id edge1 --children "$CLIENTS" \
		--out "$dir/creds.jsonl" --edge-cs "$dir/edge.cs" >&2 || return 1
	local args=(edge --connection-string "$(cat "$dir/edge.cs")"
		--storage-folder "$dir/edge/storage" --state-dir "$dir/edge/state"
		--hub-ca "$dir/hub/ca.pem" --hostname localhost
		--mqtt-addr 127.0.0.1:0 --https-addr 127.0.0.1:0)
	mkdir -p "$dir/edge"
	"$OUTPOST" "${args[@]}" --upstream-addr "$mqtt" </dev/null >"$dir/edge.sync.out" 2>&1 &
	pid=$!
	echo "$pid" >>"$dir/pid"
	wait_line "$dir/edge.sync.out" '^edge ready: ' "$pid" 120 || return 1
	stop_target "$dir" || return 1 # the edge, then the hub
	closed=$("$ROOT/bench/mosquitto.sh" free-port)
	"$OUTPOST" "${args[@]}" --upstream-addr "127.0.0.1:$closed" </dev/null >"$dir/edge.out" 2>&1 &
	pid=$!
	echo "$pid" >>"$dir/pid"
	wait_line "$dir/edge.out" '^edge ready: ' "$pid" 60 || return 1
	mqtt=$(sed -n 's/^edge ready: mqtt=\([^ ]*\) .*/\1/p' "$dir/edge.out")
	echo "--addr $mqtt --tls --ca $dir/hub/ca.pem --servername localhost --creds $dir/creds.jsonl"
}
# ---------------------------------------------------------------------------

log() { echo "bench: $*" >&2; }

# stop_target sends SIGTERM to the pids in DIR/pid, last started first, and
# waits for each (polling: a server is not our child once its start
# function's subshell has returned).
stop_target() {
	local dir=$1 pid deadline rc=0
	[ -f "$dir/pid" ] || return 0
	local pids
	pids=$(tac "$dir/pid")
	rm -f "$dir/pid"
	for pid in $pids; do
		kill -TERM "$pid" 2>/dev/null || continue
		deadline=$((SECONDS + 60))
		while kill -0 "$pid" 2>/dev/null; do
			if ((SECONDS >= deadline)); then
				log "pid $pid ignored SIGTERM for 60s; killing it"
				kill -KILL "$pid" 2>/dev/null || true
				rc=1
				break
			fi
			sleep 0.05
		done
	done
	return "$rc"
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

# Outpost, built once. Without it (other work in the tree may not build)
# the Outpost targets are skipped and the run fails.
OUTPOST=$WORK/outpost
BENCHTOOL=$WORK/outpostbench
have_outpost=1
if ! go build -o "$OUTPOST" ./cmd/outpost || ! go build -o "$BENCHTOOL" ./bench/outpostbench; then
	log "outpost does not build: skipping the Outpost targets"
	have_outpost=0
	status=1
fi
# Certificates for mosquitto's TLS listener (mosquitto-tls and the method
# peer), from the same code as the hub's.
export MOSQUITTO_CERT_DIR=$WORK/certs
if ((have_outpost)) && ! "$BENCHTOOL" certs --dir "$MOSQUITTO_CERT_DIR"; then
	have_outpost=0
	status=1
fi

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
		if ((!have_outpost)) && [[ $fn == start_outpost* || $args == tls ]]; then
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

# --- direct methods ---------------------------------------------------------------
# Outpost: POST /twins/{d}/methods → hub → device (internal/client) → back.
# Its peer: a raw MQTT request/response through mosquitto over TLS, with
# the same client on both ends. One call at a time; rounds alternate.
RTT=$WORK/rtt.jsonl
: >"$RTT"
if ((have_outpost)) && [ "${BENCH_METHODS:-1}" != 0 ]; then
	calls=${BENCH_METHOD_CALLS:-1000}
	log "methods: $REPS rounds x $calls calls"
	for rep in $(seq "$REPS"); do
		CURRENT="$WORK/methods-$rep"
		mkdir -p "$CURRENT"
		if mqtt=$(start_hub "$CURRENT") &&
			line=$("$BENCHTOOL" methods --hub-dir "$CURRENT/hub" --mqtt-addr "$mqtt" --calls "$calls"); then
			echo "$line" >>"$RTT"
			log "round $rep outpost-method: $line"
		else
			log "outpost-method failed"
			status=1
		fi
		stop_target "$CURRENT" || status=1
		CURRENT="$WORK/rtt-$rep"
		mkdir -p "$CURRENT"
		if flags=$(start_mosquitto "$CURRENT" tls) &&
			line=$("$BENCHTOOL" mqtt-rtt --addr "$(sed -E 's/.*--addr ([^ ]+).*/\1/' <<<"$flags")" \
				--ca "$MOSQUITTO_CERT_DIR/ca.pem" --calls "$calls"); then
			echo "$line" >>"$RTT"
			log "round $rep mosquitto-rtt: $line"
		else
			log "mosquitto-rtt failed"
			status=1
		fi
		stop_target "$CURRENT" || status=1
		CURRENT=""
	done
fi

# --- edge drain ---------------------------------------------------------------------
# outpostbench drain owns its hub, edge and a cuttable proxy for the
# edge's upstream: offline ingest of the backlog, kill -9 and restart, then
# the link returns and the hub's stored count is polled to the last message;
# then the events are read from the start, and the hub's ingest of as many
# messages over one connection is measured, the drain's peer.
DRAIN=$WORK/drain.jsonl
: >"$DRAIN"
if ((have_outpost)) && [ "${BENCH_DRAIN:-1}" != 0 ]; then
	runs=()
	for _ in $(seq "${BENCH_DRAIN_REPS:-3}"); do runs+=(100000); done
	[ "${BENCH_DRAIN_1M:-0}" = 1 ] && runs+=(1000000)
	drain_flags=()
	[ "${BENCH_DRAIN_READER:-0}" = 1 ] && drain_flags+=(--reader-timed)
	i=0
	for backlog in "${runs[@]}"; do
		i=$((i + 1))
		log "drain $i/${#runs[@]}: $backlog messages"
		mkdir -p "$WORK/drain-$i"
		if line=$("$BENCHTOOL" drain --outpost "$OUTPOST" --mqttload "$LOAD" --dir "$WORK/drain-$i" \
			--backlog "$backlog" --children "$CLIENTS" "${drain_flags[@]}"); then
			echo "$line" >>"$DRAIN"
			log "drain $i: $line"
		else
			log "drain $i failed; logs: $(ls "$WORK/drain-$i"/*.out* 2>/dev/null | tr '\n' ' ')"
			tail -5 "$WORK/drain-$i"/*.out* >&2 2>/dev/null || true
			status=1
		fi
	done
fi

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
		for p in "${PAIRS[@]}"; do baseline_flags+=(--pair "$p"); done
		"$LOAD" summarize "${baseline_flags[@]}" <"$RESULTS" || status=1
	else
		echo "(no results)"
	fi
	echo
	if [ -s "$RTT" ]; then
		echo "## Direct method round trip"
		echo
		echo "One call at a time, 256 B JSON payload each way; medians over rounds of each run's p50 and p99;"
		echo "ratios are medians of per-round ratios."
		echo
		"$BENCHTOOL" summarize-rtt --peer mosquitto-rtt <"$RTT" || status=1
		echo
	fi
	if [ -s "$DRAIN" ]; then
		echo "## Edge offline ingest, kill -9, drain"
		echo
		echo "$CLIENTS children, QoS 1, 256 B, 64 in flight; medians over rounds. Transfer: link up → the hub"
		echo "stores the last message, no event reader running. Peer: the hub's ingest of as many messages"
		echo "over one connection (1 device, 64 in flight), right after each drain; × is the median of"
		echo "per-round ratios."
		echo
		"$BENCHTOOL" summarize-drain <"$DRAIN" || status=1
		echo
	fi
	echo "## Go benchmarks"
	echo
	echo '```'
	grep -vE '^(goos|goarch|cpu|PASS$|\?)' "$GOBENCH" || true
	echo '```'
	echo
	echo "## Raw results"
	echo
	echo '```'
	cat "$RESULTS" "$RTT" "$DRAIN"
	echo '```'
} >"$OUT"

sed -n '/^## MQTT/,/^## Go/p' "$OUT" | sed '$d'
log "full report: $OUT"
exit "$status"
