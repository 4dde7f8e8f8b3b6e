// govc, as the govmomi project builds it: its command packages (the
// repository's cli/…, which the govc binary links) behind cli.Run. Only the
// commands hypersdk's tests use are linked: import.ova/import.ovf/import.spec,
// vm.info, vm.network.add/change, device.info, device.boot, about. The govc module itself (govmomi/govc) is
// not on the Go module proxy; its commands are, in the govmomi module.
package main

import (
	"os"

	"github.com/vmware/govmomi/cli"
	_ "github.com/vmware/govmomi/cli/about"
	_ "github.com/vmware/govmomi/cli/device"
	_ "github.com/vmware/govmomi/cli/importx"
	_ "github.com/vmware/govmomi/cli/vm"
	_ "github.com/vmware/govmomi/cli/vm/network"
)

func main() {
	os.Exit(cli.Run(os.Args[1:]))
}
