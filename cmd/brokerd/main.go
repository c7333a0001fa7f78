// Command brokerd serves the compute broker: the public HTTP and WebSocket
// API, the storefront, and the history writer that moves trades from Redis to
// ClickHouse. Configuration comes from the environment (see API.md).
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"computebroker/broker"
	"computebroker/frontend"
)

func main() {
	cfg, err := broker.ConfigFromEnv(os.Getenv)
	if err != nil {
		fmt.Fprintln(os.Stderr, "brokerd:", err)
		os.Exit(2)
	}
	level := slog.LevelInfo
	if strings.EqualFold(os.Getenv("BROKER_LOG_LEVEL"), "debug") {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	slog.SetDefault(log)
	cfg.Logger = log
	if err := startDebug(); err != nil {
		fmt.Fprintln(os.Stderr, "brokerd:", err)
		os.Exit(2)
	}
	cfg.Frontend = frontend.FS()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	m := broker.NewMain(cfg)
	if err := m.Run(ctx); err != nil && !errors.Is(err, context.Canceled) {
		log.Error("brokerd stopped", "err", err)
		os.Exit(1)
	}
}
