// Go's net/http on the sockets baton passes (coreos/go-systemd's activation package, as its documentation shows),
// unmodified: graceful stop is Server.Shutdown on SIGTERM. GET /?sleep=MS answers after MS milliseconds.
package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/activation"
)

func main() {
	listeners, err := activation.Listeners()
	if err != nil || len(listeners) == 0 {
		fmt.Fprintln(os.Stderr, "goapp: no sockets in LISTEN_FDS:", err)
		os.Exit(1)
	}
	generation := os.Getenv("BATON_GENERATION")
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if ms, err := strconv.Atoi(r.URL.Query().Get("sleep")); err == nil && ms > 0 && ms <= 10000 {
			time.Sleep(time.Duration(ms) * time.Millisecond)
		}
		fmt.Fprintf(w, "hello from generation %s pid %d\n", generation, os.Getpid())
	})
	server := &http.Server{Handler: handler}
	stopped := make(chan struct{})
	go func() {
		stop := make(chan os.Signal, 1)
		signal.Notify(stop, syscall.SIGTERM)
		<-stop
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		server.Shutdown(ctx)
		close(stopped)
	}()
	for _, listener := range listeners {
		go server.Serve(listener)
	}
	<-stopped
}
