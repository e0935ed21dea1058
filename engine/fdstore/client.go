package fdstore

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// Environment variables of the notify protocol.
const (
	EnvNotifySocket = "NOTIFY_SOCKET"  // systemd: path or @abstract name
	EnvNotifyFD     = "VFSD_NOTIFY_FD" // vfsd: inherited connected SOCK_DGRAM socket
	// EnvBatch=1 tells a sender that its receiver applies SendBatch
	// datagrams. A supervisor older than the batches stores a batch's fds
	// under "stored" and ignores its removes, so a worker sends batches
	// only when its supervisor set this.
	EnvBatch = "VFSD_FDSTORE_BATCH"
)

// MaxFDsPerMessage is the kernel's limit on fds in one SCM_RIGHTS message
// (SCM_MAX_FD).
const MaxFDsPerMessage = 253

// Client sends sd_notify(3) datagrams. A nil *Client is valid and every
// method on it is a no-op returning nil, like sd_notify(3) without
// NOTIFY_SOCKET. Methods are safe for concurrent use.
type Client struct {
	mu   sync.Mutex
	fd   int           // +checklocks:mu; -1 once closed
	addr unix.Sockaddr // nil: fd is connected
}

// NewClient returns a client sending to the AF_UNIX datagram socket addr: a
// filesystem path, or an abstract name written with a leading '@'.
func NewClient(addr string) (*Client, error) {
	if addr == "" {
		return nil, errors.New("fdstore: empty notify socket address")
	}
	if addr[0] != '/' && addr[0] != '@' {
		return nil, fmt.Errorf("fdstore: unsupported notify socket address %q", addr)
	}
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("fdstore: notify socket: %w", err)
	}
	return &Client{fd: fd, addr: &unix.SockaddrUnix{Name: addr}}, nil
}

// NewClientFD returns a client sending over fd, a connected AF_UNIX
// SOCK_DGRAM socket. The client takes ownership of fd and sets FD_CLOEXEC.
func NewClientFD(fd int) (*Client, error) {
	typ, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
	if err != nil {
		return nil, fmt.Errorf("fdstore: notify fd %d: %w", fd, err)
	}
	if typ != unix.SOCK_DGRAM {
		return nil, fmt.Errorf("fdstore: notify fd %d is not a datagram socket", fd)
	}
	unix.CloseOnExec(fd)
	return &Client{fd: fd}, nil
}

// FromEnv returns the client named by the environment: VFSD_NOTIFY_FD first,
// then NOTIFY_SOCKET. It returns (nil, nil) when neither is set. With unset,
// both variables are removed from the environment (so that children do not
// inherit them).
func FromEnv(unset bool) (*Client, error) {
	fdStr, hasFD := os.LookupEnv(EnvNotifyFD)
	addr := os.Getenv(EnvNotifySocket)
	if unset {
		os.Unsetenv(EnvNotifyFD)
		os.Unsetenv(EnvNotifySocket)
	}
	if hasFD {
		fd, err := strconv.Atoi(fdStr)
		if err != nil || fd < 0 {
			return nil, fmt.Errorf("fdstore: bad %s=%q", EnvNotifyFD, fdStr)
		}
		return NewClientFD(fd)
	}
	if addr == "" {
		return nil, nil
	}
	return NewClient(addr)
}

// Close closes the client's socket.
func (c *Client) Close() error {
	if c == nil {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.fd < 0 {
		return nil
	}
	err := unix.Close(c.fd)
	c.fd = -1
	return err
}

// Notify sends state (newline-separated VAR=value assignments) with fds
// attached by SCM_RIGHTS. It blocks while the receiver's buffer is full.
// When it returns nil, the receiver holds the datagram and its own copies of
// the fds; the caller still owns fds.
func (c *Client) Notify(state string, fds ...int) error {
	if c == nil {
		return nil
	}
	if len(fds) > MaxFDsPerMessage {
		return fmt.Errorf("fdstore: %d fds in one message (max %d)", len(fds), MaxFDsPerMessage)
	}
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.fd < 0 {
		return errors.New("fdstore: notify client closed")
	}
	for {
		n, err := unix.SendmsgN(c.fd, []byte(state), oob, c.addr, unix.MSG_NOSIGNAL)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("fdstore: notify: %w", err)
		}
		if n != len(state) {
			return fmt.Errorf("fdstore: notify: short datagram (%d of %d bytes)", n, len(state))
		}
		return nil
	}
}

// Store asks the receiver to keep fds under name (FDSTORE=1, FDNAME=name).
// Several fds may share a name, and several stores may add to one name.
func (c *Client) Store(name string, fds ...int) error {
	if err := checkName(name); err != nil {
		return err
	}
	if len(fds) == 0 {
		return errors.New("fdstore: store without fds")
	}
	return c.Notify("FDSTORE=1\nFDNAME="+name, fds...)
}

