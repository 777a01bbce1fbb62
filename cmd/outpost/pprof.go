package main

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"os"

	"outpost/internal/gateway"
)

// pprofEnv names the loopback address on which `outpost hub` and `outpost
// edge` serve net/http/pprof, for profiling a running server (the drain
// benchmark does). Unset, nothing listens.
const pprofEnv = "OUTPOST_PPROF"

// startPprof serves pprof on $OUTPOST_PPROF if it is set. Only loopback
// addresses are accepted: profiles show internals and cost CPU, and the
// listener has no authentication. The listener lives as long as the
// process.
func startPprof() error {
	addr := os.Getenv(pprofEnv)
	if addr == "" {
		return nil
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%s=%q: %w", pprofEnv, addr, err)
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return fmt.Errorf("%s=%q: only a loopback address is allowed", pprofEnv, addr)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("%s: %w", pprofEnv, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	fmt.Fprintf(os.Stderr, "pprof on http://%s/debug/pprof/\n", ln.Addr())
	// Loopback only, but idle connections are still bounded, as on the
	// hub's and the edge's listeners.
	srv := &http.Server{Handler: mux}
	gateway.HTTPTimeouts{}.Apply(srv)
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, net.ErrClosed) {
			fmt.Fprintf(os.Stderr, "%s: %v\n", pprofEnv, err)
		}
	}()
	return nil
}
