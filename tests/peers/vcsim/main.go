// vcsim-launcher: the govmomi vCenter simulator for hypersdk's tests.
//
// It starts the simulator's VPX model (one datacenter, a cluster, hosts, a
// local datastore and its default VMs) over HTTPS on 127.0.0.1, on a port the
// OS picks, adds the VMs asked for with -vm, prints one JSON line
//
//	{"url": "https://user:pass@127.0.0.1:PORT/sdk", "home": DIR,
//	 "datastores": {"LocalDS_0": DIR}, "thumbprint": "AB:CD:…", "vms": {...}}
//
// and runs until its standard input closes (the test harness holds it open).
//
// Two things the simulator lacks are added here, from the vSphere API
// reference, so that exports can be tested as they happen against ESXi:
//
//   - The NFC download of a disk serves what ESXi serves: the disk as a
//     streamOptimized VMDK (VMware's layout: grain markers, grain tables and
//     directory at the end, footer, end-of-stream marker), built on the fly
//     from the disk's -flat.vmdk in the datastore directory. (The simulator
//     itself would serve the small text descriptor.) Range requests are
//     ignored (a full 200 answer) unless -nfc-range is given: then each
//     disk's VMDK is built once into a cache file and served with Range
//     support (206 + Content-Range). Disks created with -vm have file names
//     unique across the inventory, which is how a download finds its flat
//     file.
//   - GET /hsdk/nfc-host?addr=HOST:PORT makes later leases hand out device
//     URLs on that address (a fault-injecting proxy in the tests), and
//     GET /hsdk/stats returns call counters.
//   - VirtualMachine.ExportVm (not implemented by the simulator), answered at
//     the HTTP level from the API reference: InvalidPowerState unless the VM
//     is powered off, else an HttpNfcLease in state ready whose device URLs
//     serve the VM's disks as above.
package main

