module github.com/keyroute/keyroute

go 1.26
