package controller

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// queue delivers one category of asynchronous messages to its handler in
// arrival order. It is bounded: when the handler falls behind, new messages
// are dropped and counted, so the read loop never blocks and a flood of one
// category never delays another.
type queue[T any] struct {
	ch       chan T
	handler  func(T)
	received *atomic.Uint64
	dropped  *atomic.Uint64
}

func newQueue[T any](n int, handler func(T), received, dropped *atomic.Uint64) *queue[T] {
	return &queue[T]{ch: make(chan T, n), handler: handler, received: received, dropped: dropped}
}

// push never blocks.
func (q *queue[T]) push(v T) {
	q.received.Add(1)
	if q.handler == nil {
		return
	}
	select {
	case q.ch <- v:
	default:
		q.dropped.Add(1)
	}
}

func (q *queue[T]) run(ctx context.Context, s *Switch) {
	if q.handler == nil {
		return
	}
	for {
		select {
		case <-ctx.Done():
			return
		case v := <-q.ch:
			q.call(s, v)
		}
	}
}

// call runs the handler; a panicking handler is logged and counted, and
// the next message is delivered as usual.
func (q *queue[T]) call(s *Switch, v T) {
	defer func() {
		if r := recover(); r != nil {
			s.cnt.handlerPanics.Add(1)
			s.log.Error("handler panicked", "msg_type", typeName(v), "panic", r)
		}
	}()
	q.handler(v)
}

func typeName(v any) string { return fmt.Sprintf("%T", v) }

// sometimes rate-limits a log line: the first few, then one per interval
// with the number suppressed in between.
type sometimes struct {
	mu         sync.Mutex
	n          int
	last       time.Time
	suppressed uint64
}

const (
	logBurst    = 5
	logInterval = 10 * time.Second
)

func (st *sometimes) do(f func(suppressed uint64)) {
	st.mu.Lock()
	now := time.Now()
	if st.n < logBurst || now.Sub(st.last) >= logInterval {
		st.n++
		st.last = now
		sup := st.suppressed
		st.suppressed = 0
		st.mu.Unlock()
		f(sup)
		return
	}
	st.suppressed++
	st.mu.Unlock()
}
