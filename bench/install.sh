#!/usr/bin/env bash
# install.sh installs the benchmark peers (mosquitto, and its clients for
# bench/killtest.sh) from Debian's packages. It is idempotent: apt is only
# touched when something is missing, so `make bench` stays fast on a machine
# that already has them.
set -euo pipefail

pkgs=(mosquitto mosquitto-clients)

missing=()
for p in "${pkgs[@]}"; do
	if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
		missing+=("$p")
	fi
done

if ((${#missing[@]})); then
	SUDO=()
	if [ "$(id -u)" -ne 0 ]; then
		if command -v sudo >/dev/null; then
			SUDO=(sudo)
		else
			echo "install.sh: need root or sudo to install: ${missing[*]}" >&2
			exit 1
		fi
	fi
	echo "install.sh: installing ${missing[*]}" >&2
	"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
	"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The Debian package enables a system-wide mosquitto service; the benchmarks
# start their own instances on random ports, so a running system broker only
# steals CPU. It is left alone, but said out loud.
if pgrep -x mosquitto >/dev/null 2>&1 && [ -z "${BENCH_QUIET:-}" ]; then
	echo "install.sh: note: a mosquitto process is already running on this machine" >&2
fi

# `mosquitto -h` prints "mosquitto version X" and exits non-zero.
/usr/sbin/mosquitto -h 2>/dev/null | sed -n 's/^mosquitto version /mosquitto /p' | head -1 || true