// Remove asks the receiver to close and forget every fd stored under name
// (FDSTOREREMOVE=1, FDNAME=name).
func (c *Client) Remove(name string) error {
	if err := checkName(name); err != nil {
		return err
	}
	return c.Notify("FDSTOREREMOVE=1\nFDNAME=" + name)
}

// MaxBatchText is the most text SendBatch puts in one datagram (the
// receiver accepts maxDatagram bytes).
const MaxBatchText = maxDatagram - 64

// SendBatch sends, in one datagram, the removal of every name in removes
// and then the store of fds[i] under names[i] (a vfsd extension of the
// protocol: X_VFSD_REMOVE= and X_VFSD_FDNAMES=, names joined by ':', which
// sd_notify(3) names cannot contain). The receiver applies the removes
// first, in order, then the stores. Durability as Notify. At most
// MaxFDsPerMessage fds and at most MaxBatchText bytes of text.
func (c *Client) SendBatch(removes, names []string, fds []int) error {
	if len(names) != len(fds) {
		return fmt.Errorf("fdstore: batch of %d names for %d fds", len(names), len(fds))
	}
	if len(removes) == 0 && len(names) == 0 {
		return nil
	}
	for _, n := range removes {
		if err := checkName(n); err != nil {
			return err
		}
	}
	for _, n := range names {
		if err := checkName(n); err != nil {
			return err
		}
	}
	l := batchTextLen(removes, names)
	if l > MaxBatchText {
		return fmt.Errorf("fdstore: batch datagram of %d bytes (max %d)", l, MaxBatchText)
	}
	var b strings.Builder
	b.Grow(l)
	if len(removes) > 0 {
		b.WriteString(batchRemoveVar + "=")
		b.WriteString(strings.Join(removes, ":"))
		b.WriteByte('\n')
	}
	if len(names) > 0 {
		b.WriteString("FDSTORE=1\n" + batchNamesVar + "=")
		b.WriteString(strings.Join(names, ":"))
	}
	return c.Notify(b.String(), fds...)
}

// batchTextLen is the length of the text SendBatch sends for removes and
// names.
func batchTextLen(removes, names []string) int {
	n := 0
	if len(removes) > 0 {
		n += len(batchRemoveVar) + 2 + len(removes) - 1
		for _, r := range removes {
			n += len(r)
		}
	}
	if len(names) > 0 {
		n += len("FDSTORE=1\n") + len(batchNamesVar) + 1 + len(names) - 1
		for _, r := range names {
			n += len(r)
		}
	}
	return n
}

// Ready sends READY=1.
func (c *Client) Ready() error { return c.Notify("READY=1") }

// Status sends STATUS=s (newlines in s are replaced by spaces).
func (c *Client) Status(s string) error {
	return c.Notify("STATUS=" + strings.ReplaceAll(s, "\n", " "))
}

// Watchdog sends WATCHDOG=1.
func (c *Client) Watchdog() error { return c.Notify("WATCHDOG=1") }

var (
	defaultOnce   sync.Once
	defaultClient *Client
	defaultErr    error
)

// Default returns the process-wide client from the environment (FromEnv,
// without unsetting), created on first use. It is nil when the process has no
// notify socket.
func Default() (*Client, error) {
	defaultOnce.Do(func() { defaultClient, defaultErr = FromEnv(false) })
	return defaultClient, defaultErr
}

// Enabled reports whether the process has a notify socket, i.e. whether
// Store makes fds durable.
func Enabled() bool {
	c, err := Default()
	return err == nil && c != nil
}

// Notify sends state with fds through the Default client; nil when there is
// no notify socket.
func Notify(state string, fds ...int) error {
	c, err := Default()
	if err != nil {
		return err
	}
	return c.Notify(state, fds...)
}

// Store stores fds under name through the Default client.
func Store(name string, fds ...int) error {
	c, err := Default()
	if err != nil {
		return err
	}
	if err := checkName(name); err != nil {
		return err
	}
	return c.Store(name, fds...)
}

// Remove removes name through the Default client.
func Remove(name string) error {
	c, err := Default()
	if err != nil {
		return err
	}
	if err := checkName(name); err != nil {
		return err
	}
	return c.Remove(name)
}

// Ready sends READY=1 through the Default client.
func Ready() error { return Notify("READY=1") }

// Status sends STATUS=s through the Default client.
func Status(s string) error { return Notify("STATUS=" + strings.ReplaceAll(s, "\n", " ")) }

// Watchdog sends WATCHDOG=1 through the Default client.
func Watchdog() error { return Notify("WATCHDOG=1") }
