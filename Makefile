# make test runs everything CI runs: vet, the Go tests with the race
# detector, a short fuzzing run of every fuzz target, and the interop
# suites against the real Azure IoT SDKs.
GO ?= go
FUZZTIME ?= 20s
FUZZSMOKE ?= 500ms

.PHONY: test vet gotest fuzzsmoke interop bench bench-full soak fuzz

test: vet gotest fuzzsmoke interop

vet:
	$(GO) vet ./...
	@test -z "$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))" || { echo "gofmt needed:"; gofmt -l .; exit 1; }

gotest:
	$(GO) test -race -count=1 -timeout 20m ./...

# fuzzsmoke fuzzes each target for FUZZSMOKE, one instrumented build per
# package (test/fuzzsmoke.sh); a crasher lands in the package's testdata.
fuzzsmoke:
	GO=$(GO) test/fuzzsmoke.sh $(FUZZSMOKE)

interop:
	@if [ -x test/interop/run.sh ]; then test/interop/run.sh; else echo "interop: no suite yet"; fi

bench:
	@if [ -x bench/run.sh ]; then bench/run.sh; else $(GO) test -run '^$$' -bench . -benchtime 1x ./...; fi

fuzz:
	@for p in $$($(GO) list ./internal/...); do \
	  for f in $$($(GO) test -list 'Fuzz.*' $$p | grep ^Fuzz); do \
	    $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$p || exit 1; done; done

# soak runs the long versions of the reliability suite (docs/RELIABILITY.md):
# the same tests as make test with OUTPOST_SOAK=1 scaling their counts and
# durations up, then every fuzz target for minutes.
soak:
	OUTPOST_SOAK=1 $(GO) test -count=1 -timeout 180m ./...
	$(MAKE) fuzz FUZZTIME=3m
