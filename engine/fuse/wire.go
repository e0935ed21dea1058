package fuse

// Wire layout of the FUSE protocol (Linux include/uapi/linux/fuse.h). All
// integers are little-endian on the platforms vfsd supports.

// Protocol version vfsd speaks. It negotiates down to the guest's minor.
const (
	KernelVersion      = 7
	KernelMinorVersion = 38
	RootID             = 1 // nodeid of the shared directory's root
)

// InHeader is struct fuse_in_header.
type InHeader struct {
	Len         uint32
	Opcode      uint32
	Unique      uint64
	NodeID      uint64
	UID         uint32
	GID         uint32
	PID         uint32
	TotalExtlen uint16 // FUSE 7.38: length of extensions in 8-byte units
	Padding     uint16
}

// OutHeader is struct fuse_out_header.
type OutHeader struct {
	Len    uint32
	Error  int32
	Unique uint64
}

const (
	InHeaderSize  = 40
	OutHeaderSize = 16
	WriteInSize   = 40 // struct fuse_write_in
)

// Opcodes (enum fuse_opcode).
const (
	OpLookup        = 1
	OpForget        = 2
	OpGetattr       = 3
	OpSetattr       = 4
	OpReadlink      = 5
	OpSymlink       = 6
	OpMknod         = 8
	OpMkdir         = 9
	OpUnlink        = 10
	OpRmdir         = 11
	OpRename        = 12
	OpLink          = 13
	OpOpen          = 14
	OpRead          = 15
	OpWrite         = 16
	OpStatfs        = 17
	OpRelease       = 18
	OpFsync         = 20
	OpSetxattr      = 21
	OpGetxattr      = 22
	OpListxattr     = 23
	OpRemovexattr   = 24
	OpFlush         = 25
	OpInit          = 26
	OpOpendir       = 27
	OpReaddir       = 28
	OpReleasedir    = 29
	OpFsyncdir      = 30
	OpGetlk         = 31
	OpSetlk         = 32
	OpSetlkw        = 33
	OpAccess        = 34
	OpCreate        = 35
	OpInterrupt     = 36
	OpBmap          = 37
	OpDestroy       = 38
	OpIoctl         = 39
	OpPoll          = 40
	OpNotifyReply   = 41
	OpBatchForget   = 42
	OpFallocate     = 43
	OpReaddirplus   = 44
	OpRename2       = 45
	OpLseek         = 46
	OpCopyFileRange = 47
	OpSetupmapping  = 48
	OpRemovemapping = 49
	OpSyncfs        = 50
	OpTmpfile       = 51
	OpStatx         = 52
	OpMax           = 64 // size of opcode-indexed tables
)

// Blocking reports whether requests with opcode op may block for long (on
// disk flushes or on another process's lock) and so run off the queue thread,
// completing out of order.
func Blocking(op uint32) bool {
	switch op {
	case OpFsync, OpFsyncdir, OpSyncfs, OpSetlkw, OpFallocate, OpCopyFileRange:
		return true
	}
	return false
}

// INIT flags (fuse_init_in/out.flags; bits 32..63 travel in flags2 when
// FlagInitExt is set). vfsd keeps them as one uint64.
const (
	FlagAsyncRead         = 1 << 0
	FlagPosixLocks        = 1 << 1
	FlagFileOps           = 1 << 2
	FlagAtomicOTrunc      = 1 << 3
	FlagExportSupport     = 1 << 4
	FlagBigWrites         = 1 << 5
	FlagDontMask          = 1 << 6
	FlagSpliceWrite       = 1 << 7
	FlagSpliceMove        = 1 << 8
	FlagSpliceRead        = 1 << 9
	FlagFlockLocks        = 1 << 10
	FlagHasIoctlDir       = 1 << 11
	FlagAutoInvalData     = 1 << 12
	FlagDoReaddirplus     = 1 << 13
	FlagReaddirplusAuto   = 1 << 14
	FlagAsyncDIO          = 1 << 15
	FlagWritebackCache    = 1 << 16
	FlagNoOpenSupport     = 1 << 17
	FlagParallelDirops    = 1 << 18
	FlagHandleKillpriv    = 1 << 19
	FlagPosixACL          = 1 << 20
	FlagAbortError        = 1 << 21
	FlagMaxPages          = 1 << 22
	FlagCacheSymlinks     = 1 << 23
	FlagNoOpendirSupport  = 1 << 24
	FlagExplicitInvalData = 1 << 25
	FlagMapAlignment      = 1 << 26
	FlagSubmounts         = 1 << 27
	FlagHandleKillprivV2  = 1 << 28
	FlagSetxattrExt       = 1 << 29
	FlagInitExt           = 1 << 30
	FlagInitReserved      = 1 << 31
	FlagSecurityCtx       = 1 << 32
	FlagHasInodeDAX       = 1 << 33
	FlagCreateSuppGroup   = 1 << 34
)

