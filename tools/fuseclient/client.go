package fuseclient

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"vfsd/engine/fuse"
	"vfsd/tools/frontend"
)

// ErrProtocol marks a reply that breaks the FUSE protocol (wrong unique,
// length mismatch, impossible errno, truncated payload).
var ErrProtocol = errors.New("fuseclient: protocol violation")

// Options configure a Client.
type Options struct {
	// Depth is the most requests in flight per request queue (default 16).
	Depth int
	// Creds are the caller credentials put in every in header unless a
	// request says otherwise (default: this process's uid, gid and pid).
	Creds *Creds
}

// Creds are the uid, gid and pid of the in header.
type Creds struct{ UID, GID, PID uint32 }

// Client sends FUSE requests over a Frontend. Safe for concurrent use.
type Client struct {
	fe    *frontend.Frontend
	mem   *frontend.Memory
	creds Creds
	queue int // 0: round-robin over the request queues
	core  *core
}

type core struct {
	unique atomic.Uint64
	rr     atomic.Uint32
	sems   []chan struct{} // per queue index; sems[0] is hiprio

	mu   sync.Mutex
	init *InitOut // +checklocks:mu
}

// New returns a Client over fe (which it does not own).
func New(fe *frontend.Frontend, o Options) *Client {
	if o.Depth <= 0 {
		o.Depth = 16
	}
	c := &Client{fe: fe, mem: fe.Mem, core: &core{}}
	if o.Creds != nil {
		c.creds = *o.Creds
	} else {
		c.creds = Creds{UID: uint32(os.Getuid()), GID: uint32(os.Getgid()), PID: uint32(os.Getpid())}
	}
	for i := 0; i < fe.NumQueues(); i++ {
		c.core.sems = append(c.core.sems, make(chan struct{}, o.Depth))
	}
	return c
}

// As returns a Client sharing c's connection and session that sends requests
// with other credentials.
func (c *Client) As(cr Creds) *Client {
	d := *c
	d.creds = cr
	return &d
}

// OnQueue returns a Client sharing c's connection and session that sends
// every request except FORGET/BATCH_FORGET on request queue q (1..N).
func (c *Client) OnQueue(q int) *Client {
	d := *c
	d.queue = q
	return &d
}

// Frontend returns the underlying frontend.
func (c *Client) Frontend() *frontend.Frontend { return c.fe }

// Session returns the INIT reply, or nil before Init.
func (c *Client) Session() *InitOut {
	c.core.mu.Lock()
	defer c.core.mu.Unlock()
	return c.core.init
}

// NextUnique reserves a request id as Linux does (steps of 2; odd ids are
// the INTERRUPT requests of the even one below).
func (c *Client) NextUnique() uint64 { return c.core.unique.Add(2) }

// Req is one raw request.
type Req struct {
	Op     uint32
	NodeID uint64
	// Args are the in arguments, each in a device-readable descriptor of
	// its own after the in header (as virtio_fs lays them out).
	Args [][]byte
	// Data is bulk payload (WRITE) in its own readable descriptor.
	Data []byte
	// Ext are request extensions (FUSE 7.38 total_extlen), appended after
	// the arguments; their length must be a multiple of 8.
	Ext []byte
	// Out is the room for the reply payload after the out header; OutSplit
	// splits it into several writable descriptors of these sizes (their
	// sum must be Out).
	Out      int
	OutSplit []int
	// NoReply marks FORGET-like requests: no writable buffer is offered and
	// the backend must return the chain with 0 bytes written.
	NoReply bool
	// ReplyOptional offers room for a reply but accepts a chain returned
	// with 0 bytes written (INTERRUPT).
	ReplyOptional bool
	// Queue selects the virtqueue (0: FORGET/BATCH_FORGET go to the hiprio
	// queue, others to a request queue chosen round-robin).
	Queue int
	// Unique overrides the request id (0: NextUnique).
	Unique uint64
	// Creds overrides the client's credentials.
	Creds *Creds
	// Len overrides the in header's len field (0: the real length), for
	// hostile tests.
	Len uint32
}

// Reply is the answer to one request.
type Reply struct {
	Unique  uint64
	Error   int32  // 0 or a negated errno
	Len     uint32 // out header len
	Written uint32 // used-element length
	Payload []byte
}

// Err returns the reply's errno, or nil.
func (r *Reply) Err() error {
	if r.Error == 0 {
		return nil
	}
	return unix.Errno(-r.Error)
}

// pick chooses the queue for r.
func (c *Client) pick(r *Req) (int, error) {
	n := c.fe.NumQueues()
	if r.Queue != 0 {
		if r.Queue < 0 || r.Queue >= n {
			return 0, fmt.Errorf("fuseclient: queue %d of %d", r.Queue, n)
		}
		return r.Queue, nil
	}
	if r.Op == fuse.OpForget || r.Op == fuse.OpBatchForget {
		return 0, nil
	}
	if c.queue > 0 && c.queue < n {
		return c.queue, nil
	}
	if n == 2 {
		return 1, nil
	}
	return 1 + int(c.core.rr.Add(1)%uint32(n-1)), nil
}

