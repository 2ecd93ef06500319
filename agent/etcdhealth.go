package agent

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// etcdAnswerTimeout bounds every etcd read behind a keyroutectl question,
// so the agent answers (from its own state, or with an error naming etcd)
// inside the client's 2 s deadline whatever is down.
const etcdAnswerTimeout = time.Second

// etcdHealth is what the agent last learnt about etcd: whether it
// answered, and when it last did. keyroutectl's answers from the agent's
// own state are stale since lastOK.
type etcdHealth struct {
	mu      sync.Mutex
	healthy bool
	lastOK  time.Time
	err     string
}

func (h *etcdHealth) set(err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.healthy = err == nil
	if err == nil {
		h.lastOK, h.err = time.Now(), ""
	} else {
		h.err = err.Error()
	}
}

func (h *etcdHealth) get() (healthy bool, lastOK time.Time, err string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.healthy, h.lastOK, h.err
}

// checkEtcd asks etcd one cheap question within etcdAnswerTimeout.
func (a *Agent) checkEtcd(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, etcdAnswerTimeout)
	defer cancel()
	_, err := a.reg.Raw().Get(ctx, "health")
	a.etcd.set(err)
	return err
}

// monitorEtcd keeps etcdHealth current, so a change is refused at once
// while etcd is unreachable and stale answers say since when.
func (a *Agent) monitorEtcd(ctx context.Context) {
	every(ctx, time.Second, func() { a.checkEtcd(ctx) })
}

// etcdUnreachable reports whether err means etcd did not answer (as
// opposed to answering with an error).
func etcdUnreachable(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	var se interface{ GRPCStatus() *status.Status }
	if errors.As(err, &se) {
		switch se.GRPCStatus().Code() {
		case codes.Unavailable, codes.DeadlineExceeded:
			return true
		}
	}
	return false
}

// unreachableError says which etcd did not answer (what, if given, is the
// operation), e.g. "etcd at
// https://198.18.0.1:2379 unreachable (no answer within 1s; last answered
// 12:00:01)".
func (a *Agent) unreachableError(what string, err error) error {
	_, lastOK, _ := a.etcd.get()
	last := "never answered"
	if !lastOK.IsZero() {
		last = "last answered " + lastOK.Format(time.RFC3339)
	}
	err = fmt.Errorf("etcd at %s unreachable (no answer within %s; %s): %w",
		strings.Join(a.etcdEPs, ","), etcdAnswerTimeout, last, err)
	if what != "" {
		err = fmt.Errorf("%s: %w", what, err)
	}
	return err
}

// requireEtcd refuses a change at once while etcd is known unreachable,
// instead of letting it wait out the client's deadline.
func (a *Agent) requireEtcd(what string) error {
	if healthy, _, errText := a.etcd.get(); !healthy {
		return a.unreachableError(what, errors.New(errText))
	}
	return nil
}
