package fuseclient

import (
	"encoding/binary"
	"fmt"
)

// Sizes of FUSE wire structs (include/uapi/linux/fuse.h, 7.38/7.39).
const (
	InHeaderSize     = 40
	OutHeaderSize    = 16
	AttrSize         = 88
	EntryOutSize     = 40 + AttrSize
	AttrOutSize      = 16 + AttrSize
	OpenOutSize      = 16
	InitInSize       = 64
	InitOutSize      = 64
	WriteInSize      = 40
	ReadInSize       = 40
	KstatfsSize      = 80
	FileLockSize     = 24
	LkInSize         = 48
	StatxSize        = 256
	StatxOutSize     = 32 + StatxSize
	DirentSize       = 24 // without the name
	SetattrInSize    = 88
	CopyFileRangeIn  = 56
	SetxattrInSize   = 16 // with FUSE_SETXATTR_EXT
	SetxattrInCompat = 8
)

// INIT flags (fuse_init_in.flags | flags2 << 32).
const (
	InitAsyncRead         = 1 << 0
	InitPosixLocks        = 1 << 1
	InitFileOps           = 1 << 2
	InitAtomicOTrunc      = 1 << 3
	InitExportSupport     = 1 << 4
	InitBigWrites         = 1 << 5
	InitDontMask          = 1 << 6
	InitSpliceWrite       = 1 << 7
	InitSpliceMove        = 1 << 8
	InitSpliceRead        = 1 << 9
	InitFlockLocks        = 1 << 10
	InitHasIoctlDir       = 1 << 11
	InitAutoInvalData     = 1 << 12
	InitDoReaddirplus     = 1 << 13
	InitReaddirplusAuto   = 1 << 14
	InitAsyncDIO          = 1 << 15
	InitWritebackCache    = 1 << 16
	InitNoOpenSupport     = 1 << 17
	InitParallelDirops    = 1 << 18
	InitHandleKillpriv    = 1 << 19
	InitPosixACL          = 1 << 20
	InitAbortError        = 1 << 21
	InitMaxPages          = 1 << 22
	InitCacheSymlinks     = 1 << 23
	InitNoOpendirSupport  = 1 << 24
	InitExplicitInvalData = 1 << 25
	InitMapAlignment      = 1 << 26
	InitSubmounts         = 1 << 27
	InitHandleKillprivV2  = 1 << 28
	InitSetxattrExt       = 1 << 29
	InitInitExt           = 1 << 30
	InitInitReserved      = 1 << 31
	InitSecurityCtx       = 1 << 32
	InitHasInodeDAX       = 1 << 33
	InitCreateSuppGroup   = 1 << 34
)

// Linux61Flags is what fuse_send_init of a Linux 6.1 virtiofs guest (no DAX)
// sends: fs/fuse/inode.c, plus FUSE_SUBMOUNTS because virtio_fs sets
// auto_submounts.
const Linux61Flags = InitAsyncRead | InitPosixLocks | InitAtomicOTrunc | InitExportSupport |
	InitBigWrites | InitDontMask | InitSpliceWrite | InitSpliceMove | InitSpliceRead |
	InitFlockLocks | InitHasIoctlDir | InitAutoInvalData | InitDoReaddirplus |
	InitReaddirplusAuto | InitAsyncDIO | InitWritebackCache | InitNoOpenSupport |
	InitParallelDirops | InitHandleKillpriv | InitPosixACL | InitAbortError | InitMaxPages |
	InitCacheSymlinks | InitNoOpendirSupport | InitExplicitInvalData | InitHandleKillprivV2 |
	InitSetxattrExt | InitInitExt | InitSecurityCtx | InitSubmounts

// SETATTR valid bits.
const (
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
)

// Other flags.
const (
	GetattrFH           = 1 << 0 // fuse_getattr_in.getattr_flags
	FsyncFdatasync      = 1 << 0 // fuse_fsync_in.fsync_flags
	LkFlock             = 1 << 0 // fuse_lk_in.lk_flags
	ReleaseFlush        = 1 << 0 // fuse_release_in.release_flags
	ReleaseFlockUnl     = 1 << 1
	ReadLockowner       = 1 << 1 // fuse_read_in.read_flags
	WriteCache          = 1 << 0 // fuse_write_in.write_flags
	WriteLockowner      = 1 << 1
	WriteKillSuidgid    = 1 << 2
	SetxattrACLKillSgid = 1 << 0
	OpenKillSuidgid     = 1 << 0 // fuse_open_in.open_flags
	FopenDirectIO       = 1 << 0
	FopenKeepCache      = 1 << 1
	FopenNonseekable    = 1 << 2
	FopenCacheDir       = 1 << 3
	FopenStream         = 1 << 4
	FopenNoFlush        = 1 << 5
)