// Do sends one request and waits for its reply. The payload is copied into
// buf when it is large enough (else into a new slice). A FUSE error is a
// successful Do with Reply.Error set; Do's error is for transport failures
// and protocol violations.
func (c *Client) Do(ctx context.Context, r *Req, buf []byte) (Reply, error) {
	qi, err := c.pick(r)
	if err != nil {
		return Reply{}, err
	}
	sem := c.core.sems[qi]
	select {
	case sem <- struct{}{}:
	case <-ctx.Done():
		return Reply{}, ctx.Err()
	}
	defer func() { <-sem }()

	unique := r.Unique
	if unique == 0 {
		unique = c.NextUnique()
	}
	cr := c.creds
	if r.Creds != nil {
		cr = *r.Creds
	}
	// One allocation per request: in header + args, data, out header, payload.
	argLen := 0
	for _, a := range r.Args {
		argLen += len(a)
	}
	inLen := InHeaderSize + argLen + len(r.Ext) + len(r.Data)
	outRoom := 0
	if !r.NoReply {
		outRoom = OutHeaderSize + r.Out
	}
	total := uint64(inLen + outRoom + 8)
	gpa, err := c.mem.Alloc(total, false)
	if err != nil {
		return Reply{}, err
	}
	var hdr [InHeaderSize]byte
	l := uint32(inLen)
	if r.Len != 0 {
		l = r.Len
	}
	le.PutUint32(hdr[0:], l)
	le.PutUint32(hdr[4:], r.Op)
	le.PutUint64(hdr[8:], unique)
	le.PutUint64(hdr[16:], r.NodeID)
	le.PutUint32(hdr[24:], cr.UID)
	le.PutUint32(hdr[28:], cr.GID)
	le.PutUint32(hdr[32:], cr.PID)
	le.PutUint16(hdr[36:], uint16(len(r.Ext)/8))
	var rd, wr [8]frontend.Buf
	readable, writable := rd[:0], wr[:0]
	off := gpa
	put := func(b []byte) error {
		if len(b) == 0 {
			return nil
		}
		if err := c.mem.WriteAt(b, off); err != nil {
			return err
		}
		readable = append(readable, frontend.Buf{off, uint64(len(b))})
		off += uint64(len(b))
		return nil
	}
	err = put(hdr[:])
	for _, a := range r.Args {
		if err == nil {
			err = put(a)
		}
	}
	if err == nil {
		err = put(r.Ext)
	}
	if err == nil {
		err = put(r.Data)
	}
	outGPA := (off + 7) &^ 7
	if !r.NoReply {
		writable = append(writable, frontend.Buf{outGPA, OutHeaderSize})
		p := outGPA + OutHeaderSize
		if len(r.OutSplit) > 0 {
			sum := 0
			for _, s := range r.OutSplit {
				writable = append(writable, frontend.Buf{p, uint64(s)})
				p += uint64(s)
				sum += s
			}
			if sum != r.Out && err == nil {
				err = fmt.Errorf("fuseclient: OutSplit sums to %d, Out is %d", sum, r.Out)
			}
		} else if r.Out > 0 {
			writable = append(writable, frontend.Buf{p, uint64(r.Out)})
		}
	}
	if err != nil {
		c.mem.Free(gpa, total)
		return Reply{}, err
	}
	comp := frontend.NewCompletion()
	if err := c.fe.Queue(qi).Submit(readable, writable, comp); err != nil {
		c.mem.Free(gpa, total)
		return Reply{}, err
	}
	if err := comp.Wait(ctx); err != nil {
		if ctx.Err() != nil {
			// Still in flight: the buffers belong to the backend until it
			// completes; free them then.
			go func() {
				<-comp.Done()
				c.mem.Free(gpa, total)
			}()
		} else {
			c.mem.Free(gpa, total)
		}
		return Reply{}, err
	}
	defer c.mem.Free(gpa, total)
	rep := Reply{Written: comp.Written}
	if r.NoReply {
		if comp.Written != 0 {
			return rep, fmt.Errorf("%w: op %d expects no reply, backend wrote %d bytes", ErrProtocol, r.Op, comp.Written)
		}
		return rep, nil
	}
	if comp.Written == 0 && r.ReplyOptional {
		return rep, nil
	}
	if comp.Written < OutHeaderSize {
		return rep, fmt.Errorf("%w: op %d: used length %d < out header", ErrProtocol, r.Op, comp.Written)
	}
	var oh [OutHeaderSize]byte
	if err := c.mem.ReadAt(oh[:], outGPA); err != nil {
		return rep, err
	}
	rep.Len, rep.Error, rep.Unique = le.Uint32(oh[0:]), int32(le.Uint32(oh[4:])), le.Uint64(oh[8:])
	switch {
	case rep.Unique != unique:
		return rep, fmt.Errorf("%w: op %d: reply unique %d, request %d", ErrProtocol, r.Op, rep.Unique, unique)
	case rep.Len != comp.Written:
		return rep, fmt.Errorf("%w: op %d: out header len %d, used length %d", ErrProtocol, r.Op, rep.Len, comp.Written)
	case rep.Error > 0 || rep.Error <= -4096:
		return rep, fmt.Errorf("%w: op %d: error field %d", ErrProtocol, r.Op, rep.Error)
	case rep.Error != 0 && rep.Len != OutHeaderSize:
		return rep, fmt.Errorf("%w: op %d: error %d with %d payload bytes", ErrProtocol, r.Op, rep.Error, rep.Len-OutHeaderSize)
	}
	n := int(rep.Len) - OutHeaderSize
	if cap(buf) >= n {
		rep.Payload = buf[:n]
	} else {
		rep.Payload = make([]byte, n)
	}
	if err := c.mem.ReadAt(rep.Payload, outGPA+OutHeaderSize); err != nil {
		return rep, err
	}
	return rep, nil
}
