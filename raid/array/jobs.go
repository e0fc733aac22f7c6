package array

import (
	"github.com/ddraid/ddraid/resync"
)

// enqueue adds a job; the worker runs jobs one at a time, in order.
func (a *Array) enqueue(j resync.Job, finish func(resync.Progress, error)) {
	j.Throttle = a.opts.Throttle
	j.Busy = a.busyFunc()
	a.mu.Lock()
	a.jobs = append(a.jobs, queued{job: j, finish: finish})
	a.mu.Unlock()
	select {
	case a.wake <- struct{}{}:
	default:
	}
}

// busyFunc reports foreground IO (requests to the served device) since
// the previous call.
func (a *Array) busyFunc() func() bool {
	var last int64
	return func() bool {
		ops := a.fg.Ops()
		busy := ops != last
		last = ops
		return busy
	}
}

func (a *Array) worker() {
	defer close(a.done)
	for {
		a.mu.Lock()
		if len(a.jobs) == 0 {
			a.mu.Unlock()
			select {
			case <-a.wake:
				continue
			case <-a.ctx.Done():
				return
			}
		}
		q := a.jobs[0]
		a.jobs = a.jobs[1:]
		a.current = &resync.Progress{Kind: q.job.Kind, Member: q.job.Member}
		a.mu.Unlock()
		report := q.job.OnProgress
		q.job.OnProgress = func(p resync.Progress) {
			a.mu.Lock()
			cp := p
			a.current = &cp
			a.mu.Unlock()
			if report != nil {
				report(p)
			}
		}
		a.log.Info("job started", "kind", q.job.Kind)
		p, err := resync.Run(a.ctx, q.job)
		if err != nil {
			a.log.Warn("job stopped", "kind", q.job.Kind, "err", err)
		} else {
			a.log.Info("job finished", "kind", q.job.Kind, "bytes", p.Done, "mismatches", p.Mismatches)
		}
		if q.finish != nil {
			q.finish(p, err)
		}
		a.mu.Lock()
		a.current, a.last = nil, &p
		a.mu.Unlock()
		if a.ctx.Err() != nil {
			return
		}
	}
}

// Idle reports whether no job is running or queued.
func (a *Array) Idle() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.current == nil && len(a.jobs) == 0
}
