// Command etcd is the etcd server, built from its published module: `go
// install go.etcd.io/etcd/v3` refuses the replace directives in etcd's own
// go.mod, so the lab builds this two-line wrapper instead.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
