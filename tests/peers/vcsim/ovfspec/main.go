// ovfspec: what VMware's own OVF reader makes of a descriptor. It reads an
// OVF file with govmomi's ovf package (the parser govc and vCenter clients
// use), turns it into the VirtualMachineConfigSpec an import would create
// (ovf.Envelope.ToConfigSpecWithOptions, strict: an item it does not know is
// an error), and prints one JSON document: the VM's settings and, per
// device, its vSphere type, key, controller, unit, bus, MAC, network and
// capacity. hypersdk's tests compare that with the VM they exported.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"

	"github.com/vmware/govmomi/ovf"
	"github.com/vmware/govmomi/vim25/types"
)

type device struct {
	Type          string `json:"type"`
	Key           int32  `json:"key"`
	ControllerKey int32  `json:"controller_key,omitempty"`
	Unit          *int32 `json:"unit,omitempty"`
	Bus           *int32 `json:"bus,omitempty"`
	Mac           string `json:"mac,omitempty"`
	Network       string `json:"network,omitempty"`
	CapacityBytes int64  `json:"capacity_bytes,omitempty"`
	VramKB        int64  `json:"vram_kb,omitempty"`
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: ovfspec FILE.ovf")
		os.Exit(2)
	}
	f, err := os.Open(os.Args[1])
	if err != nil {
		fatal("%v", err)
	}
	env, err := ovf.Unmarshal(f)
	if err != nil {
		fatal("govmomi cannot parse the descriptor: %v", err)
	}
	spec, err := env.ToConfigSpecWithOptions(ovf.ToConfigSpecOptions{Strict: true})
	if err != nil {
		fatal("govmomi cannot turn the descriptor into a ConfigSpec: %v", err)
	}
	out := map[string]any{
		"name":     spec.Name,
		"version":  spec.Version,
		"guest_id": spec.GuestId,
		"cpus":     spec.NumCPUs,
		"cores":    spec.NumCoresPerSocket,
		"memory":   spec.MemoryMB,
		"firmware": spec.Firmware,
	}
	if b := spec.BootOptions; b != nil && b.EfiSecureBootEnabled != nil {
		out["secure_boot"] = *b.EfiSecureBootEnabled
	}
	if spec.NestedHVEnabled != nil {
		out["nested_hv"] = *spec.NestedHVEnabled
	}
	if t := spec.Tools; t != nil {
		out["tools_upgrade_policy"] = t.ToolsUpgradePolicy
	}
	extra := map[string]string{}
	for _, o := range spec.ExtraConfig {
		v := o.GetOptionValue()
		extra[v.Key] = fmt.Sprint(v.Value)
	}
	out["extra_config"] = extra
	var devices []device
	for _, ch := range spec.DeviceChange {
		d := ch.GetVirtualDeviceConfigSpec().Device
		vd := d.GetVirtualDevice()
		dev := device{
			Type:          strings.TrimPrefix(fmt.Sprintf("%T", d), "*types."),
			Key:           vd.Key,
			ControllerKey: vd.ControllerKey,
			Unit:          vd.UnitNumber,
		}
		if c, ok := d.(types.BaseVirtualController); ok {
			bus := c.GetVirtualController().BusNumber
			dev.Bus = &bus
		}
		if n, ok := d.(types.BaseVirtualEthernetCard); ok {
			card := n.GetVirtualEthernetCard()
			dev.Mac = card.MacAddress
			if b, ok := card.Backing.(*types.VirtualEthernetCardNetworkBackingInfo); ok {
				dev.Network = b.DeviceName
			}
		}
		if disk, ok := d.(*types.VirtualDisk); ok {
			dev.CapacityBytes = disk.CapacityInBytes
			if dev.CapacityBytes == 0 {
				dev.CapacityBytes = disk.CapacityInKB * 1024
			}
		}
		if v, ok := d.(*types.VirtualMachineVideoCard); ok {
			dev.VramKB = v.VideoRamSizeInKB
		}
		devices = append(devices, dev)
	}
	out["devices"] = devices
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(out); err != nil {
		fatal("%v", err)
	}
}

func fatal(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "ovfspec: "+format+"\n", a...)
	os.Exit(1)
}
