package simhost

import (
	"fmt"
	"path/filepath"
)

// StopOVSDB stops ovsdb-server (by its pidfile) and waits until it has
// exited; the database file stays.
func (o *OVS) StopOVSDB() error { return o.stop("ovsdb-server") }

// StartOVSDB starts ovsdb-server again on the existing database, with the
// same socket, pidfile and log as StartOVS used.
func (o *OVS) StartOVSDB() error {
	db := filepath.Join(o.Dir, "db", "conf.db")
	if _, err := RunEnv(o.Env(), "ovsdb-server", db, "--remote=punix:"+o.DBSock(),
		"--pidfile="+o.pidfile("ovsdb-server"), "--unixctl="+filepath.Join(o.RunDir(), "ovsdb-server.ctl"),
		"--log-file="+filepath.Join(o.Dir, "log", "ovsdb-server.log"), "--detach", "--no-chdir"); err != nil {
		return fmt.Errorf("restart ovsdb-server in %s: %w", o.Dir, err)
	}
	return nil
}