import (
	"bufio"
	"bytes"
	"compress/zlib"
	"context"
	"crypto/sha1"
	"encoding/binary"
	"encoding/json"
	"encoding/pem"
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"time"

	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

type vmFlags []string

func (v *vmFlags) String() string     { return strings.Join(*v, " ") }
func (v *vmFlags) Set(s string) error { *v = append(*v, s); return nil }

// Calls counted for the tests (served at GET /hsdk/stats).
var (
	leaseTimeout  = 300
	progressCalls atomic.Int64
	completeCalls atomic.Int64
	abortCalls    atomic.Int64
	nfcGets       atomic.Int64
	nfcRanged     atomic.Int64
)

// NFC serving: the address lease URLs point at (empty: the simulator's own)
// and whether Range requests are honoured (from a cache of built VMDKs).
var (
	nfcMu    sync.Mutex
	nfcHost  string
	nfcRange bool
	nfcCache = map[string]string{} // flat file + size + mtime -> cached VMDK
	cacheDir string
)

// Where each disk's flat file is, by the file name an NFC URL carries.
var (
	flatMu sync.Mutex
	flats  = map[string]string{}
)

func main() {
	var vms vmFlags
	flag.Var(&vms, "vm", "NAME=MIB[,MIB...][:on]: add a VM with disks of these sizes, powered off unless :on (repeatable)")
	user := flag.String("user", "", "accept only this user name (default: any)")
	flag.IntVar(&leaseTimeout, "lease-timeout", 300, "timeout in seconds that ExportVm leases declare")
	pass := flag.String("password", "", "with -user: accept only this password")
	flag.BoolVar(&nfcRange, "nfc-range", false, "serve NFC disk downloads with Range support (from a cache of built VMDKs)")
	var opaque vmFlags
	flag.Var(&opaque, "opaque-network", "NAME: add an NSX opaque network of this name, not backed by a portgroup, as NSX-T's logical switches appear to vCenter (repeatable)")
	flag.Parse()
	log.SetOutput(io.Discard) // the simulator logs every request
	dir, err := os.MkdirTemp("", "vcsim-nfc-cache-")
	if err != nil {
		fatal("cache directory: %v", err)
	}
	cacheDir = dir
	defer os.RemoveAll(dir)

	model := simulator.VPX()
	defer model.Remove()
	if err := model.Create(); err != nil {
		fatal("create model: %v", err)
	}
	caPEM, leaf, err := makeCertificates()
	if err != nil {
		fatal("certificates: %v", err)
	}
	model.Service.TLS = &tls.Config{Certificates: []tls.Certificate{leaf}}
	model.Service.Listen = &url.URL{Host: "127.0.0.1:0"}
	if *user != "" {
		model.Service.Listen.User = url.UserPassword(*user, *pass)
	}
	server := model.Service.NewServer()
	defer server.Close()

	// Intercept NFC downloads of disks we know the flat file of.
	inner := server.Config.Handler
	server.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/sdk") {
			body, err := io.ReadAll(io.LimitReader(r.Body, 16<<20))
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			if bytes.Contains(body, []byte("<ExportVm")) {
				serveExportVm(w, body, model)
				return
			}
			switch {
			case bytes.Contains(body, []byte("<HttpNfcLeaseProgress")):
				progressCalls.Add(1)
			case bytes.Contains(body, []byte("<HttpNfcLeaseComplete")):
				completeCalls.Add(1)
			case bytes.Contains(body, []byte("<HttpNfcLeaseAbort")):
				abortCalls.Add(1)
			}
			r.Body = io.NopCloser(bytes.NewReader(body))
		}
		if r.Method == http.MethodGet && r.URL.Path == "/hsdk/stats" {
			w.Header().Set("Content-Type", "application/json")
			_ = json.NewEncoder(w).Encode(map[string]int64{
				"lease_progress": progressCalls.Load(),
				"lease_complete": completeCalls.Load(),
				"lease_abort":    abortCalls.Load(),
				"nfc_gets":       nfcGets.Load(),
				"nfc_ranged":     nfcRanged.Load(),
			})
			return
		}
		if r.Method == http.MethodGet && r.URL.Path == "/hsdk/nfc-host" {
			nfcMu.Lock()
			nfcHost = r.URL.Query().Get("addr")
			nfcMu.Unlock()
			w.WriteHeader(http.StatusNoContent)
			return
		}
		if r.Method == http.MethodGet && strings.HasPrefix(r.URL.Path, "/nfc/") {
			flatMu.Lock()
			flat, ok := flats[path.Base(r.URL.Path)]
			flatMu.Unlock()
			if ok {
				nfcGets.Add(1)
				if r.Header.Get("Range") != "" {
					nfcRanged.Add(1)
				}
				if nfcRange {
					serveCached(w, r, flat)
				} else {
					serveStreamOptimized(w, flat)
				}
				return
			}
		}
		inner.ServeHTTP(w, r)
	})

	for _, name := range opaque {
		if err := addOpaqueNetwork(model, name); err != nil {
			fatal("opaque network %s: %v", name, err)
		}
	}

	ctx := context.Background()
	client, err := vim25.NewClient(ctx, model.Service)
	if err != nil {
		fatal("in-process client: %v", err)
	}
	home := ""
	for _, o := range model.Map().OptionManager().Setting {
		if v := o.GetOptionValue(); v.Key == "vcsim.home" {
			home = v.Value.(string)
		}
	}
	datastores := map[string]string{}
	for _, ref := range model.Map().All("Datastore") {
		ds := ref.(*simulator.Datastore)
		datastores[ds.Name] = ds.Info.GetDatastoreInfo().Url
	}

	created := map[string][]string{}
	for _, spec := range vms {
		name, sizes, ok := strings.Cut(spec, "=")
		if !ok {
			fatal("bad -vm %q (want NAME=MIB[,MIB...][:on])", spec)
		}
		sizes, on := strings.CutSuffix(sizes, ":on")
		files, err := createVM(ctx, client, model, name, sizes, datastores, on)
		if err != nil {
			fatal("create VM %s: %v", name, err)
		}
		created[name] = files
	}

	cert := server.Certificate()
	sum := sha1.Sum(cert.Raw)
	thumb := make([]string, len(sum))
	for i, b := range sum {
		thumb[i] = fmt.Sprintf("%02X", b)
	}
	out, _ := json.Marshal(map[string]any{
		"url":        server.URL.String(),
		"home":       home,
		"datastores": datastores,
		"thumbprint": strings.Join(thumb, ":"),
		"ca_pem":     caPEM,
		"vms":        created,
	})
	fmt.Println(string(out))
	_, _ = io.Copy(io.Discard, os.Stdin) // run until the harness closes stdin
}

