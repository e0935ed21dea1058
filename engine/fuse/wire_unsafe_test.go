package fuse

import (
	"testing"
	"unsafe"
)

func TestLayoutMatchesC(t *testing.T) {
	if err := checkLayout(); err != nil {
		t.Fatal(err)
	}
	// Field offsets in include/uapi/linux/fuse.h (x86_64 and arm64 alike).
	offs := []struct {
		name      string
		got, want uintptr
	}{
		{"fuse_in_header.total_extlen", unsafe.Offsetof(InHeader{}.TotalExtlen), 36},
		{"fuse_attr.atimensec", unsafe.Offsetof(Attr{}.Atimensec), 48},
		{"fuse_attr.rdev", unsafe.Offsetof(Attr{}.Rdev), 76},
		{"fuse_attr.flags", unsafe.Offsetof(Attr{}.Flags), 84},
		{"fuse_entry_out.attr", unsafe.Offsetof(EntryOut{}.Attr), 40},
		{"fuse_attr_out.attr", unsafe.Offsetof(AttrOut{}.Attr), 16},
		{"fuse_setattr_in.atimensec", unsafe.Offsetof(SetattrIn{}.Atimensec), 56},
		{"fuse_setattr_in.mode", unsafe.Offsetof(SetattrIn{}.Mode), 68},
		{"fuse_setattr_in.uid", unsafe.Offsetof(SetattrIn{}.UID), 76},
		{"fuse_read_in.flags", unsafe.Offsetof(ReadIn{}.Flags), 32},
		{"fuse_write_in.write_flags", unsafe.Offsetof(WriteIn{}.WriteFlags), 20},
		{"fuse_lk_in.lk", unsafe.Offsetof(LkIn{}.Lk), 16},
		{"fuse_lk_in.lk_flags", unsafe.Offsetof(LkIn{}.LkFlags), 40},
		{"fuse_init_in.flags2", unsafe.Offsetof(InitIn{}.Flags2), 16},
		{"fuse_init_out.max_write", unsafe.Offsetof(InitOut{}.MaxWrite), 20},
		{"fuse_init_out.max_pages", unsafe.Offsetof(InitOut{}.MaxPages), 28},
		{"fuse_init_out.flags2", unsafe.Offsetof(InitOut{}.Flags2), 32},
		{"fuse_kstatfs.bsize", unsafe.Offsetof(Kstatfs{}.Bsize), 40},
		{"fuse_copy_file_range_in.flags", unsafe.Offsetof(CopyFileRangeIn{}.Flags), 48},
		{"fuse_statx.mode", unsafe.Offsetof(Statx{}.Mode), 28},
		{"fuse_statx.ino", unsafe.Offsetof(Statx{}.Ino), 32},
		{"fuse_statx.atime", unsafe.Offsetof(Statx{}.Atime), 64},
		{"fuse_statx.rdev_major", unsafe.Offsetof(Statx{}.RdevMajor), 128},
		{"fuse_statx_out.stat", unsafe.Offsetof(StatxOut{}.Stat), 32},
		{"fuse_statx_in.sx_mask", unsafe.Offsetof(StatxIn{}.SxMask), 20},
		{"fuse_fallocate_in.mode", unsafe.Offsetof(FallocateIn{}.Mode), 24},
	}
	for _, o := range offs {
		if o.got != o.want {
			t.Errorf("%s at %d, want %d", o.name, o.got, o.want)
		}
	}
}
