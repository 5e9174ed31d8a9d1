package apiclient

import "context"

// RecvLoop reads a gRPC stream in its own goroutine, so that a caller can
// select on the stream's messages together with other events. Messages
// arrive on the first channel; the error that ended the stream on the
// second (buffered, so the goroutine never blocks on it). The goroutine
// also stops, without reporting, when ctx ends.
func RecvLoop[T any](ctx context.Context, recv func() (T, error)) (<-chan T, <-chan error) {
	msgs := make(chan T)
	errs := make(chan error, 1)
	go func() {
		for {
			m, err := recv()
			if err != nil {
				errs <- err
				return
			}
			select {
			case msgs <- m:
			case <-ctx.Done():
				return
			}
		}
	}()
	return msgs, errs
}
