package hsm

import (
	"context"

	"github.com/miekg/pkcs11"
)

// pool hands out PKCS#11 sessions, one goroutine at a time per session.
// A session is never shared: PKCS#11 sessions are not safe for concurrent
// use, and sharing one without a lock crashes the process.
//
// sem holds one token per session that may exist; a goroutine takes a token
// before it takes or opens a session, so at most cap(sem) sessions exist and
// a caller over the limit waits for one to come back (or for its context).
// idle holds the open sessions nobody is using. done is closed when the
// store closes, so waiters give up. All are channels, so the pool needs no
// mutex.
type pool struct {
	p     *pkcs11.Ctx
	slot  uint
	idle  chan pkcs11.SessionHandle
	sem   chan struct{}
	done  chan struct{}
	flags uint
}

func newPool(p *pkcs11.Ctx, slot uint, size int) *pool {
	return &pool{
		p:     p,
		slot:  slot,
		idle:  make(chan pkcs11.SessionHandle, size),
		sem:   make(chan struct{}, size),
		done:  make(chan struct{}),
		flags: pkcs11.CKF_SERIAL_SESSION | pkcs11.CKF_RW_SESSION,
	}
}

// get returns a session for the caller's exclusive use until put.
func (p *pool) get(ctx context.Context) (pkcs11.SessionHandle, error) {
	select {
	case p.sem <- struct{}{}:
	default:
		select {
		case p.sem <- struct{}{}:
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-p.done:
			return 0, ErrClosed
		}
	}
	select {
	case sh := <-p.idle:
		return sh, nil
	default:
	}
	sh, err := p.p.OpenSession(p.slot, p.flags)
	if err != nil {
		<-p.sem
		return 0, err
	}
	return sh, nil
}

// put gives back a session taken with get. A session that saw an error is
// closed instead of reused: it may hold an unfinished operation.
func (p *pool) put(sh pkcs11.SessionHandle, healthy bool) {
	if healthy {
		p.idle <- sh // never blocks: at most cap(sem) sessions exist
	} else {
		p.p.CloseSession(sh)
	}
	<-p.sem
}

// flush closes the idle sessions, for example after the token dropped the
// login and they may all be dead.
func (p *pool) flush() {
	for {
		select {
		case sh := <-p.idle:
			p.p.CloseSession(sh)
		default:
			return
		}
	}
}

// drain waits until every session is back, then closes them all. The pool
// is unusable afterwards: get returns ErrClosed.
func (p *pool) drain() {
	close(p.done)
	for range cap(p.sem) {
		p.sem <- struct{}{}
	}
	p.flush()
}