// Other protocol flags.
const (
	// fuse_getattr_in.getattr_flags
	GetattrFH = 1 << 0

	// fuse_setattr_in.valid
	FattrMode        = 1 << 0
	FattrUID         = 1 << 1
	FattrGID         = 1 << 2
	FattrSize        = 1 << 3
	FattrAtime       = 1 << 4
	FattrMtime       = 1 << 5
	FattrFH          = 1 << 6
	FattrAtimeNow    = 1 << 7
	FattrMtimeNow    = 1 << 8
	FattrLockOwner   = 1 << 9
	FattrCtime       = 1 << 10
	FattrKillSuidgid = 1 << 11

	// fuse_open_out.open_flags
	FopenDirectIO    = 1 << 0
	FopenKeepCache   = 1 << 1
	FopenNonseekable = 1 << 2
	FopenCacheDir    = 1 << 3
	FopenStream      = 1 << 4
	FopenNoFlush     = 1 << 5

	// fuse_open_in/fuse_create_in.open_flags
	OpenKillSuidgid = 1 << 0

	// fuse_release_in.release_flags
	ReleaseFlush       = 1 << 0
	ReleaseFlockUnlock = 1 << 1

	// fuse_write_in.write_flags
	WriteCache       = 1 << 0
	WriteLockOwner   = 1 << 1
	WriteKillSuidgid = 1 << 2

	// fuse_read_in.read_flags
	ReadLockOwner = 1 << 1

	// fuse_lk_in.lk_flags
	LkFlock = 1 << 0

	// fuse_fsync_in.fsync_flags
	FsyncFdatasync = 1 << 0

	// fuse_setxattr_in.setxattr_flags
	SetxattrACLKillSgid = 1 << 0

	// fuse_attr.flags
	AttrSubmount = 1 << 0
)

// Sizes of the C structs, checked against the Go types at init and in tests.
const (
	AttrSize            = 88
	EntryOutSize        = 128
	AttrOutSize         = 104
	ForgetInSize        = 8
	ForgetOneSize       = 16
	BatchForgetInSize   = 8
	GetattrInSize       = 16
	SetattrInSize       = 88
	MknodInSize         = 16
	MkdirInSize         = 8
	RenameInSize        = 8
	Rename2InSize       = 16
	LinkInSize          = 8
	OpenInSize          = 8
	CreateInSize        = 16
	OpenOutSize         = 16
	ReleaseInSize       = 24
	FlushInSize         = 24
	ReadInSize          = 40
	WriteOutSize        = 8
	KstatfsSize         = 80
	FsyncInSize         = 16
	SetxattrInSize      = 16 // with FlagSetxattrExt
	SetxattrInCompat    = 8  // without it
	GetxattrInSize      = 8
	GetxattrOutSize     = 8
	FileLockSize        = 24
	LkInSize            = 48
	LkOutSize           = 24
	AccessInSize        = 8
	InitInSize          = 64
	InitInCompatSize    = 16 // before 7.36 (no flags2)
	InitOutSize         = 64
	InitOutCompat5      = 8  // minor < 5
	InitOutCompat22     = 24 // minor < 23
	InterruptInSize     = 8
	DirentSize          = 24 // header before the name
	DirentplusSize      = EntryOutSize + DirentSize
	FallocateInSize     = 32
	LseekInSize         = 24
	LseekOutSize        = 8
	CopyFileRangeInSize = 56
	SyncfsInSize        = 8
	SxTimeSize          = 16
	StatxSize           = 256
	StatxInSize         = 24
	StatxOutSize        = 288
)