// makeCertificates makes a throw-away CA and a server certificate it signs
// for 127.0.0.1 and localhost, so clients can verify the server for real
// given the CA (the simulator's default certificate is a CA used as its own
// end entity, which strict verifiers refuse).
func makeCertificates() (string, tls.Certificate, error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", tls.Certificate{}, err
	}
	now := time.Now()
	ca := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "hypersdk test CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		return "", tls.Certificate{}, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", tls.Certificate{}, err
	}
	leaf := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "127.0.0.1"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		DNSNames:     []string{"localhost"},
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, leaf, ca, &key.PublicKey, caKey)
	if err != nil {
		return "", tls.Certificate{}, err
	}
	caPEM := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}))
	return caPEM, tls.Certificate{Certificate: [][]byte{leafDER}, PrivateKey: key}, nil
}

func fatal(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "vcsim-launcher: "+format+"\n", a...)
	os.Exit(1)
}

// createVM makes a powered-off VM NAME with one SCSI disk per size (MiB),
// files "[ds] NAME/NAME-diskN.vmdk", and records each disk's flat file.
func createVM(ctx context.Context, c *vim25.Client, model *simulator.Model, name, sizes string, datastores map[string]string, on bool) ([]string, error) {
	finder := find.NewFinder(c, true)
	dc, err := finder.DefaultDatacenter(ctx)
	if err != nil {
		return nil, err
	}
	finder.SetDatacenter(dc)
	folders, err := dc.Folders(ctx)
	if err != nil {
		return nil, err
	}
	pools, err := finder.ResourcePoolList(ctx, "*")
	if err != nil || len(pools) == 0 {
		return nil, fmt.Errorf("no resource pool: %v", err)
	}
	pool := pools[0]
	ds, err := finder.DefaultDatastore(ctx)
	if err != nil {
		return nil, err
	}
	dsName := ds.Name()
	var devices object.VirtualDeviceList
	scsi, err := devices.CreateSCSIController("pvscsi")
	if err != nil {
		return nil, err
	}
	devices = append(devices, scsi)
	ide, err := devices.CreateIDEController()
	if err != nil {
		return nil, err
	}
	devices = append(devices, ide)
	cdrom, err := devices.CreateCdrom(ide.(*types.VirtualIDEController))
	if err != nil {
		return nil, err
	}
	devices = append(devices, devices.InsertIso(cdrom, fmt.Sprintf("[%s] iso/install.iso", dsName)))
	var files []string
	for i, s := range strings.Split(sizes, ",") {
		mib, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("bad size %q", s)
		}
		file := fmt.Sprintf("%s/%s-disk%d.vmdk", name, name, i+1)
		disk := devices.CreateDisk(scsi.(types.BaseVirtualController), ds.Reference(), fmt.Sprintf("[%s] %s", dsName, file))
		disk.CapacityInKB = mib * 1024
		disk.CapacityInBytes = mib << 20
		devices = append(devices, disk)
		files = append(files, file)
	}
	nic, err := object.EthernetCardTypes().CreateEthernetCard("vmxnet3", &types.VirtualEthernetCardNetworkBackingInfo{
		VirtualDeviceDeviceBackingInfo: types.VirtualDeviceDeviceBackingInfo{DeviceName: "VM Network"},
	})
	if err != nil {
		return nil, err
	}
	devices = append(devices, nic)
	changes, err := devices.ConfigSpec(types.VirtualDeviceConfigSpecOperationAdd)
	if err != nil {
		return nil, err
	}
	for _, ch := range changes {
		if d, ok := ch.GetVirtualDeviceConfigSpec().Device.(*types.VirtualDisk); ok && d != nil {
			ch.GetVirtualDeviceConfigSpec().FileOperation = types.VirtualDeviceConfigSpecFileOperationCreate
		}
	}
	spec := types.VirtualMachineConfigSpec{
		Name:         name,
		GuestId:      string(types.VirtualMachineGuestOsIdentifierUbuntu64Guest),
		NumCPUs:      2,
		MemoryMB:     2048,
		Firmware:     string(types.GuestOsDescriptorFirmwareTypeEfi),
		DeviceChange: changes,
		Files:        &types.VirtualMachineFileInfo{VmPathName: fmt.Sprintf("[%s] %s/%s.vmx", dsName, name, name)},
	}
	task, err := folders.VmFolder.CreateVM(ctx, spec, pool, nil)
	if err != nil {
		return nil, err
	}
	info, err := task.WaitForResult(ctx, nil)
	if err != nil {
		return nil, err
	}
	if on {
		vm := object.NewVirtualMachine(c, info.Result.(types.ManagedObjectReference))
		ptask, err := vm.PowerOn(ctx)
		if err != nil {
			return nil, err
		}
		if err := ptask.Wait(ctx); err != nil {
			return nil, err
		}
	}
	dir := datastores[dsName]
	flatMu.Lock()
	defer flatMu.Unlock()
	for _, f := range files {
		flat := filepath.Join(dir, strings.TrimSuffix(f, ".vmdk")+"-flat.vmdk")
		flats[path.Base(f)] = flat
	}
	return files, nil
}

