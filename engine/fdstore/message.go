package fdstore

import (
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Message is one parsed notify datagram.
type Message struct {
	Ready     bool   // READY=1
	Reloading bool   // RELOADING=1
	Stopping  bool   // STOPPING=1
	Watchdog  bool   // WATCHDOG=1
	Status    string // STATUS=, "" when absent
	HasStatus bool
	Errno     int // ERRNO=, 0 when absent

	Store     bool   // FDSTORE=1
	RemoveFDs bool   // FDSTOREREMOVE=1
	FDName    string // FDNAME=, "" when absent
	HasFDName bool
	FDPoll    bool // FDPOLL=0 -> false; true when absent

	// vfsd extension (Client.SendBatch), ignored by systemd as unknown:
	// X_VFSD_REMOVE= names removed before anything is stored, in order;
	// X_VFSD_FDNAMES= one name per attached fd, in order (with FDSTORE=1).
	RemoveNames []string
	FDNames     []string

	Unknown []string // other assignments, kept for logging
	NumFDs  int      // fds that came with the datagram
}

// The variables of a batched datagram (Client.SendBatch).
const (
	batchRemoveVar = "X_VFSD_REMOVE"
	batchNamesVar  = "X_VFSD_FDNAMES"
)

// maxDatagram is the largest datagram accepted (systemd: NOTIFY_BUFFER_MAX).
const maxDatagram = 4096

// ParseMessage parses a notify datagram: newline-separated VAR=value
// assignments. It rejects empty datagrams, invalid UTF-8 and lines without
// '='. Unknown variables are kept in Unknown and are not an error.
func ParseMessage(b []byte) (Message, error) {
	m := Message{FDPoll: true}
	if len(b) == 0 {
		return m, fmt.Errorf("empty datagram")
	}
	if !utf8.Valid(b) {
		return m, fmt.Errorf("datagram is not valid UTF-8")
	}
	for _, line := range strings.Split(string(b), "\n") {
		if line == "" {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok || k == "" {
			return m, fmt.Errorf("malformed assignment %.64q", line)
		}
		switch k {
		case "READY":
			m.Ready = v == "1"
		case "RELOADING":
			m.Reloading = v == "1"
		case "STOPPING":
			m.Stopping = v == "1"
		case "WATCHDOG":
			m.Watchdog = v == "1"
		case "STATUS":
			m.Status, m.HasStatus = v, true
		case "ERRNO":
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 {
				return m, fmt.Errorf("bad ERRNO=%.32q", v)
			}
			m.Errno = n
		case "FDSTORE":
			m.Store = v == "1"
		case "FDSTOREREMOVE":
			m.RemoveFDs = v == "1"
		case "FDNAME":
			m.FDName, m.HasFDName = v, true
		case "FDPOLL":
			m.FDPoll = v != "0"
		case batchRemoveVar:
			m.RemoveNames = strings.Split(v, ":")
		case batchNamesVar:
			m.FDNames = strings.Split(v, ":")
		default:
			m.Unknown = append(m.Unknown, k)
		}
	}
	return m, nil
}
