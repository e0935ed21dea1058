package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"vfsd/engine/worker"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run is main with its streams, returning the exit status.
func run(args []string, stdout, stderr io.Writer) int {
	c, err := parseArgs(args)
	if err == nil && !c.Help && !c.PrintCaps {
		err = c.Validate()
	}
	switch {
	case err != nil:
		fmt.Fprintf(stderr, "vfsd: %v\n", err)
		return 2
	case c.Help:
		fmt.Fprint(stdout, usageText)
		return 0
	case c.PrintCaps:
		fmt.Fprint(stdout, capabilities)
		return 0
	}
	c.Logger = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: c.LogLevel}))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := worker.Run(ctx, c.Options); err != nil {
		c.Logger.Error("vfsd failed", "err", err)
		return 1
	}
	return 0
}