// serveExportVm answers VirtualMachine.ExportVm, which the simulator lacks,
// as the vSphere API reference describes it: InvalidPowerState unless the VM
// is powered off, else a ready HttpNfcLease whose device URLs serve the VM's
// disks. It is answered at the HTTP level because wrapping the simulator's
// VirtualMachine objects breaks the simulator's own type assertions (e.g. in
// snapshots). The lease lives in the global registry, where the property
// collector and HttpNfcLeaseComplete/Abort find it.
func serveExportVm(w http.ResponseWriter, body []byte, model *simulator.Model) {
	m := exportVmThis.FindSubmatch(body)
	if m == nil {
		soapFault(w, "ExportVm without _this", `<InvalidArgumentFault xmlns="urn:vim25" xsi:type="InvalidArgument"></InvalidArgumentFault>`)
		return
	}
	ref := types.ManagedObjectReference{Type: "VirtualMachine", Value: string(m[1])}
	obj, ok := model.Map().Get(ref).(*simulator.VirtualMachine)
	if !ok {
		soapFault(w, "The object has already been deleted or has not been completely created",
			`<ManagedObjectNotFoundFault xmlns="urn:vim25" xsi:type="ManagedObjectNotFound"><obj type="VirtualMachine">`+ref.Value+`</obj></ManagedObjectNotFoundFault>`)
		return
	}
	if obj.Runtime.PowerState != types.VirtualMachinePowerStatePoweredOff {
		soapFault(w, "The attempted operation cannot be performed in the current state ("+string(obj.Runtime.PowerState)+").",
			`<InvalidPowerStateFault xmlns="urn:vim25" xsi:type="InvalidPowerState"><requestedState>poweredOff</requestedState><existingState>`+string(obj.Runtime.PowerState)+`</existingState></InvalidPowerStateFault>`)
		return
	}
	lease := &simulator.HttpNfcLease{HttpNfcLease: mo.HttpNfcLease{
		State:              types.HttpNfcLeaseStateReady,
		InitializeProgress: 100,
		Mode:               string(types.HttpNfcLeaseModePushOrGet),
		Capabilities:       types.HttpNfcLeaseCapabilities{PullModeSupported: true},
	}}
	model.Map().Put(lease)
	u, _ := url.Parse(serverURL(model))
	nfcMu.Lock()
	if nfcHost != "" {
		u.Host = nfcHost
	}
	nfcMu.Unlock()
	var urls []types.HttpNfcLeaseDeviceUrl
	n := 0
	for _, d := range obj.Config.Hardware.Device {
		disk, ok := d.(*types.VirtualDisk)
		if !ok {
			continue
		}
		backing, ok := disk.Backing.(types.BaseVirtualDeviceFileBackingInfo)
		if !ok {
			continue
		}
		name := path.Base(backing.GetVirtualDeviceFileBackingInfo().FileName)
		u.Path = "/nfc/" + path.Join(lease.Self.Value, name)
		urls = append(urls, types.HttpNfcLeaseDeviceUrl{
			Key:       fmt.Sprintf("/%s/VirtualDisk:%d", obj.Self.Value, n),
			ImportKey: fmt.Sprintf("/%s/VirtualDisk:%d", obj.Name, n),
			Url:       u.String(),
			Disk:      types.NewBool(true),
			TargetId:  name,
		})
		n++
	}
	lease.Info = &types.HttpNfcLeaseInfo{
		Lease:        lease.Self,
		Entity:       obj.Self,
		DeviceUrl:    urls,
		LeaseTimeout: int32(leaseTimeout),
	}
	w.Header().Set("Content-Type", "text/xml; charset=utf-8")
	fmt.Fprintf(w, `<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body><ExportVmResponse xmlns="urn:vim25"><returnval type="HttpNfcLease">%s</returnval></ExportVmResponse></soapenv:Body></soapenv:Envelope>`, lease.Self.Value)
}

