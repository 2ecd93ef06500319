package ovsdb

import (
	"context"
	"fmt"
	"slices"
)

// SetMirror makes mirror name on bridge copy every packet port receives
// and sends to port output (both ports on bridge), replacing a mirror of
// that name. It is what tcpdump on a port shows, for ports whose frames
// pass no packet tap (AF_XDP).
func (c *Client) SetMirror(ctx context.Context, bridge, name, port, output string) error {
	res, err := c.Transact(ctx, DB,
		Select("Bridge", eq("name", bridge), "_uuid", "ports", "mirrors"),
		Select("Port", eq("name", port), "_uuid"),
		Select("Port", eq("name", output), "_uuid"),
		Select("Mirror", eq("name", name), "_uuid"))
	if err != nil {
		return fmt.Errorf("mirror %s on %s: %w", name, bridge, err)
	}
	if len(res[0].Rows) == 0 {
		return fmt.Errorf("mirror %s: bridge %s: %w", name, bridge, ErrNotFound)
	}
	br := res[0].Rows[0]
	var src, dst UUID
	for i, r := range []struct {
		name string
		to   *UUID
	}{{port, &src}, {output, &dst}} {
		rows := res[1+i].Rows
		if len(rows) == 0 || !slices.Contains(br.UUIDs("ports"), rows[0].UUID()) {
			return fmt.Errorf("mirror %s: port %s not on bridge %s: %w", name, r.name, bridge, ErrNotFound)
		}
		*r.to = rows[0].UUID()
	}
	ops := []Operation{assertRow("Bridge", br.UUID(), bridge)}
	for _, m := range res[3].Rows {
		if slices.Contains(br.UUIDs("mirrors"), m.UUID()) {
			ops = append(ops, Mutate("Bridge", byUUID(br.UUID()), Mut("mirrors", "delete", m.UUID())))
		}
	}
	ops = append(ops,
		Insert("Mirror", Row{"name": name, "select_src_port": src, "select_dst_port": src, "output_port": dst}, "mirror"),
		Mutate("Bridge", byUUID(br.UUID()), Mut("mirrors", "insert", NamedUUID("mirror"))))
	if _, err := c.Transact(ctx, DB, ops...); err != nil {
		return fmt.Errorf("mirror %s on %s: %w", name, bridge, err)
	}
	return nil
}

// DeleteMirror removes mirror name from bridge; a mirror that is not
// there is not an error.
func (c *Client) DeleteMirror(ctx context.Context, bridge, name string) error {
	res, err := c.Transact(ctx, DB,
		Select("Bridge", eq("name", bridge), "_uuid", "mirrors"),
		Select("Mirror", eq("name", name), "_uuid"))
	if err != nil {
		return fmt.Errorf("delete mirror %s from %s: %w", name, bridge, err)
	}
	if len(res[0].Rows) == 0 {
		return nil
	}
	br := res[0].Rows[0]
	var ops []Operation
	for _, m := range res[1].Rows {
		if slices.Contains(br.UUIDs("mirrors"), m.UUID()) {
			ops = append(ops, Mutate("Bridge", byUUID(br.UUID()), Mut("mirrors", "delete", m.UUID())))
		}
	}
	if len(ops) == 0 {
		return nil
	}
	if _, err := c.Transact(ctx, DB, ops...); err != nil {
		return fmt.Errorf("delete mirror %s from %s: %w", name, bridge, err)
	}
	return nil
}
