// Package fuse owns the FUSE wire protocol as vfsd speaks it: the request and
// reply structs of include/uapi/linux/fuse.h (sizes checked against the C
// layout at init), length-checked decoding of guest bytes (Parse, CString),
// encoders for attrs, entries and directory entries, the INIT flag
// constants and the negotiated Session, and the Request/Reply/Handler
// contract between the dataplane and the filesystem.
//
// Everything that reaches this package from a guest is hostile: every length
// is checked before bytes are interpreted, nothing here panics on input, and
// file data moves between files and guest RAM without a bounce buffer
// (Reply.ReadFile, WriteFile). unsafe lives in the *_unsafe.go files.
package fuse
