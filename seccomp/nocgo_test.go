//go:build !cgo

package seccomp

const victimCgo = false
