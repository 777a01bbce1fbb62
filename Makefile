# make test runs everything CI runs: vet, the Go tests with the race
# detector, and the interop suites against the real Azure IoT SDKs.
GO ?= go

.PHONY: test vet gotest interop bench bench-full soak fuzz

test: vet gotest interop

vet:
	$(GO) vet ./...
	@test -z "$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))" || { echo "gofmt needed:"; gofmt -l .; exit 1; }

gotest:
	$(GO) test -race -count=1 -timeout 20m ./...

interop:
	@if [ -x test/interop/run.sh ]; then test/interop/run.sh; else echo "interop: no suite yet"; fi

bench:
	@if [ -x bench/run.sh ]; then bench/run.sh; else $(GO) test -run '^$$' -bench . -benchtime 1x ./...; fi

fuzz:
	@for p in $$($(GO) list ./internal/...); do \
	  for f in $$($(GO) test -list 'Fuzz.*' $$p | grep ^Fuzz); do \
	    $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime 20s $$p || exit 1; done; done
