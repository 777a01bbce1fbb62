package disktest

import (
	"sync/atomic"
	"syscall"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/cockroachdb/pebble/v2/vfs/errorfs"
)

// Faults is errorfs.Wrap(fs, inj) that also hands to inj the operations
// on files Pebble recycles (ReuseForWrite: old WAL files), which
// errorfs leaves unwrapped.
func Faults(fs vfs.FS, inj errorfs.Injector) vfs.FS {
	return faultFS{errorfs.Wrap(fs, inj), inj}
}

type faultFS struct {
	*errorfs.FS
	inj errorfs.Injector
}

func (fs faultFS) ReuseForWrite(oldname, newname string, category vfs.DiskWriteCategory) (vfs.File, error) {
	f, err := fs.FS.ReuseForWrite(oldname, newname, category)
	if err != nil {
		return nil, err
	}
	return errorfs.WrapFile(f, errorfs.InjectorFunc(func(op errorfs.Op) error {
		if op.Path == "" {
			op.Path = newname
		}
		return fs.inj.MaybeError(op)
	})), nil
}

// Injected is an in-memory file system that a test makes full: then it
// reports 4 KiB free and fails every create, write and preallocation
// with ENOSPC. It runs everywhere, with no mount.
type Injected struct {
	FS   vfs.FS
	mem  *vfs.MemFS
	full atomic.Bool
}

var roomy = vfs.DiskUsage{AvailBytes: 1 << 30, TotalBytes: 2 << 30}

// NewInjected returns an empty Injected file system with 1 GiB free.
func NewInjected() *Injected {
	d := &Injected{mem: vfs.NewMem()}
	d.mem.TestingSetDiskUsage(roomy)
	d.FS = Faults(d.mem, errorfs.InjectorFunc(func(op errorfs.Op) error {
		switch op.Kind {
		case errorfs.OpCreate, errorfs.OpReuseForWrite, errorfs.OpFileWrite, errorfs.OpFileWriteAt, errorfs.OpFilePreallocate:
			if d.full.Load() {
				return syscall.ENOSPC
			}
		}
		return nil
	}))
	return d
}

// Fill makes the file system full.
func (d *Injected) Fill() {
	d.mem.TestingSetDiskUsage(vfs.DiskUsage{AvailBytes: 4096, TotalBytes: roomy.TotalBytes})
	d.full.Store(true)
}

// Free gives it 1 GiB free again.
func (d *Injected) Free() {
	d.full.Store(false)
	d.mem.TestingSetDiskUsage(roomy)
}
