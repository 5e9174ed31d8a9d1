package bridge

import (
	"context"
	"sync"

	"github.com/opencustodynet/opencustody/protocol/apipb"
)

// outItem is a message waiting to go to hsmd. from is the device a frame
// came from (nil for announcements), whose count of waiting frames is
// released once the frame leaves the queue.
type outItem struct {
	msg  *apipb.BridgeMessage
	from *relayedDevice
}

func (it outItem) release() {
	if it.from != nil {
		it.from.queuedToHSMD.Add(-1)
	}
}

// outQueue is the queue of one relay stream's outgoing messages. Pushing
// never blocks, so it may be done under [Bridge].mu. Each device bounds its
// own frames in the queue; the queue bounds everything at limit messages:
// beyond it, hsmd is not taking the stream's messages at all, the queue
// closes, and full is closed so that the stream is dropped.
type outQueue struct {
	limit int
	wake  chan struct{} // holds a token while items may be waiting
	full  chan struct{} // closed when a push met the limit

	mu     sync.Mutex // guards items, closed; taken after Bridge.mu
	items  []outItem
	closed bool
}

func newOutQueue(limit int) *outQueue {
	return &outQueue{limit: limit, wake: make(chan struct{}, 1), full: make(chan struct{})}
}

// push adds it; it reports false (and releases it) after close, or when
// the queue is full.
func (q *outQueue) push(it outItem) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		it.release()
		return false
	}
	if len(q.items) >= q.limit {
		q.closed = true
		close(q.full)
		it.release()
		return false
	}
	q.items = append(q.items, it)
	select {
	case q.wake <- struct{}{}:
	default:
	}
	return true
}

// close makes take return what is left and then report the end.
func (q *outQueue) close() {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.closed = true
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// take waits for items and returns all of them. more is false when the
// queue is closed and empty, or ctx ended.
func (q *outQueue) take(ctx context.Context) (items []outItem, more bool) {
	for {
		q.mu.Lock()
		items, q.items = q.items, nil
		closed := q.closed
		q.mu.Unlock()
		if len(items) > 0 {
			return items, true
		}
		if closed {
			return nil, false
		}
		select {
		case <-q.wake:
		case <-ctx.Done():
			return nil, false
		}
	}
}

// drain closes the queue and releases what it still holds.
func (q *outQueue) drain() {
	q.mu.Lock()
	items := q.items
	q.items, q.closed = nil, true
	q.mu.Unlock()
	for _, it := range items {
		it.release()
	}
}
