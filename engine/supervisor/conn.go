package supervisor

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// msgConn frames vhost-user messages over a unix stream socket. The fd is
// non-blocking and driven by Go's poller, so Close wakes a blocked reader.
// One goroutine may read and another write at the same time.
type msgConn struct {
	f   *os.File
	rc  syscall.RawConn
	oob []byte // read side only
}

// newMsgConn takes ownership of fd (a connected SOCK_STREAM unix socket).
func newMsgConn(fd int, name string) (*msgConn, error) {
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("set nonblock on %s: %w", name, err)
	}
	unix.CloseOnExec(fd)
	f := os.NewFile(uintptr(fd), name)
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, err
	}
	return &msgConn{f: f, rc: rc, oob: make([]byte, unix.CmsgSpace(maxMsgFDs*4))}, nil
}

func (c *msgConn) Close() error { return c.f.Close() }

// shutdown makes pending and future reads return EOF without closing the fd.
func (c *msgConn) shutdown() {
	_ = c.rc.Control(func(fd uintptr) { unix.Shutdown(int(fd), unix.SHUT_RDWR) })
}

func (c *msgConn) setReadDeadline(t time.Time) { _ = c.f.SetReadDeadline(t) }

var errFramedEOF = errors.New("connection closed in the middle of a message")

// recv fills b completely, appending received fds to *fds.
func (c *msgConn) recv(b []byte, fds *[]int, atStart bool) error {
	got := 0
	for got < len(b) {
		var n, oobn, flags int
		var err error
		rerr := c.rc.Read(func(fd uintptr) bool {
			for {
				n, oobn, flags, _, err = unix.Recvmsg(int(fd), b[got:], c.oob, unix.MSG_CMSG_CLOEXEC)
				if err != unix.EINTR {
					return err != unix.EAGAIN
				}
			}
		})
		if rerr != nil {
			return rerr
		}
		if oobn > 0 {
			r, perr := parseRights(c.oob[:oobn])
			*fds = append(*fds, r...)
			if perr != nil && err == nil {
				err = perr
			}
		}
		if err == nil && flags&unix.MSG_CTRUNC != 0 {
			err = fmt.Errorf("too many fds with one message (max %d)", maxMsgFDs)
		}
		if err != nil {
			return err
		}
		if n == 0 {
			if atStart && got == 0 && len(*fds) == 0 {
				return io.EOF
			}
			return errFramedEOF
		}
		got += n
	}
	return nil
}

func parseRights(oob []byte) ([]int, error) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, err
	}
	var fds []int
	for i := range msgs {
		if msgs[i].Header.Level == unix.SOL_SOCKET && msgs[i].Header.Type == unix.SCM_RIGHTS {
			r, err := unix.ParseUnixRights(&msgs[i])
			if err != nil {
				closeAll(fds)
				return nil, err
			}
			fds = append(fds, r...)
		}
	}
	return fds, nil
}

func closeAll(fds []int) {
	for _, fd := range fds {
		if fd >= 0 {
			unix.Close(fd)
		}
	}
}

// ReadMsg reads one message. It returns io.EOF on a clean end of stream
// (between messages); any fds of a failed read are closed.
func (c *msgConn) ReadMsg() (*Msg, error) {
	var hdr [hdrSize]byte
	var fds []int
	if err := c.recv(hdr[:], &fds, true); err != nil {
		closeAll(fds)
		return nil, err
	}
	m := &Msg{
		Req:   binary.LittleEndian.Uint32(hdr[0:]),
		Flags: binary.LittleEndian.Uint32(hdr[4:]),
	}
	size := binary.LittleEndian.Uint32(hdr[8:])
	if size > maxPayload {
		closeAll(fds)
		return nil, fmt.Errorf("%s: payload of %d bytes (max %d)", reqName(m.Req), size, maxPayload)
	}
	if size > 0 {
		m.Payload = make([]byte, size)
		if err := c.recv(m.Payload, &fds, false); err != nil {
			closeAll(fds)
			return nil, err
		}
	}
	if len(fds) > maxMsgFDs {
		closeAll(fds)
		return nil, fmt.Errorf("%s: %d fds (max %d)", reqName(m.Req), len(fds), maxMsgFDs)
	}
	m.FDs = fds
	return m, nil
}

// WriteMsg writes m with its fds (which stay owned by the caller; entries
// set to -1 are skipped).
func (c *msgConn) WriteMsg(m *Msg) error {
	buf := make([]byte, hdrSize+len(m.Payload))
	binary.LittleEndian.PutUint32(buf[0:], m.Req)
	binary.LittleEndian.PutUint32(buf[4:], m.Flags)
	binary.LittleEndian.PutUint32(buf[8:], uint32(len(m.Payload)))
	copy(buf[hdrSize:], m.Payload)
	var oob []byte
	var fds []int
	for _, fd := range m.FDs {
		if fd >= 0 {
			fds = append(fds, fd)
		}
	}
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	return c.writeRaw(buf, oob)
}

func (c *msgConn) writeRaw(buf, oob []byte) error {
	sent := 0
	for sent < len(buf) {
		var n int
		var err error
		werr := c.rc.Write(func(fd uintptr) bool {
			for {
				n, err = unix.SendmsgN(int(fd), buf[sent:], oob, nil, unix.MSG_NOSIGNAL)
				if err != unix.EINTR {
					return err != unix.EAGAIN
				}
			}
		})
		if werr != nil {
			return werr
		}
		if err != nil {
			return err
		}
		oob = nil // fds travel with the first byte
		sent += n
	}
	return nil
}