// Attr is struct fuse_attr.
type Attr struct {
	Ino, Size, Blocks, Atime, Mtime, Ctime uint64
	Atimensec, Mtimensec, Ctimensec        uint32
	Mode, Nlink, UID, GID, Rdev, Blksize   uint32
	Flags                                  uint32
}

// EntryOut is struct fuse_entry_out.
type EntryOut struct {
	NodeID, Generation, EntryValid, AttrValid uint64
	EntryValidNsec, AttrValidNsec             uint32
	Attr                                      Attr
}

// AttrOut is struct fuse_attr_out.
type AttrOut struct {
	AttrValid     uint64
	AttrValidNsec uint32
	Attr          Attr
}

// OpenOut is struct fuse_open_out.
type OpenOut struct {
	FH        uint64
	OpenFlags uint32
}

// InitOut is struct fuse_init_out, with flags and flags2 merged.
type InitOut struct {
	Major, Minor, MaxReadahead uint32
	Flags                      uint64
	MaxBackground              uint16
	CongestionThreshold        uint16
	MaxWrite, TimeGran         uint32
	MaxPages, MapAlignment     uint16
}

// Kstatfs is struct fuse_kstatfs.
type Kstatfs struct {
	Blocks, Bfree, Bavail, Files, Ffree uint64
	Bsize, Namelen, Frsize              uint32
}

// FileLock is struct fuse_file_lock. End is inclusive (OFFSET_MAX = to EOF).
type FileLock struct {
	Start, End uint64
	Type, PID  uint32
}

// OffsetMax is the End of a lock that reaches to end of file.
const OffsetMax = 1<<63 - 1

// Dirent is struct fuse_dirent.
type Dirent struct {
	Ino, Off uint64
	Type     uint32
	Name     string
}

// Direntplus is struct fuse_direntplus.
type Direntplus struct {
	Entry EntryOut
	Dirent
}

// SxTime is struct fuse_sx_time.
type SxTime struct {
	Sec  int64
	Nsec uint32
}

// Statx is struct fuse_statx.
type Statx struct {
	Mask, Blksize                     uint32
	Attributes                        uint64
	Nlink, UID, GID                   uint32
	Mode                              uint16
	Ino, Size, Blocks, AttributesMask uint64
	Atime, Btime, Ctime, Mtime        SxTime
	RdevMajor, RdevMinor              uint32
	DevMajor, DevMinor                uint32
}

// StatxOut is struct fuse_statx_out.
type StatxOut struct {
	AttrValid     uint64
	AttrValidNsec uint32
	Flags         uint32
	Stat          Statx
}

// SetattrIn is struct fuse_setattr_in.
type SetattrIn struct {
	Valid                           uint32
	FH, Size, LockOwner             uint64
	Atime, Mtime, Ctime             uint64
	Atimensec, Mtimensec, Ctimensec uint32
	Mode, UID, GID                  uint32
}

// ForgetOne is struct fuse_forget_one.
type ForgetOne struct {
	NodeID, Nlookup uint64
}

var le = binary.LittleEndian

// enc appends little-endian fields.
type enc []byte

func (e enc) u16(v uint16) enc { return le.AppendUint16(e, v) }
func (e enc) u32(v uint32) enc { return le.AppendUint32(e, v) }
func (e enc) u64(v uint64) enc { return le.AppendUint64(e, v) }

// cstr returns s followed by a NUL byte.
func cstr(s string) []byte { return append([]byte(s), 0) }

// dec reads little-endian fields; a short buffer sets err and yields zeros.
type dec struct {
	b   []byte
	err error
}

func (d *dec) take(n int) []byte {
	if d.err != nil {
		return make([]byte, n)
	}
	if len(d.b) < n {
		d.err = fmt.Errorf("%w: reply truncated", ErrProtocol)
		return make([]byte, n)
	}
	v := d.b[:n]
	d.b = d.b[n:]
	return v
}
func (d *dec) u16() uint16 { return le.Uint16(d.take(2)) }
func (d *dec) u32() uint32 { return le.Uint32(d.take(4)) }
func (d *dec) u64() uint64 { return le.Uint64(d.take(8)) }

func (d *dec) attr() (a Attr) {
	a.Ino, a.Size, a.Blocks = d.u64(), d.u64(), d.u64()
	a.Atime, a.Mtime, a.Ctime = d.u64(), d.u64(), d.u64()
	a.Atimensec, a.Mtimensec, a.Ctimensec = d.u32(), d.u32(), d.u32()
	a.Mode, a.Nlink, a.UID, a.GID, a.Rdev, a.Blksize, a.Flags = d.u32(), d.u32(), d.u32(), d.u32(), d.u32(), d.u32(), d.u32()
	return a
}

