package kvwatch

import (
	"context"
	"errors"
)

// Phases exposes a watcher's list and follow steps, so a test can compact
// etcd between them. follow reports whether it stopped for a compaction.
func Phases[T any](cfg Config[T]) (list func(context.Context) error, follow func(context.Context) (compacted bool, err error), out <-chan Event[T]) {
	w := newWatcher(cfg)
	return w.list, func(ctx context.Context) (bool, error) {
		err := w.follow(ctx)
		if errors.Is(err, errCompacted) {
			return true, nil
		}
		return false, err
	}, w.out
}
