package ovsdb

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// Operation is one operation of a "transact" request. Build it with Insert,
// Select, Update, Mutate, Delete, Wait or Comment.
type Operation struct {
	Op        string      // insert, select, update, mutate, delete, wait, comment
	Table     string      // all but comment
	Row       Row         // insert, update
	UUIDName  string      // insert: lets later operations refer to the row as NamedUUID(UUIDName)
	Where     []Condition // select, update, mutate, delete, wait
	Columns   []string    // select (nil: all), wait
	Mutations []Mutation  // mutate
	Rows      []Row       // wait
	Until     string      // wait: "==" or "!="
	Timeout   time.Duration
	Comment   string // comment
}

// Condition is a where-clause element: [column, function, value], function
// one of "==", "!=", "<", "<=", ">", ">=", "includes", "excludes".
type Condition struct {
	Column, Function string
	Value            any
}

// Mutation is a mutate element: [column, mutator, value], mutator one of
// "+=", "-=", "*=", "/=", "%=", "insert", "delete".
type Mutation struct {
	Column, Mutator string
	Value           any
}

// Cond builds a Condition.
func Cond(column, function string, value any) Condition {
	return Condition{Column: column, Function: function, Value: value}
}

// Mut builds a Mutation.
func Mut(column, mutator string, value any) Mutation {
	return Mutation{Column: column, Mutator: mutator, Value: value}
}

// Insert adds row to table; uuidName ("" for none) names it for the rest of
// the transaction.
func Insert(table string, row Row, uuidName string) Operation {
	return Operation{Op: "insert", Table: table, Row: row, UUIDName: uuidName}
}

// Select reads the given columns (all if none) of the matching rows.
func Select(table string, where []Condition, columns ...string) Operation {
	return Operation{Op: "select", Table: table, Where: where, Columns: columns}
}

// Update sets the columns in row on every matching row.
func Update(table string, where []Condition, row Row) Operation {
	return Operation{Op: "update", Table: table, Where: where, Row: row}
}

// Mutate applies mutations, in order, to every matching row.
func Mutate(table string, where []Condition, mutations ...Mutation) Operation {
	return Operation{Op: "mutate", Table: table, Where: where, Mutations: mutations}
}

// Delete removes the matching rows.
func Delete(table string, where ...Condition) Operation {
	return Operation{Op: "delete", Table: table, Where: where}
}

// Wait makes the transaction wait (up to timeout; 0 = check once) until the
// given columns of the matching rows are ("==") or are not ("!=") exactly
// rows. If the timeout passes, the operation fails with "timed out" and the
// transaction is aborted.
func Wait(table string, where []Condition, columns []string, until string, rows []Row, timeout time.Duration) Operation {
	return Operation{Op: "wait", Table: table, Where: where, Columns: columns, Until: until, Rows: rows, Timeout: timeout}
}

// Comment adds text to the server's log of the transaction.
func Comment(text string) Operation { return Operation{Op: "comment", Comment: text} }

// MarshalJSON encodes the condition as [column, function, value].
func (c Condition) MarshalJSON() ([]byte, error) {
	v, err := encodeValue(c.Value)
	if err != nil {
		return nil, fmt.Errorf("condition on %s: %w", c.Column, err)
	}
	return json.Marshal([]any{c.Column, c.Function, v})
}

// MarshalJSON encodes the mutation as [column, mutator, value].
func (m Mutation) MarshalJSON() ([]byte, error) {
	v, err := encodeValue(m.Value)
	if err != nil {
		return nil, fmt.Errorf("mutation of %s: %w", m.Column, err)
	}
	return json.Marshal([]any{m.Column, m.Mutator, v})
}

// MarshalJSON encodes the members the operation kind needs; "where" is
// always present where RFC 7047 requires it, even when empty.
func (o Operation) MarshalJSON() ([]byte, error) {
	m := map[string]any{"op": o.Op}
	where := o.Where
	if where == nil {
		where = []Condition{}
	}
	switch o.Op {
	case "insert":
		m["table"], m["row"] = o.Table, nonNilRow(o.Row)
		if o.UUIDName != "" {
			m["uuid-name"] = o.UUIDName
		}
	case "select":
		m["table"], m["where"] = o.Table, where
		if o.Columns != nil {
			m["columns"] = o.Columns
		}
	case "update":
		m["table"], m["where"], m["row"] = o.Table, where, nonNilRow(o.Row)
	case "mutate":
		muts := o.Mutations
		if muts == nil {
			muts = []Mutation{}
		}
		m["table"], m["where"], m["mutations"] = o.Table, where, muts
	case "delete":
		m["table"], m["where"] = o.Table, where
	case "wait":
		if o.Until != "==" && o.Until != "!=" {
			return nil, fmt.Errorf("wait on %s: until must be \"==\" or \"!=\", not %q", o.Table, o.Until)
		}
		rows := o.Rows
		if rows == nil {
			rows = []Row{}
		}
		m["table"], m["where"], m["until"], m["rows"] = o.Table, where, o.Until, rows
		m["timeout"] = o.Timeout.Milliseconds()
		if o.Columns != nil {
			m["columns"] = o.Columns
		}
	case "comment":
		m["comment"] = o.Comment
	default:
		return nil, fmt.Errorf("unknown OVSDB operation %q", o.Op)
	}
	return json.Marshal(m)
}