func (d *dec) entry() (e EntryOut) {
	e.NodeID, e.Generation, e.EntryValid, e.AttrValid = d.u64(), d.u64(), d.u64(), d.u64()
	e.EntryValidNsec, e.AttrValidNsec = d.u32(), d.u32()
	e.Attr = d.attr()
	return e
}

func (d *dec) attrOut() (a AttrOut) {
	a.AttrValid, a.AttrValidNsec = d.u64(), d.u32()
	d.u32()
	a.Attr = d.attr()
	return a
}

func (d *dec) open() (o OpenOut) {
	o.FH, o.OpenFlags = d.u64(), d.u32()
	d.u32()
	return o
}

func (d *dec) lock() (l FileLock) {
	l.Start, l.End, l.Type, l.PID = d.u64(), d.u64(), d.u32(), d.u32()
	return l
}

func (d *dec) sxtime() (t SxTime) {
	t.Sec, t.Nsec = int64(d.u64()), d.u32()
	d.u32()
	return t
}

func (d *dec) statx() (s Statx) {
	s.Mask, s.Blksize, s.Attributes = d.u32(), d.u32(), d.u64()
	s.Nlink, s.UID, s.GID, s.Mode = d.u32(), d.u32(), d.u32(), d.u16()
	d.u16()
	s.Ino, s.Size, s.Blocks, s.AttributesMask = d.u64(), d.u64(), d.u64(), d.u64()
	s.Atime, s.Btime, s.Ctime, s.Mtime = d.sxtime(), d.sxtime(), d.sxtime(), d.sxtime()
	s.RdevMajor, s.RdevMinor, s.DevMajor, s.DevMinor = d.u32(), d.u32(), d.u32(), d.u32()
	d.take(14 * 8)
	return s
}

func encodeLock(e enc, l FileLock) enc {
	return e.u64(l.Start).u64(l.End).u32(l.Type).u32(l.PID)
}

func encodeSetattr(s SetattrIn) []byte {
	e := make(enc, 0, SetattrInSize)
	e = e.u32(s.Valid).u32(0).u64(s.FH).u64(s.Size).u64(s.LockOwner)
	e = e.u64(s.Atime).u64(s.Mtime).u64(s.Ctime)
	e = e.u32(s.Atimensec).u32(s.Mtimensec).u32(s.Ctimensec).u32(s.Mode).u32(0).u32(s.UID).u32(s.GID).u32(0)
	return e
}

// ParseDirents decodes a READDIR reply. It fails on a record that overruns
// the buffer or has a zero-length or over-long name.
func ParseDirents(b []byte) ([]Dirent, error) {
	var out []Dirent
	for len(b) > 0 {
		d, n, err := parseDirent(b)
		if err != nil {
			return out, err
		}
		out = append(out, d)
		b = b[n:]
	}
	return out, nil
}

func parseDirent(b []byte) (Dirent, int, error) {
	if len(b) < DirentSize {
		return Dirent{}, 0, fmt.Errorf("%w: dirent header truncated (%d bytes)", ErrProtocol, len(b))
	}
	d := Dirent{Ino: le.Uint64(b), Off: le.Uint64(b[8:]), Type: le.Uint32(b[20:])}
	nl := int(le.Uint32(b[16:]))
	if nl == 0 || nl > 1024 || DirentSize+nl > len(b) {
		return Dirent{}, 0, fmt.Errorf("%w: dirent name length %d in %d bytes", ErrProtocol, nl, len(b))
	}
	d.Name = string(b[DirentSize : DirentSize+nl])
	n := (DirentSize + nl + 7) &^ 7
	if n > len(b) {
		n = len(b)
	}
	return d, n, nil
}

// ParseDirentsplus decodes a READDIRPLUS reply.
func ParseDirentsplus(b []byte) ([]Direntplus, error) {
	var out []Direntplus
	for len(b) > 0 {
		if len(b) < EntryOutSize {
			return out, fmt.Errorf("%w: direntplus entry truncated (%d bytes)", ErrProtocol, len(b))
		}
		d := dec{b: b[:EntryOutSize]}
		var p Direntplus
		p.Entry = d.entry()
		de, n, err := parseDirent(b[EntryOutSize:])
		if err != nil {
			return out, err
		}
		p.Dirent = de
		out = append(out, p)
		b = b[EntryOutSize+n:]
	}
	return out, nil
}