var exportVmThis = regexp.MustCompile(`<_this[^>]*type="VirtualMachine"[^>]*>\s*([^<\s]+)\s*</_this>`)

func soapFault(w http.ResponseWriter, msg, detail string) {
	w.Header().Set("Content-Type", "text/xml; charset=utf-8")
	w.WriteHeader(http.StatusInternalServerError)
	fmt.Fprintf(w, `<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body><soapenv:Fault><faultcode>ServerFaultCode</faultcode><faultstring>%s</faultstring><detail>%s</detail></soapenv:Fault></soapenv:Body></soapenv:Envelope>`, msg, detail)
}

func serverURL(model *simulator.Model) string {
	for _, o := range model.Map().OptionManager().Setting {
		if v := o.GetOptionValue(); v.Key == "vcsim.server.url" {
			return v.Value.(string)
		}
	}
	return ""
}

// serveStreamOptimized writes the flat disk at path as a streamOptimized
// VMDK in VMware's layout. A missing or short flat file reads as zeros up to
// the capacity the descriptor next to it declares.
func serveStreamOptimized(w http.ResponseWriter, flat string) {
	capacity, err := descriptorCapacity(strings.TrimSuffix(flat, "-flat.vmdk") + ".vmdk")
	if err != nil {
		http.Error(w, err.Error(), http.StatusNotFound)
		return
	}
	f, _ := os.Open(flat) // nil (all zeros) if missing
	if f != nil {
		defer f.Close()
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	bw := bufio.NewWriterSize(w, 1<<20)
	if err := writeStreamOptimized(bw, f, capacity); err != nil {
		return // the client sees a short body
	}
	_ = bw.Flush()
}

// serveCached serves the flat disk at path as a streamOptimized VMDK built
// once into a cache file (rebuilt if the flat file changes), honouring Range.
func serveCached(w http.ResponseWriter, r *http.Request, flat string) {
	capacity, err := descriptorCapacity(strings.TrimSuffix(flat, "-flat.vmdk") + ".vmdk")
	if err != nil {
		http.Error(w, err.Error(), http.StatusNotFound)
		return
	}
	key := flat
	if st, err := os.Stat(flat); err == nil {
		key = fmt.Sprintf("%s|%d|%d", flat, st.Size(), st.ModTime().UnixNano())
	}
	nfcMu.Lock()
	cached, ok := nfcCache[key]
	if !ok {
		// Built under the lock: concurrent first downloads wait for it.
		cached, err = buildCache(flat, capacity)
		if err == nil {
			nfcCache[key] = cached
		}
	}
	nfcMu.Unlock()
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	f, err := os.Open(cached)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	defer f.Close()
	w.Header().Set("Content-Type", "application/octet-stream")
	http.ServeContent(w, r, "", time.Time{}, f)
}

func buildCache(flat string, capacity int64) (string, error) {
	out, err := os.CreateTemp(cacheDir, "disk-*.vmdk")
	if err != nil {
		return "", err
	}
	defer out.Close()
	f, _ := os.Open(flat) // nil (all zeros) if missing
	if f != nil {
		defer f.Close()
	}
	bw := bufio.NewWriterSize(out, 1<<20)
	if err := writeStreamOptimized(bw, f, capacity); err != nil {
		os.Remove(out.Name())
		return "", err
	}
	if err := bw.Flush(); err != nil {
		os.Remove(out.Name())
		return "", err
	}
	return out.Name(), nil
}

// descriptorCapacity reads the extent size (sectors) of a text descriptor.
func descriptorCapacity(desc string) (int64, error) {
	b, err := os.ReadFile(desc)
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		fields := strings.Fields(line)
		if len(fields) >= 3 && (fields[0] == "RW" || fields[0] == "RDONLY") {
			return strconv.ParseInt(fields[1], 10, 64)
		}
	}
	return 0, fmt.Errorf("%s: no extent line", desc)
}

