package frontend

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"time"

	"golang.org/x/sys/unix"
)

// conn is a vhost-user control connection: a connected SOCK_STREAM unix
// socket in blocking mode. Not safe for concurrent use; Frontend serialises.
type conn struct {
	fd int
}

// dialUnix connects to path, retrying until the deadline while the socket
// does not exist yet or nobody listens (the daemon is starting).
func dialUnix(path string, deadline time.Time) (*conn, error) {
	for {
		fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return nil, fmt.Errorf("socket: %w", err)
		}
		err = unix.Connect(fd, &unix.SockaddrUnix{Name: path})
		if err == nil {
			return &conn{fd: fd}, nil
		}
		unix.Close(fd)
		retry := errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ECONNREFUSED) || errors.Is(err, unix.EINTR)
		if !retry || time.Now().After(deadline) {
			return nil, fmt.Errorf("connect %s: %w", path, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (c *conn) close() error {
	if c.fd < 0 {
		return nil
	}
	err := unix.Close(c.fd)
	c.fd = -1
	return err
}

// send writes one message with its fds (SCM_RIGHTS on the first byte).
// size overrides the header's size field when >= 0 (hostile tests); normally
// it is len(payload).
func (c *conn) send(req, flags uint32, payload []byte, fds []int, size int) error {
	if size < 0 {
		size = len(payload)
	}
	buf := make([]byte, HeaderSize+len(payload))
	binary.LittleEndian.PutUint32(buf, req)
	binary.LittleEndian.PutUint32(buf[4:], flags)
	binary.LittleEndian.PutUint32(buf[8:], uint32(size))
	copy(buf[HeaderSize:], payload)
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	for len(buf) > 0 {
		n, err := unix.SendmsgN(c.fd, buf, oob, nil, unix.MSG_NOSIGNAL)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("send %s: %w", ReqName(req), err)
		}
		buf, oob = buf[n:], nil
	}
	return nil
}

// recv reads one message. Fds that arrive are returned in Msg.FDs.
func (c *conn) recv() (Msg, error) {
	var hdr [HeaderSize]byte
	oob := make([]byte, unix.CmsgSpace(4*MaxFDs))
	var m Msg
	got := 0
	for got < HeaderSize {
		n, oobn, _, _, err := unix.Recvmsg(c.fd, hdr[got:], oob, unix.MSG_CMSG_CLOEXEC)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return m, fmt.Errorf("recv: %w", err)
		}
		if oobn > 0 {
			fds, err := parseRights(oob[:oobn])
			m.FDs = append(m.FDs, fds...)
			if err != nil {
				closeAll(m.FDs)
				return Msg{}, err
			}
		}
		if n == 0 {
			closeAll(m.FDs)
			return Msg{}, io.EOF
		}
		got += n
	}
	m.Request = binary.LittleEndian.Uint32(hdr[:])
	m.Flags = binary.LittleEndian.Uint32(hdr[4:])
	size := binary.LittleEndian.Uint32(hdr[8:])
	if size > MaxPayload {
		closeAll(m.FDs)
		return Msg{}, fmt.Errorf("recv %s: payload size %d too big", ReqName(m.Request), size)
	}
	m.Payload = make([]byte, size)
	for got := 0; got < int(size); {
		n, err := unix.Read(c.fd, m.Payload[got:])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			closeAll(m.FDs)
			return Msg{}, fmt.Errorf("recv %s payload: %w", ReqName(m.Request), err)
		}
		if n == 0 {
			closeAll(m.FDs)
			return Msg{}, io.ErrUnexpectedEOF
		}
		got += n
	}
	return m, nil
}

func parseRights(oob []byte) ([]int, error) {
	cms, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, fmt.Errorf("parse control message: %w", err)
	}
	var fds []int
	for _, cm := range cms {
		f, err := unix.ParseUnixRights(&cm)
		if err != nil {
			continue
		}
		fds = append(fds, f...)
	}
	return fds, nil
}

func closeAll(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}
