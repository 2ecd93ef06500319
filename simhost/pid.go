package simhost

// PIDAlive reports whether pid exists and is not a zombie (a daemon that
// exited but was not yet reaped by init counts as gone).
func PIDAlive(pid int) bool { return alive(pid) }