const (
	sector     = 512
	grainSecs  = 128 // 64 KiB grains
	gtEntries  = 512
	overhead   = 128 // sectors before the first grain: header + descriptor
	markerEOS  = 0
	markerGT   = 1
	markerGD   = 2
	markerFoot = 3
)

func header(capacity, gdOffset int64) []byte {
	h := make([]byte, sector)
	copy(h[0:4], "KDMV")
	le := binary.LittleEndian
	le.PutUint32(h[4:], 3)
	le.PutUint32(h[8:], 0x30001) // newline test, compressed grains, markers
	le.PutUint64(h[12:], uint64(capacity))
	le.PutUint64(h[20:], grainSecs)
	le.PutUint64(h[28:], 1)  // descriptor offset
	le.PutUint64(h[36:], 20) // descriptor size, sectors
	le.PutUint32(h[44:], gtEntries)
	le.PutUint64(h[48:], 0) // no redundant GD
	le.PutUint64(h[56:], uint64(gdOffset))
	le.PutUint64(h[64:], overhead)
	h[72] = 0
	copy(h[73:77], "\n \r\n")
	le.PutUint16(h[77:], 1) // deflate
	return h
}

func marker(value int64, size uint32, kind uint32) []byte {
	m := make([]byte, sector)
	binary.LittleEndian.PutUint64(m[0:], uint64(value))
	binary.LittleEndian.PutUint32(m[8:], size)
	binary.LittleEndian.PutUint32(m[12:], kind)
	return m
}

