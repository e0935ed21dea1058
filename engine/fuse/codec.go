package fuse

import "encoding/binary"

// Limits from the Linux VFS that bound guest-supplied names and values.
const (
	NameMax      = 255   // NAME_MAX: one path component
	PathMax      = 4096  // PATH_MAX, including the NUL (symlink targets)
	XattrNameMax = 255   // XATTR_NAME_MAX
	XattrSizeMax = 65536 // XATTR_SIZE_MAX
	OffsetMax    = 1<<63 - 1
)

// CString splits a NUL-terminated string off the front of b. s excludes the
// NUL (which stays in b's backing array right after s, so &s[0] is a valid C
// string when s is not empty); rest follows the NUL. ok is false when b holds
// no NUL.
func CString(b []byte) (s, rest []byte, ok bool) {
	for i, c := range b {
		if c == 0 {
			return b[:i], b[i+1:], true
		}
	}
	return nil, b, false
}

// DirentLen is the space one fuse_dirent with an n-byte name takes in a
// READDIR reply (FUSE_DIRENT_SIZE).
func DirentLen(n int) int { return (DirentSize + n + 7) &^ 7 }

// DirentplusLen is the space one fuse_direntplus takes (FUSE_DIRENTPLUS_SIZE).
func DirentplusLen(n int) int { return (DirentplusSize + n + 7) &^ 7 }

// PutDirent encodes one fuse_dirent (header, name, zero padding) at the start
// of dst and returns its length, or 0 when it does not fit.
func PutDirent(dst []byte, ino, off uint64, typ uint32, name []byte) int {
	n := DirentLen(len(name))
	if n > len(dst) {
		return 0
	}
	putDirent(dst[:n], ino, off, typ, name)
	return n
}

func putDirent(b []byte, ino, off uint64, typ uint32, name []byte) {
	binary.LittleEndian.PutUint64(b[0:], ino)
	binary.LittleEndian.PutUint64(b[8:], off)
	binary.LittleEndian.PutUint32(b[16:], uint32(len(name)))
	binary.LittleEndian.PutUint32(b[20:], typ)
	m := copy(b[DirentSize:], name)
	clear(b[DirentSize+m:])
}

// PutDirentplus encodes one fuse_direntplus (entry, dirent header, name,
// padding) at the start of dst and returns its length, or 0 when it does not
// fit.
func PutDirentplus(dst []byte, e *EntryOut, off uint64, typ uint32, name []byte) int {
	n := DirentplusLen(len(name))
	if n > len(dst) {
		return 0
	}
	PutEntryOut(dst[:EntryOutSize], e)
	putDirent(dst[EntryOutSize:n], e.Attr.Ino, off, typ, name)
	return n
}

// PutEntryOut encodes e into the first EntryOutSize bytes of dst, which must
// be that long.
func PutEntryOut(dst []byte, e *EntryOut) {
	_ = dst[EntryOutSize-1]
	binary.LittleEndian.PutUint64(dst[0:], e.NodeID)
	binary.LittleEndian.PutUint64(dst[8:], e.Generation)
	binary.LittleEndian.PutUint64(dst[16:], e.EntryValid)
	binary.LittleEndian.PutUint64(dst[24:], e.AttrValid)
	binary.LittleEndian.PutUint32(dst[32:], e.EntryValidNsec)
	binary.LittleEndian.PutUint32(dst[36:], e.AttrValidNsec)
	PutAttr(dst[40:40+AttrSize], &e.Attr)
}

// PutAttr encodes a into the first AttrSize bytes of dst.
func PutAttr(dst []byte, a *Attr) {
	_ = dst[AttrSize-1]
	le := binary.LittleEndian
	le.PutUint64(dst[0:], a.Ino)
	le.PutUint64(dst[8:], a.Size)
	le.PutUint64(dst[16:], a.Blocks)
	le.PutUint64(dst[24:], a.Atime)
	le.PutUint64(dst[32:], a.Mtime)
	le.PutUint64(dst[40:], a.Ctime)
	le.PutUint32(dst[48:], a.Atimensec)
	le.PutUint32(dst[52:], a.Mtimensec)
	le.PutUint32(dst[56:], a.Ctimensec)
	le.PutUint32(dst[60:], a.Mode)
	le.PutUint32(dst[64:], a.Nlink)
	le.PutUint32(dst[68:], a.UID)
	le.PutUint32(dst[72:], a.GID)
	le.PutUint32(dst[76:], a.Rdev)
	le.PutUint32(dst[80:], a.Blksize)
	le.PutUint32(dst[84:], a.Flags)
}

// EncodeDev packs a device number the way the guest kernel's
// new_decode_dev expects in fuse_attr.rdev and fuse_mknod_in.rdev.
func EncodeDev(major, minor uint32) uint32 {
	return minor&0xff | (major&0xfff)<<8 | (minor&^0xff)<<12
}

// DecodeDev unpacks a new_encode_dev device number.
func DecodeDev(dev uint32) (major, minor uint32) {
	return (dev & 0xfff00) >> 8, dev&0xff | (dev>>12)&0xfff00
}

// Session is the state negotiated by INIT. It is a plain fixed-size struct so
// that the worker can persist it (in a memfd) and hand it back after a
// restart: the guest never sends INIT again.
type Session struct {
	Major, Minor uint32
	Flags        uint64 // negotiated INIT flags, flags2 in the high 32 bits
	MaxReadahead uint32
	MaxWrite     uint32
	MaxPages     uint16
	Initialized  bool // INIT answered and no DESTROY since
	_            [5]byte
}

// Has reports whether all of flags were negotiated.
func (s *Session) Has(flags uint64) bool { return s.Flags&flags == flags }
