#!/bin/sh
# fuzzsmoke fuzzes every Fuzz target of the module briefly: make test's
# smoke, on top of the seed corpora that go test runs as unit tests.
#
# `go test -fuzz` takes one target and rebuilds the instrumented test
# binary for each; here each package's is built once (go test -c -fuzz;
# links are not cached, and without symbols and DWARF cost a fifth less)
# and run once a target, two packages at a time. A binary runs in its
# package's directory, so a crasher is written to testdata/fuzz/<target>/
# there, to be kept in the corpus. The fuzz cache is fresh each run, so
# the time is bounded (make fuzz and make soak fuzz for minutes on the
# shared one).
#
# Usage: test/fuzzsmoke.sh [fuzztime]   (default 500ms a target)
set -eu
cd "$(dirname "$0")/.."
GO=${GO:-go}
FUZZTIME=${1:-500ms}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export GO FUZZTIME tmp

start=$(date +%s)
grep -rl --include='*_test.go' '^func Fuzz' . | xargs -n1 dirname | sort -u >"$tmp/dirs"
xargs -P 2 -n 1 sh -c '
	dir=$0
	name=$(printf %s "$dir" | tr -c "A-Za-z0-9\n" _)
	bin="$tmp/$name.test"
	"$GO" test -c -fuzz=. -ldflags="-s -w" -o "$bin" "$dir" || { echo "fuzz smoke: build $dir failed"; exit 1; }
	n=0
	for f in $(sed -n "s/^func \(Fuzz[A-Za-z0-9_]*\)(.*/\1/p" "$dir"/*_test.go); do
		log="$tmp/$name.$f.log"
		fuzz() {
			(cd "$dir" && "$bin" -test.run="^\$" -test.fuzz="^$f\$" -test.fuzztime="$FUZZTIME" \
				-test.fuzzcachedir="$tmp/cache" -test.parallel=1) >"$log" 2>&1
		}
		# On a loaded machine the fuzzing engine can fail a short run
		# with "context deadline exceeded" and no input: run it once more.
		rc=0
		fuzz || rc=$?
		if [ $rc -ne 0 ] && ! grep -q "Failing input written to" "$log" && grep -q "context deadline exceeded" "$log"; then
			echo "fuzz smoke: $dir $f: context deadline exceeded with no failing input; once more"
			rc=0
			fuzz || rc=$?
		fi
		if [ $rc -ne 0 ]; then
			cat "$log"
			echo "fuzz smoke: $dir $f failed; a crasher is kept in $dir/testdata/fuzz/$f/"
			exit 1
		fi
		n=$((n + 1))
	done
	echo "fuzz smoke: $dir: $n targets, $FUZZTIME each"
' <"$tmp/dirs"
echo "fuzz smoke: $(grep -rh --include='*_test.go' '^func Fuzz' . | wc -l) targets in $(wc -l <"$tmp/dirs") packages, $(($(date +%s) - start)) s"
