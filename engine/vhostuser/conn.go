package vhostuser

import (
	"errors"
	"fmt"
	"io"

	"golang.org/x/sys/unix"
)

// ErrMalformed marks a message that breaks the protocol: bad header, wrong
// payload size or fd count, unknown request, index out of range.
var ErrMalformed = errors.New("vhostuser: malformed message")

// Conn frames vhost-user messages on a connected unix stream socket. It is
// used by one goroutine at a time, except Shutdown, which may be called from
// any goroutine to unblock a pending Read.
type Conn struct {
	fd   int
	buf  [HeaderSize + MaxPayload]byte
	oob  []byte
	fds  []int
	wbuf []byte
}

// NewConn takes ownership of the connected socket fd and puts it in
// blocking mode (a Conn blocks its goroutine in recvmsg, never spins).
func NewConn(fd int) (*Conn, error) {
	if err := unix.SetNonblock(fd, false); err != nil {
		return nil, fmt.Errorf("vhostuser: socket fd %d: %w", fd, err)
	}
	return &Conn{fd: fd, oob: make([]byte, unix.CmsgSpace(MaxFDs*4))}, nil
}

// FD returns the socket fd (still owned by the Conn).
func (c *Conn) FD() int { return c.fd }

// Close closes the socket.
func (c *Conn) Close() error {
	if c.fd < 0 {
		return nil
	}
	err := unix.Close(c.fd)
	c.fd = -1
	return err
}

// Shutdown shuts the socket down in both directions, so that a Read blocked
// in another goroutine returns io.EOF.
func (c *Conn) Shutdown() error { return unix.Shutdown(c.fd, unix.SHUT_RDWR) }

// Read receives one message. It returns io.EOF when the peer closed the
// socket between messages, and an ErrMalformed error for a torn or oversized
// message, more than MaxFDs fds or truncated ancillary data (after closing
// every fd received). The Payload aliases the Conn's buffer.
func (c *Conn) Read() (Message, error) {
	c.fds = c.fds[:0]
	if err := c.readFull(c.buf[:HeaderSize], true); err != nil {
		c.closeFDs()
		return Message{}, err
	}
	h, err := ParseHeader(c.buf[:HeaderSize])
	if err != nil {
		c.closeFDs()
		return Message{}, err
	}
	p := c.buf[HeaderSize : HeaderSize+int(h.Size)]
	if err := c.readFull(p, false); err != nil {
		c.closeFDs()
		return Message{}, err
	}
	m := Message{Header: h, Payload: p}
	if len(c.fds) > 0 {
		m.FDs = append([]int(nil), c.fds...)
	}
	return m, nil
}

func (c *Conn) closeFDs() {
	for _, fd := range c.fds {
		unix.Close(fd)
	}
	c.fds = c.fds[:0]
}

// readFull fills b, collecting fds. first says that b starts a message, where
// a clean EOF is io.EOF rather than a torn message.
func (c *Conn) readFull(b []byte, first bool) error {
	got := 0
	for got < len(b) {
		n, oobn, flags, _, err := unix.Recvmsg(c.fd, b[got:], c.oob, unix.MSG_CMSG_CLOEXEC)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			if err == unix.ECONNRESET || err == unix.EPIPE {
				if first && got == 0 {
					return io.EOF
				}
				return fmt.Errorf("%w: connection reset inside a message", ErrMalformed)
			}
			return fmt.Errorf("vhostuser: recvmsg: %w", err)
		}
		if oobn > 0 {
			if err := c.takeFDs(c.oob[:oobn]); err != nil {
				return err
			}
		}
		if flags&unix.MSG_CTRUNC != 0 {
			return fmt.Errorf("%w: ancillary data truncated (more than %d fds?)", ErrMalformed, MaxFDs)
		}
		if n == 0 {
			if first && got == 0 && len(c.fds) == 0 {
				return io.EOF
			}
			return fmt.Errorf("%w: connection closed after %d of %d bytes", ErrMalformed, got, len(b))
		}
		got += n
	}
	return nil
}

func (c *Conn) takeFDs(oob []byte) error {
	cmsgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return fmt.Errorf("%w: control message: %v", ErrMalformed, err)
	}
	var bad error
	for i := range cmsgs {
		fds, err := unix.ParseUnixRights(&cmsgs[i])
		if err != nil {
			bad = fmt.Errorf("%w: unexpected control message level %d type %d", ErrMalformed, cmsgs[i].Header.Level, cmsgs[i].Header.Type)
			continue
		}
		c.fds = append(c.fds, fds...)
	}
	if bad != nil {
		return bad
	}
	if len(c.fds) > MaxFDs {
		return fmt.Errorf("%w: %d fds in one message", ErrMalformed, len(c.fds))
	}
	return nil
}

// Write sends one message with optional fds.
func (c *Conn) Write(h Header, payload []byte, fds []int) error {
	h.Size = uint32(len(payload))
	need := HeaderSize + len(payload)
	if cap(c.wbuf) < need {
		c.wbuf = make([]byte, need)
	}
	b := c.wbuf[:need]
	h.put(b)
	copy(b[HeaderSize:], payload)
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	for len(b) > 0 {
		n, err := unix.SendmsgN(c.fd, b, oob, nil, unix.MSG_NOSIGNAL)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("vhostuser: sendmsg %s: %w", RequestName(h.Request), err)
		}
		b, oob = b[n:], nil
	}
	return nil
}
