package simcluster

import (
	"log/slog"
	"strings"
)

// TB is the part of testing.TB the harness logs through; *testing.T has it.
type TB interface{ Log(args ...any) }

// TestLogger sends the harness's progress, debug level included, to a
// test's log, so a failed test shows how far its cluster got.
func TestLogger(t TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tbWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tbWriter struct{ t TB }

func (w tbWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}