func nonNilRow(r Row) Row {
	if r == nil {
		return Row{}
	}
	return r
}

// OperationResult is the outcome of one operation.
type OperationResult struct {
	UUID  UUID  // insert
	Count int64 // update, mutate, delete
	Rows  []Row // select
}

// OpError is an operation that the server refused. Index is the operation's
// position in the transaction; for an error reported at commit (for example
// a referential integrity violation) Index equals the number of operations
// and Op is "commit".
type OpError struct {
	Index   int
	Op      string
	Table   string
	Err     string // e.g. "constraint violation"
	Details string
}

func (e *OpError) Error() string {
	var s string
	switch {
	case e.Op == "commit":
		s = "transact commit: " + e.Err
	case e.Table == "":
		s = fmt.Sprintf("transact op %d (%s): %s", e.Index, e.Op, e.Err)
	default:
		s = fmt.Sprintf("transact op %d (%s %s): %s", e.Index, e.Op, e.Table, e.Err)
	}
	if e.Details != "" {
		s += ": " + e.Details
	}
	return s
}

// Transact runs ops as one transaction on db. If the server refuses an
// operation, the error is an *OpError naming it, and the results returned
// alongside cover the operations before it.
func (c *Client) Transact(ctx context.Context, db string, ops ...Operation) ([]OperationResult, error) {
	params := make([]any, 0, len(ops)+1)
	params = append(params, db)
	for _, op := range ops {
		params = append(params, op)
	}
	raw, err := c.call(ctx, "transact", params...)
	if err != nil {
		return nil, err
	}
	return decodeTransactResult(raw, ops)
}

// decodeTransactResult turns the reply array into results, or the first
// error element into an *OpError.
func decodeTransactResult(raw json.RawMessage, ops []Operation) ([]OperationResult, error) {
	v, err := decodeJSON(raw)
	if err != nil {
		return nil, fmt.Errorf("transact reply: %w", err)
	}
	arr, ok := v.([]any)
	if !ok {
		return nil, fmt.Errorf("transact reply: not an array: %s", abbrev(v))
	}
	if len(arr) < len(ops) {
		return nil, fmt.Errorf("transact reply: %d results for %d operations", len(arr), len(ops))
	}
	results := make([]OperationResult, len(ops))
	for i, e := range arr {
		if e == nil {
			continue // not executed because an earlier operation failed
		}
		obj, ok := e.(map[string]any)
		if !ok {
			return nil, fmt.Errorf("transact reply: result %d is not an object: %s", i, abbrev(e))
		}
		if msg, has := obj["error"]; has && msg != nil {
			oe := &OpError{Index: i, Op: "commit"}
			if i < len(ops) {
				oe.Op, oe.Table = ops[i].Op, ops[i].Table
			}
			oe.Err, _ = msg.(string)
			oe.Details, _ = obj["details"].(string)
			if oe.Err == "" {
				oe.Err = "malformed error " + abbrev(msg)
			}
			n := min(i, len(results))
			return results[:n:n], oe
		}
		if i >= len(ops) {
			return nil, fmt.Errorf("transact reply: unexpected result %d for %d operations", i, len(ops))
		}
		if err := fillResult(&results[i], obj); err != nil {
			return nil, fmt.Errorf("transact reply: result %d (%s %s): %w", i, ops[i].Op, ops[i].Table, err)
		}
	}
	return results, nil
}

func fillResult(r *OperationResult, obj map[string]any) error {
	if u, ok := obj["uuid"]; ok {
		a, err := atomFromJSON(u)
		if err != nil {
			return fmt.Errorf("uuid: %w", err)
		}
		if r.UUID, ok = a.(UUID); !ok {
			return errors.New("uuid member is not a uuid")
		}
	}
	if n, ok := obj["count"]; ok {
		num, ok := n.(json.Number)
		if !ok {
			return errors.New("count is not a number")
		}
		cnt, err := num.Int64()
		if err != nil {
			return fmt.Errorf("count: %w", err)
		}
		r.Count = cnt
	}
	if rows, ok := obj["rows"]; ok {
		arr, ok := rows.([]any)
		if !ok {
			return errors.New("rows is not an array")
		}
		r.Rows = make([]Row, 0, len(arr))
		for _, rv := range arr {
			row, err := rowFromJSON(rv)
			if err != nil {
				return err
			}
			r.Rows = append(r.Rows, row)
		}
	}
	return nil
}
