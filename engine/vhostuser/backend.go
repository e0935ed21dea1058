package vhostuser

import (
	"vfsd/vring/inflight"
	"vfsd/vring/mem"
)

// QueueConfig is everything a Backend needs to run one virtqueue.
type QueueConfig struct {
	Size              int    // power of two, 1..MaxQueueSize
	Desc, Avail, Used uint64 // guest physical addresses of the three rings
	LastAvail         uint16 // vring base: the next avail ring entry to process
	EventIdx          bool   // VIRTIO_RING_F_EVENT_IDX negotiated
	Mem               *mem.Table

	// Eventfds, borrowed from the Device; -1 when absent. Kick -1 means the
	// frontend asked for polling (VHOST_USER_VRING_NOFD_MASK); Call -1 means
	// the driver is never notified; Err -1 means errors are only logged.
	Kick, Call, Err int

	// Inflight, when not nil, is the ring's inflight tracker (vring/inflight):
	// the Backend attaches it before popping anything.
	Inflight *inflight.Queue
	// Resume: the ring's position lives in Inflight, left by a previous
	// backend (worker restart, or SET_INFLIGHT_FD from a reconnecting
	// frontend). The Backend resumes from it (vring.Queue.ResumeInflight),
	// ignoring LastAvail, resubmits the chains still in flight before
	// popping new ones, and notifies the driver once. Without Resume a
	// non-nil Inflight is started afresh (vring.Queue.SetInflight).
	Resume bool
	// BaseFromUsed: take the start position from used.idx in guest RAM
	// instead of LastAvail. Set after a restart for a ring that the previous
	// backend had stopped cleanly (nothing in flight, so used.idx is where it
	// stopped) while the replayed vring base is the frontend's older one.
	BaseFromUsed bool
	// Tracked, if set, is called once tracking is attached to Inflight and
	// before the first chain is popped (from StartQueue's goroutine).
	Tracked func()
}

// Backend runs virtqueues; engine/dataplane implements it. The Device calls
// every method from its one goroutine, never concurrently.
type Backend interface {
	// StartQueue starts processing queue i. The queue is not running.
	StartQueue(i int, c QueueConfig) error

	// StopQueue stops queue i, waits until every request it popped has been
	// answered (pushed to the used ring) and returns the ring's last avail
	// index. After it returns the Backend no longer uses the queue's fds or
	// guest memory. Stopping a queue that is not running (or that stopped
	// itself on a broken ring) returns its last known index.
	StopQueue(i int) (lastAvail uint16, err error)

	// SetMem installs a new guest memory table for the running queues and
	// for queues started later. When it returns, no queue thread and no
	// in-flight request uses the previous table. An error means some queue
	// could not use the new table (its rings are not in it) and stopped
	// processing; the table is installed regardless.
	SetMem(t *mem.Table) error

	// SetCall and SetErr replace the call or err eventfd (-1: none) of
	// running queue i; the previous fd is not used after they return.
	SetCall(i int, fd int) error
	SetErr(i int, fd int) error
}
