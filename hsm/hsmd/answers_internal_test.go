package hsmd

import (
	"context"
	"fmt"
	"math/rand/v2"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/opencustodynet/opencustody/hsm/core"
)

// TestAnswersReachTheCoreInOrder queues answers of two devices as their
// links report them and checks that each device's answers reach the core
// one at a time, in the order the device sent them, however long each
// check takes. The core refuses an answer whose counter is not above the
// last it accepted, so a reordering would refuse honest approvals.
func TestAnswersReachTheCoreInOrder(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	s := &Server{answers: map[string][]core.Answer{}, bgCtx: ctx}
	var mu sync.Mutex
	got := map[string][]string{}
	busy := map[string]bool{}
	s.check = func(_ context.Context, a core.Answer) {
		mu.Lock()
		if busy[a.Device] {
			t.Errorf("device %s: two answers checked at once", a.Device)
		}
		busy[a.Device] = true
		mu.Unlock()
		if rand.IntN(4) == 0 {
			time.Sleep(time.Duration(rand.IntN(200)) * time.Microsecond)
		}
		runtime.Gosched()
		mu.Lock()
		busy[a.Device] = false
		got[a.Device] = append(got[a.Device], a.RequestID)
		mu.Unlock()
	}
	const n = 200
	var want []string
	for i := range n {
		id := fmt.Sprintf("r%03d", i)
		want = append(want, id)
		for _, dev := range []string{"a", "b"} {
			s.queueAnswer(core.Answer{RequestID: id, Device: dev})
		}
		if i%7 == 0 {
			runtime.Gosched() // let a worker drain its queue now and then
		}
	}
	s.bgWork.Wait()
	for _, dev := range []string{"a", "b"} {
		if !slices.Equal(got[dev], want) {
			t.Errorf("device %s: answers checked in order %v, want %v", dev, got[dev], want)
		}
	}
	if len(s.answers) != 0 {
		t.Errorf("queues left: %v", s.answers)
	}
}
