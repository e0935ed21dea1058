package fuse

import (
	"fmt"
	"unsafe"
)

// Wire is the set of fixed-layout FUSE structs that may be decoded from or
// encoded to raw bytes. They contain no pointers and no implicit padding.
type Wire interface {
	InHeader | OutHeader | Attr | EntryOut | AttrOut | ForgetIn | ForgetOne |
		BatchForgetIn | GetattrIn | SetattrIn | MknodIn | MkdirIn | RenameIn |
		Rename2In | LinkIn | OpenIn | CreateIn | OpenOut | ReleaseIn | FlushIn |
		ReadIn | WriteIn | WriteOut | Kstatfs | FsyncIn | SetxattrIn | GetxattrIn |
		GetxattrOut | FileLock | LkIn | LkOut | AccessIn | InitIn | InitOut |
		InterruptIn | Dirent | FallocateIn | LseekIn | LseekOut | CopyFileRangeIn |
		SyncfsIn | SxTime | Statx | StatxIn | StatxOut
}

// Parse copies the first sizeof(T) bytes of b into v and returns the rest.
// It reports false, leaving v untouched, when b is too short: the length is
// always checked before any byte is interpreted.
func Parse[T Wire](b []byte, v *T) ([]byte, bool) {
	n := int(unsafe.Sizeof(*v))
	if len(b) < n {
		return b, false
	}
	copy(unsafe.Slice((*byte)(unsafe.Pointer(v)), n), b[:n])
	return b[n:], true
}

// ParsePrefix is Parse for wire structs that grew over protocol versions: it
// copies min(len(b), sizeof(T)) bytes, zeroes the rest of v, and reports
// false only when b is shorter than min.
func ParsePrefix[T Wire](b []byte, v *T, min int) bool {
	n := int(unsafe.Sizeof(*v))
	if len(b) < min || min > n {
		return false
	}
	*v = *new(T)
	copy(unsafe.Slice((*byte)(unsafe.Pointer(v)), n), b)
	return true
}

// Bytes returns the wire bytes of *v, aliasing v (no copy).
func Bytes[T Wire](v *T) []byte {
	return unsafe.Slice((*byte)(unsafe.Pointer(v)), unsafe.Sizeof(*v))
}

// wireSizes lists every wire struct with its size in the C headers.
var wireSizes = []struct {
	name      string
	got, want uintptr
}{
	{"fuse_in_header", unsafe.Sizeof(InHeader{}), InHeaderSize},
	{"fuse_out_header", unsafe.Sizeof(OutHeader{}), OutHeaderSize},
	{"fuse_attr", unsafe.Sizeof(Attr{}), AttrSize},
	{"fuse_entry_out", unsafe.Sizeof(EntryOut{}), EntryOutSize},
	{"fuse_attr_out", unsafe.Sizeof(AttrOut{}), AttrOutSize},
	{"fuse_forget_in", unsafe.Sizeof(ForgetIn{}), ForgetInSize},
	{"fuse_forget_one", unsafe.Sizeof(ForgetOne{}), ForgetOneSize},
	{"fuse_batch_forget_in", unsafe.Sizeof(BatchForgetIn{}), BatchForgetInSize},
	{"fuse_getattr_in", unsafe.Sizeof(GetattrIn{}), GetattrInSize},
	{"fuse_setattr_in", unsafe.Sizeof(SetattrIn{}), SetattrInSize},
	{"fuse_mknod_in", unsafe.Sizeof(MknodIn{}), MknodInSize},
	{"fuse_mkdir_in", unsafe.Sizeof(MkdirIn{}), MkdirInSize},
	{"fuse_rename_in", unsafe.Sizeof(RenameIn{}), RenameInSize},
	{"fuse_rename2_in", unsafe.Sizeof(Rename2In{}), Rename2InSize},
	{"fuse_link_in", unsafe.Sizeof(LinkIn{}), LinkInSize},
	{"fuse_open_in", unsafe.Sizeof(OpenIn{}), OpenInSize},
	{"fuse_create_in", unsafe.Sizeof(CreateIn{}), CreateInSize},
	{"fuse_open_out", unsafe.Sizeof(OpenOut{}), OpenOutSize},
	{"fuse_release_in", unsafe.Sizeof(ReleaseIn{}), ReleaseInSize},
	{"fuse_flush_in", unsafe.Sizeof(FlushIn{}), FlushInSize},
	{"fuse_read_in", unsafe.Sizeof(ReadIn{}), ReadInSize},
	{"fuse_write_in", unsafe.Sizeof(WriteIn{}), WriteInSize},
	{"fuse_write_out", unsafe.Sizeof(WriteOut{}), WriteOutSize},
	{"fuse_kstatfs", unsafe.Sizeof(Kstatfs{}), KstatfsSize},
	{"fuse_fsync_in", unsafe.Sizeof(FsyncIn{}), FsyncInSize},
	{"fuse_setxattr_in", unsafe.Sizeof(SetxattrIn{}), SetxattrInSize},
	{"fuse_getxattr_in", unsafe.Sizeof(GetxattrIn{}), GetxattrInSize},
	{"fuse_getxattr_out", unsafe.Sizeof(GetxattrOut{}), GetxattrOutSize},
	{"fuse_file_lock", unsafe.Sizeof(FileLock{}), FileLockSize},
	{"fuse_lk_in", unsafe.Sizeof(LkIn{}), LkInSize},
	{"fuse_lk_out", unsafe.Sizeof(LkOut{}), LkOutSize},
	{"fuse_access_in", unsafe.Sizeof(AccessIn{}), AccessInSize},
	{"fuse_init_in", unsafe.Sizeof(InitIn{}), InitInSize},
	{"fuse_init_out", unsafe.Sizeof(InitOut{}), InitOutSize},
	{"fuse_interrupt_in", unsafe.Sizeof(InterruptIn{}), InterruptInSize},
	{"fuse_dirent", unsafe.Sizeof(Dirent{}), DirentSize},
	{"fuse_fallocate_in", unsafe.Sizeof(FallocateIn{}), FallocateInSize},
	{"fuse_lseek_in", unsafe.Sizeof(LseekIn{}), LseekInSize},
	{"fuse_lseek_out", unsafe.Sizeof(LseekOut{}), LseekOutSize},
	{"fuse_copy_file_range_in", unsafe.Sizeof(CopyFileRangeIn{}), CopyFileRangeInSize},
	{"fuse_syncfs_in", unsafe.Sizeof(SyncfsIn{}), SyncfsInSize},
	{"fuse_sx_time", unsafe.Sizeof(SxTime{}), SxTimeSize},
	{"fuse_statx", unsafe.Sizeof(Statx{}), StatxSize},
	{"fuse_statx_in", unsafe.Sizeof(StatxIn{}), StatxInSize},
	{"fuse_statx_out", unsafe.Sizeof(StatxOut{}), StatxOutSize},
}

// checkLayout returns an error naming the first struct whose Go size differs
// from its C size.
func checkLayout() error {
	for _, s := range wireSizes {
		if s.got != s.want {
			return fmt.Errorf("fuse: %s is %d bytes, want %d", s.name, s.got, s.want)
		}
	}
	return nil
}

func init() {
	// A mismatch is a build defect, not a runtime condition: refuse to run.
	if err := checkLayout(); err != nil {
		panic(err)
	}
}
