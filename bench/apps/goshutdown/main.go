// A Go net/http server as its documentation shows it: the listener from socket activation
// (github.com/coreos/go-systemd/activation, which reads LISTEN_FDS/LISTEN_PID), and on SIGTERM
// Server.Shutdown, which closes idle keep-alive connections at once and waits for active ones.
// Built by bench/run.sh with Debian's golang-go and golang-github-coreos-go-systemd-dev:
//
//	GO111MODULE=off GOPATH=/usr/share/gocode go build -o goshutdown bench/apps/goshutdown/main.go
package main

import (
	"context"
	"fmt"
	"log"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/activation"
)

func main() {
	listeners, err := activation.Listeners()
	if err != nil || len(listeners) == 0 {
		log.Fatalf("goshutdown: no socket-activation listener (LISTEN_FDS): %v", err)
	}
	body := fmt.Sprintf("hello from generation %s pid %d\n", os.Getenv("BATON_GENERATION"), os.Getpid())
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		fmt.Fprint(w, body)
	})}
	done := make(chan struct{})
	go func() {
		stop := make(chan os.Signal, 1)
		signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
		<-stop
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			log.Printf("goshutdown: shutdown: %v", err)
		}
		close(done)
	}()
	if err := srv.Serve(listeners[0]); err != http.ErrServerClosed {
		log.Fatalf("goshutdown: %v", err)
	}
	<-done
}
