package metrics

import (
	"strconv"

	"vfsd/engine/fuse"
)

var opNames = [NumOpcodes]string{
	0:                    "OTHER",
	fuse.OpLookup:        "LOOKUP",
	fuse.OpForget:        "FORGET",
	fuse.OpGetattr:       "GETATTR",
	fuse.OpSetattr:       "SETATTR",
	fuse.OpReadlink:      "READLINK",
	fuse.OpSymlink:       "SYMLINK",
	fuse.OpMknod:         "MKNOD",
	fuse.OpMkdir:         "MKDIR",
	fuse.OpUnlink:        "UNLINK",
	fuse.OpRmdir:         "RMDIR",
	fuse.OpRename:        "RENAME",
	fuse.OpLink:          "LINK",
	fuse.OpOpen:          "OPEN",
	fuse.OpRead:          "READ",
	fuse.OpWrite:         "WRITE",
	fuse.OpStatfs:        "STATFS",
	fuse.OpRelease:       "RELEASE",
	fuse.OpFsync:         "FSYNC",
	fuse.OpSetxattr:      "SETXATTR",
	fuse.OpGetxattr:      "GETXATTR",
	fuse.OpListxattr:     "LISTXATTR",
	fuse.OpRemovexattr:   "REMOVEXATTR",
	fuse.OpFlush:         "FLUSH",
	fuse.OpInit:          "INIT",
	fuse.OpOpendir:       "OPENDIR",
	fuse.OpReaddir:       "READDIR",
	fuse.OpReleasedir:    "RELEASEDIR",
	fuse.OpFsyncdir:      "FSYNCDIR",
	fuse.OpGetlk:         "GETLK",
	fuse.OpSetlk:         "SETLK",
	fuse.OpSetlkw:        "SETLKW",
	fuse.OpAccess:        "ACCESS",
	fuse.OpCreate:        "CREATE",
	fuse.OpInterrupt:     "INTERRUPT",
	fuse.OpBmap:          "BMAP",
	fuse.OpDestroy:       "DESTROY",
	fuse.OpIoctl:         "IOCTL",
	fuse.OpPoll:          "POLL",
	fuse.OpNotifyReply:   "NOTIFY_REPLY",
	fuse.OpBatchForget:   "BATCH_FORGET",
	fuse.OpFallocate:     "FALLOCATE",
	fuse.OpReaddirplus:   "READDIRPLUS",
	fuse.OpRename2:       "RENAME2",
	fuse.OpLseek:         "LSEEK",
	fuse.OpCopyFileRange: "COPY_FILE_RANGE",
	fuse.OpSetupmapping:  "SETUPMAPPING",
	fuse.OpRemovemapping: "REMOVEMAPPING",
	fuse.OpSyncfs:        "SYNCFS",
	fuse.OpTmpfile:       "TMPFILE",
	fuse.OpStatx:         "STATX",
}

// OpName is the FUSE name of opcode op as used in labels ("OTHER" for 0
// and anything at or above NumOpcodes, "OP_<n>" for an unnamed one below).
func OpName(op uint32) string {
	if op >= NumOpcodes {
		return opNames[0]
	}
	if n := opNames[op]; n != "" {
		return n
	}
	return "OP_" + strconv.FormatUint(uint64(op), 10)
}