func writeStreamOptimized(w io.Writer, flat *os.File, capacity int64) error {
	pos := int64(0) // in sectors
	put := func(b []byte) error {
		if len(b)%sector != 0 {
			b = append(b, make([]byte, sector-len(b)%sector)...)
		}
		pos += int64(len(b) / sector)
		_, err := w.Write(b)
		return err
	}
	if err := put(header(capacity, -1)); err != nil {
		return err
	}
	desc := fmt.Sprintf("# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"streamOptimized\"\n\n"+
		"RW %d SPARSE \"disk.vmdk\"\n\nddb.adapterType = \"lsilogic\"\nddb.virtualHWVersion = \"14\"\n", capacity)
	area := make([]byte, (overhead-1)*sector)
	copy(area, desc)
	if err := put(area); err != nil {
		return err
	}
	grains := (capacity + grainSecs - 1) / grainSecs
	gt := make([]uint32, ((grains+gtEntries-1)/gtEntries)*gtEntries)
	buf := make([]byte, grainSecs*sector)
	var zbuf strings.Builder
	for g := int64(0); g < grains; g++ {
		for i := range buf {
			buf[i] = 0
		}
		n := 0
		if flat != nil {
			n, _ = io.ReadFull(flat, buf)
		}
		last := (capacity - g*grainSecs) * sector
		if last < int64(len(buf)) {
			for i := last; i < int64(len(buf)); i++ {
				buf[i] = 0
			}
		}
		_ = n
		if allZero(buf) {
			continue
		}
		zbuf.Reset()
		zw, _ := zlib.NewWriterLevel(&zbuf, zlib.BestSpeed)
		_, _ = zw.Write(buf)
		_ = zw.Close()
		gt[g] = uint32(pos)
		m := make([]byte, 12)
		binary.LittleEndian.PutUint64(m[0:], uint64(g*grainSecs))
		binary.LittleEndian.PutUint32(m[8:], uint32(zbuf.Len()))
		if err := put(append(m, zbuf.String()...)); err != nil {
			return err
		}
	}
	gd := make([]uint32, len(gt)/gtEntries)
	for t := range gd {
		if err := put(marker(gtEntries*4/sector, 0, markerGT)); err != nil {
			return err
		}
		gd[t] = uint32(pos)
		b := make([]byte, gtEntries*4)
		for i := 0; i < gtEntries; i++ {
			binary.LittleEndian.PutUint32(b[i*4:], gt[t*gtEntries+i])
		}
		if err := put(b); err != nil {
			return err
		}
	}
	gdBytes := make([]byte, len(gd)*4)
	for i, v := range gd {
		binary.LittleEndian.PutUint32(gdBytes[i*4:], v)
	}
	gdSecs := (len(gdBytes) + sector - 1) / sector
	if err := put(marker(int64(gdSecs), 0, markerGD)); err != nil {
		return err
	}
	gdOffset := pos
	if err := put(gdBytes); err != nil {
		return err
	}
	if err := put(marker(1, 0, markerFoot)); err != nil {
		return err
	}
	if err := put(header(capacity, gdOffset)); err != nil {
		return err
	}
	return put(marker(0, 0, markerEOS))
}

func allZero(b []byte) bool {
	for _, x := range b {
		if x != 0 {
			return false
		}
	}
	return true
}

// addOpaqueNetwork puts an opaque network into the first datacenter's
// network folder. The vSphere API has no method that creates one (NSX does),
// so the simulator's folder is called directly, as its own example does.
// Its type is not "nsx.LogicalSwitch": the simulator swaps a NIC backing of
// that type for the NSX portgroup of the same switch (vSphere 7 on a VDS),
// and a NIC on an N-VDS host keeps its opaque backing, which is the case
// tested.
func addOpaqueNetwork(model *simulator.Model, name string) error {
	for _, e := range model.Map().All("Folder") {
		f, ok := e.(*simulator.Folder)
		if !ok || f.Name != "network" {
			continue
		}
		return f.AddOpaqueNetwork(model.Service.Context, types.OpaqueNetworkSummary{
			NetworkSummary:    types.NetworkSummary{Name: name},
			OpaqueNetworkType: "nsx.segment",
		})
	}
	return fmt.Errorf("no network folder")
}
