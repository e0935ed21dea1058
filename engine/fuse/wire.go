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