// Attr is struct fuse_attr.
type Attr struct {
	Ino       uint64
	Size      uint64
	Blocks    uint64
	Atime     uint64
	Mtime     uint64
	Ctime     uint64
	Atimensec uint32
	Mtimensec uint32
	Ctimensec uint32
	Mode      uint32
	Nlink     uint32
	UID       uint32
	GID       uint32
	Rdev      uint32 // new_encode_dev format
	Blksize   uint32
	Flags     uint32
}

// EntryOut is struct fuse_entry_out.
type EntryOut struct {
	NodeID         uint64
	Generation     uint64
	EntryValid     uint64
	AttrValid      uint64
	EntryValidNsec uint32
	AttrValidNsec  uint32
	Attr           Attr
}

// AttrOut is struct fuse_attr_out.
type AttrOut struct {
	AttrValid     uint64
	AttrValidNsec uint32
	Dummy         uint32
	Attr          Attr
}

// ForgetIn is struct fuse_forget_in.
type ForgetIn struct{ Nlookup uint64 }

// ForgetOne is struct fuse_forget_one.
type ForgetOne struct{ NodeID, Nlookup uint64 }

// BatchForgetIn is struct fuse_batch_forget_in, followed by Count ForgetOne.
type BatchForgetIn struct{ Count, Dummy uint32 }

// GetattrIn is struct fuse_getattr_in.
type GetattrIn struct {
	GetattrFlags uint32
	Dummy        uint32
	Fh           uint64
}

// SetattrIn is struct fuse_setattr_in.
type SetattrIn struct {
	Valid     uint32
	Padding   uint32
	Fh        uint64
	Size      uint64
	LockOwner uint64
	Atime     uint64
	Mtime     uint64
	Ctime     uint64
	Atimensec uint32
	Mtimensec uint32
	Ctimensec uint32
	Mode      uint32
	Unused4   uint32
	UID       uint32
	GID       uint32
	Unused5   uint32
}

// MknodIn is struct fuse_mknod_in, followed by the name.
type MknodIn struct{ Mode, Rdev, Umask, Padding uint32 }

// MkdirIn is struct fuse_mkdir_in, followed by the name.
type MkdirIn struct{ Mode, Umask uint32 }

// RenameIn is struct fuse_rename_in, followed by old and new names.
type RenameIn struct{ Newdir uint64 }

// Rename2In is struct fuse_rename2_in, followed by old and new names.
type Rename2In struct {
	Newdir  uint64
	Flags   uint32
	Padding uint32
}

// LinkIn is struct fuse_link_in, followed by the new name.
type LinkIn struct{ Oldnodeid uint64 }

// OpenIn is struct fuse_open_in.
type OpenIn struct{ Flags, OpenFlags uint32 }

// CreateIn is struct fuse_create_in, followed by the name.
type CreateIn struct{ Flags, Mode, Umask, OpenFlags uint32 }

// OpenOut is struct fuse_open_out.
type OpenOut struct {
	Fh        uint64
	OpenFlags uint32
	Padding   uint32
}

// ReleaseIn is struct fuse_release_in.
type ReleaseIn struct {
	Fh           uint64
	Flags        uint32
	ReleaseFlags uint32
	LockOwner    uint64
}

// FlushIn is struct fuse_flush_in.
type FlushIn struct {
	Fh        uint64
	Unused    uint32
	Padding   uint32
	LockOwner uint64
}

// ReadIn is struct fuse_read_in (also READDIR/READDIRPLUS).
type ReadIn struct {
	Fh        uint64
	Offset    uint64
	Size      uint32
	ReadFlags uint32
	LockOwner uint64
	Flags     uint32
	Padding   uint32
}

// WriteIn is struct fuse_write_in; the payload follows (Request.Data).
type WriteIn struct {
	Fh         uint64
	Offset     uint64
	Size       uint32
	WriteFlags uint32
	LockOwner  uint64
	Flags      uint32
	Padding    uint32
}

// WriteOut is struct fuse_write_out (also COPY_FILE_RANGE).
type WriteOut struct{ Size, Padding uint32 }

// Kstatfs is struct fuse_kstatfs (= fuse_statfs_out).
type Kstatfs struct {
	Blocks  uint64
	Bfree   uint64
	Bavail  uint64
	Files   uint64
	Ffree   uint64
	Bsize   uint32
	Namelen uint32
	Frsize  uint32
	Padding uint32
	Spare   [6]uint32
}

