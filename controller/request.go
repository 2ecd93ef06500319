package controller

import (
	"context"
	"fmt"

	"github.com/keyroute/keyroute/openflow"
)

// Request sends msg and returns the switch's reply with the same xid. An
// ERROR reply is returned as the error, as the *openflow.ErrorMsg itself.
// Use it only for messages that have a reply; it waits at most
// Options.RequestTimeout.
func (s *Switch) Request(ctx context.Context, msg openflow.Message) (openflow.Message, error) {
	c, err := s.conn()
	if err != nil {
		return nil, err
	}
	r, err := c.roundTrip(ctx, msg, false)
	return r.msg, err
}

// Send writes msg without waiting for anything. It reports write errors;
// an ERROR the switch sends back later goes to OnAsyncError.
func (s *Switch) Send(msg openflow.Message) error {
	c, err := s.conn()
	if err != nil {
		return err
	}
	b, err := openflow.Marshal(msg, s.nextXid())
	if err != nil {
		return err
	}
	if err := c.write(context.Background(), b); err != nil {
		return fmt.Errorf("send %s: %w", msgName(msg), err)
	}
	return nil
}

// Barrier returns once the switch has processed every message sent before
// it.
func (s *Switch) Barrier(ctx context.Context) error {
	m, err := s.Request(ctx, &openflow.BarrierRequest{})
	if err != nil {
		return fmt.Errorf("barrier: %w", err)
	}
	if _, ok := m.(*openflow.BarrierReply); !ok {
		return fmt.Errorf("barrier: switch answered with %s", m.Type())
	}
	return nil
}

// Multipart sends a multipart request and returns the bodies of all reply
// parts concatenated, ready for openflow.Decode*Stats.
func (s *Switch) Multipart(ctx context.Context, req openflow.Message) ([]byte, error) {
	if req.Type() != openflow.TypeMultipartRequest {
		return nil, fmt.Errorf("multipart: %s is not a multipart request", msgName(req))
	}
	c, err := s.conn()
	if err != nil {
		return nil, err
	}
	r, err := c.roundTrip(ctx, req, true)
	if err != nil {
		return nil, err
	}
	if _, ok := r.msg.(*openflow.MultipartReply); !ok {
		return nil, fmt.Errorf("multipart: switch answered with %s", r.msg.Type())
	}
	return r.body, nil
}

// FlowStats dumps the flows that req selects. For every flow use
// &openflow.FlowStatsRequest{Table: openflow.TableAll, OutPort: openflow.PortAny, OutGroup: openflow.GroupAny}.
func (s *Switch) FlowStats(ctx context.Context, req *openflow.FlowStatsRequest) ([]openflow.FlowStats, error) {
	body, err := s.Multipart(ctx, req)
	if err != nil {
		return nil, fmt.Errorf("dump flows: %w", err)
	}
	fs, err := openflow.DecodeFlowStats(body)
	if err != nil {
		return nil, fmt.Errorf("dump flows: %w", err)
	}
	return fs, nil
}

// PortStats returns the counters of port portNo (openflow.PortAny: all).
func (s *Switch) PortStats(ctx context.Context, portNo uint32) ([]openflow.PortStats, error) {
	body, err := s.Multipart(ctx, &openflow.PortStatsRequest{PortNo: portNo})
	if err != nil {
		return nil, fmt.Errorf("port stats: %w", err)
	}
	ps, err := openflow.DecodePortStats(body)
	if err != nil {
		return nil, fmt.Errorf("port stats: %w", err)
	}
	return ps, nil
}

// PortDesc describes every port of the bridge.
func (s *Switch) PortDesc(ctx context.Context) ([]openflow.Port, error) {
	body, err := s.Multipart(ctx, &openflow.PortDescRequest{})
	if err != nil {
		return nil, fmt.Errorf("port desc: %w", err)
	}
	ps, err := openflow.DecodePortDesc(body)
	if err != nil {
		return nil, fmt.Errorf("port desc: %w", err)
	}
	return ps, nil
}

// MeterStats returns the counters of meter meterID (openflow.MeterAll: all).
func (s *Switch) MeterStats(ctx context.Context, meterID uint32) ([]openflow.MeterStats, error) {
	body, err := s.Multipart(ctx, &openflow.MeterStatsRequest{MeterID: meterID})
	if err != nil {
		return nil, fmt.Errorf("meter stats: %w", err)
	}
	ms, err := openflow.DecodeMeterStats(body)
	if err != nil {
		return nil, fmt.Errorf("meter stats: %w", err)
	}
	return ms, nil
}
