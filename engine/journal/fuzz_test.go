package journal

import (
	"testing"

	"golang.org/x/sys/unix"
)

// FuzzJournalMap: any memfd content either fails Map with an error or maps
// to a journal whose every entry and session read without panicking.
func FuzzJournalMap(f *testing.F) {
	j, err := Create(1, 2)
	if err != nil {
		f.Fatal(err)
	}
	s, _ := j.Slot(0, 1)
	g := s.Begin(3, 9, &[PreWords]uint64{1})
	s.SetRef(g, &Ref{ID: 5})
	s.Finish(g, 0, []byte("reply"), nil)
	j.SetSession([]byte("session"))
	f.Add(append([]byte(nil), j.mem...))
	j.Close()
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) > 1<<20 {
			return
		}
		fd := memfd(t, b)
		defer unix.Close(fd)
		m, err := Map(fd)
		if err != nil {
			return
		}
		defer m.Close()
		m.Session()
		var e Entry
		for q := range m.Queues() {
			for h := range m.QueueSize() {
				s, ok := m.Slot(q, uint16(h))
				if !ok {
					t.Fatalf("slot (%d, %d) missing", q, h)
				}
				if p := s.Read(&e); p == Done && len(e.Reply) > ReplyMax {
					t.Fatal("reply too long")
				}
			}
		}
		// A mapped journal is writable.
		s, _ := m.Slot(0, 0)
		g := s.Begin(1, 1, &[PreWords]uint64{})
		s.Finish(g, 0, nil, nil)
		if s.Read(&e) != Done {
			t.Fatal("write after Map did not stick")
		}
	})
}