// FsyncIn is struct fuse_fsync_in.
type FsyncIn struct {
	Fh         uint64
	FsyncFlags uint32
	Padding    uint32
}

// SetxattrIn is struct fuse_setxattr_in in its FlagSetxattrExt form; without
// that flag only Size and Flags are on the wire (SetxattrInCompat bytes).
type SetxattrIn struct{ Size, Flags, SetxattrFlags, Padding uint32 }

// GetxattrIn is struct fuse_getxattr_in (also LISTXATTR).
type GetxattrIn struct{ Size, Padding uint32 }

// GetxattrOut is struct fuse_getxattr_out.
type GetxattrOut struct{ Size, Padding uint32 }

// FileLock is struct fuse_file_lock. End is inclusive; OFFSET_MAX means EOF.
type FileLock struct {
	Start uint64
	End   uint64
	Type  uint32
	PID   uint32
}

// LkIn is struct fuse_lk_in.
type LkIn struct {
	Fh      uint64
	Owner   uint64
	Lk      FileLock
	LkFlags uint32
	Padding uint32
}

// LkOut is struct fuse_lk_out.
type LkOut struct{ Lk FileLock }

// AccessIn is struct fuse_access_in.
type AccessIn struct{ Mask, Padding uint32 }

// InitIn is struct fuse_init_in. Guests older than 7.36 send only the first
// InitInCompatSize bytes.
type InitIn struct {
	Major        uint32
	Minor        uint32
	MaxReadahead uint32
	Flags        uint32
	Flags2       uint32
	Unused       [11]uint32
}

// InitOut is struct fuse_init_out.
type InitOut struct {
	Major               uint32
	Minor               uint32
	MaxReadahead        uint32
	Flags               uint32
	MaxBackground       uint16
	CongestionThreshold uint16
	MaxWrite            uint32
	TimeGran            uint32
	MaxPages            uint16
	MapAlignment        uint16
	Flags2              uint32
	Unused              [7]uint32
}

// InterruptIn is struct fuse_interrupt_in.
type InterruptIn struct{ Unique uint64 }

// Dirent is the header of struct fuse_dirent; Namelen name bytes follow,
// padded to 8 bytes.
type Dirent struct {
	Ino     uint64
	Off     uint64
	Namelen uint32
	Type    uint32
}

// FallocateIn is struct fuse_fallocate_in.
type FallocateIn struct {
	Fh      uint64
	Offset  uint64
	Length  uint64
	Mode    uint32
	Padding uint32
}

// LseekIn is struct fuse_lseek_in.
type LseekIn struct {
	Fh      uint64
	Offset  uint64
	Whence  uint32
	Padding uint32
}

// LseekOut is struct fuse_lseek_out.
type LseekOut struct{ Offset uint64 }

// CopyFileRangeIn is struct fuse_copy_file_range_in.
type CopyFileRangeIn struct {
	FhIn      uint64
	OffIn     uint64
	NodeidOut uint64
	FhOut     uint64
	OffOut    uint64
	Len       uint64
	Flags     uint64
}

// SyncfsIn is struct fuse_syncfs_in.
type SyncfsIn struct{ Padding uint64 }

// SxTime is struct fuse_sx_time.
type SxTime struct {
	Sec      int64
	Nsec     uint32
	Reserved int32
}

// Statx is struct fuse_statx.
type Statx struct {
	Mask           uint32
	Blksize        uint32
	Attributes     uint64
	Nlink          uint32
	UID            uint32
	GID            uint32
	Mode           uint16
	Spare0         uint16
	Ino            uint64
	Size           uint64
	Blocks         uint64
	AttributesMask uint64
	Atime          SxTime
	Btime          SxTime
	Ctime          SxTime
	Mtime          SxTime
	RdevMajor      uint32
	RdevMinor      uint32
	DevMajor       uint32
	DevMinor       uint32
	Spare2         [14]uint64
}

// StatxIn is struct fuse_statx_in.
type StatxIn struct {
	GetattrFlags uint32
	Reserved     uint32
	Fh           uint64
	SxFlags      uint32
	SxMask       uint32
}

// StatxOut is struct fuse_statx_out.
type StatxOut struct {
	AttrValid     uint64
	AttrValidNsec uint32
	Flags         uint32
	Spare         [2]uint64
	Stat          Statx
}
