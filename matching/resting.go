package matching

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"computebroker/market"
)

// States of a resting job.
const (
	stateResting int32 = iota
	stateFilled
	stateCancelled
	stateExpired
)

// restingJob is a gtc job waiting for an offer. Its state moves once, by
// compare-and-swap, from resting to filled, cancelled or expired, so a job
// is reported at most once even when several markets see it matchable.
type restingJob struct {
	id        string
	seq       uint64
	req       Request
	q         query // checks single offers against req (minUnits 1 when split)
	expiresAt time.Time
	markets   []market.MarketKey
	state     atomic.Int32
}

type restRegistry struct {
	mu       sync.Mutex
	seq      uint64
	jobs     map[string]*restingJob
	byMarket map[market.MarketKey][]*restingJob // by seq; ended jobs dropped lazily
}

// Rest parks a gtc job until an update makes it matchable; then the engine
// reports a Fill through Config.OnFill and forgets the job. Rest first checks
// the job against the current books, so a job that became matchable since
// the caller's last Match is reported at once (OnFill is then called from
// Rest's goroutine). Jobs that allow splitting are matched with DecideSplit.
//
// It returns a conflict *market.Error when jobID is already resting and
// ErrUnknownMarket when the engine keeps none of the job's markets.
func (e *Engine) Rest(ctx context.Context, jobID string, req Request, expiresAt time.Time) error {
	j := &restingJob{id: jobID, req: req, expiresAt: expiresAt}
	j.q = newQuery(&j.req)
	if req.Job.AllowSplit {
		j.q.minUnits = 1
	}
	for _, sn := range e.snapshots(&j.req, nil) {
		j.markets = append(j.markets, sn.Market)
	}
	if len(j.markets) == 0 {
		return ErrUnknownMarket
	}
	select {
	case <-e.done:
		return ErrClosed
	case <-ctx.Done():
		return ctx.Err()
	default:
	}
	e.rest.mu.Lock()
	if old := e.rest.jobs[jobID]; old != nil && old.state.Load() == stateResting {
		e.rest.mu.Unlock()
		return market.Errorf(market.CodeConflict, "matching: job %s is already resting", jobID)
	}
	e.rest.seq++
	j.seq = e.rest.seq
	e.rest.jobs[jobID] = j
	for _, m := range j.markets {
		e.rest.byMarket[m] = append(e.rest.byMarket[m], j)
	}
	e.rest.mu.Unlock()
	// Registered before reading the snapshots: an update published after
	// this read is checked by its market against the registered job.
	e.tryFill([]*restingJob{j}, nil)
	return nil
}

// Cancel stops a resting job; it reports whether the job was resting.
func (e *Engine) Cancel(jobID string) bool {
	e.rest.mu.Lock()
	defer e.rest.mu.Unlock()
	j := e.rest.jobs[jobID]
	if j == nil {
		return false
	}
	delete(e.rest.jobs, jobID)
	return j.state.CompareAndSwap(stateResting, stateCancelled)
}

// Expire ends the resting jobs whose expires_at is at or before now and
// returns their ids, earliest expiry first (ties: oldest job first).
func (e *Engine) Expire(now time.Time) []string {
	e.rest.mu.Lock()
	var gone []*restingJob
	for id, j := range e.rest.jobs {
		if !now.Before(j.expiresAt) && j.state.CompareAndSwap(stateResting, stateExpired) {
			gone = append(gone, j)
			delete(e.rest.jobs, id)
		}
	}
	e.rest.mu.Unlock()
	slices.SortFunc(gone, func(a, b *restingJob) int {
		if c := a.expiresAt.Compare(b.expiresAt); c != 0 {
			return c
		}
		return cmpInt(int64(a.seq), int64(b.seq))
	})
	ids := make([]string, len(gone))
	for i, j := range gone {
		ids[i] = j.id
	}
	return ids
}

// Resting returns the number of resting jobs.
func (e *Engine) Resting() int {
	e.rest.mu.Lock()
	defer e.rest.mu.Unlock()
	n := 0
	for _, j := range e.rest.jobs {
		if j.state.Load() == stateResting {
			n++
		}
	}
	return n
}

// checkResting runs after a batch is published (for a provider change: after
// every market has published it). A resting job can only have become
// matchable through an offer that changed, so the jobs of the changed offers'
// markets are checked, oldest first, against those offers, and matched when
// one passes.
func (e *Engine) checkResting(changed []slot) {
	var markets []market.MarketKey
	for i := range changed {
		if m := *changed[i].mkt; !slices.Contains(markets, m) {
			markets = append(markets, m)
		}
	}
	var jobs []*restingJob
	e.rest.mu.Lock()
	for _, m := range markets {
		list := e.rest.byMarket[m]
		live := list[:0]
		for _, j := range list {
			if j.state.Load() == stateResting {
				live = append(live, j)
				jobs = append(jobs, j)
			}
		}
		clear(list[len(live):])
		if len(live) == 0 {
			delete(e.rest.byMarket, m)
		} else {
			e.rest.byMarket[m] = live
		}
	}
	e.rest.mu.Unlock()
	if len(jobs) == 0 {
		return
	}
	slices.SortFunc(jobs, func(a, b *restingJob) int { return cmpInt(int64(a.seq), int64(b.seq)) })
	jobs = slices.Compact(jobs) // a job resting in several of the markets
	e.tryFill(jobs, changed)
}

// tryFill matches jobs, oldest first, and reports those that fill. With
// changed set, a job is matched only when one of the changed offers passes
// its checks. Units handed to a fill are held back from the later jobs.
func (e *Engine) tryFill(jobs []*restingJob, changed []slot) {
	var now time.Time
	if e.cfg.Now != nil {
		now = e.cfg.Now()
	}
	var held map[string]int64
	for _, j := range jobs {
		if j.state.Load() != stateResting || (!now.IsZero() && !now.Before(j.expiresAt)) {
			continue // ended, or for Expire to reap
		}
		if changed != nil && !j.touchedBy(changed) {
			continue
		}
		req := j.req
		if !now.IsZero() {
			req.Now = now
		}
		var f Fill
		if req.Job.AllowSplit {
			sp, _ := e.MatchSplit(req)
			if sp == nil || !unheld(held, sp) {
				continue
			}
			f = Fill{JobID: j.id, Split: sp}
		} else {
			res := e.Match(req, len(held)+1)
			k := slices.IndexFunc(res.Matches, func(m Match) bool { return m.Offer.UnitsFree-held[m.Offer.ID] >= req.Job.Units })
			if k < 0 {
				continue
			}
			f = Fill{JobID: j.id, Match: res.Matches[k]}
		}
		if !j.state.CompareAndSwap(stateResting, stateFilled) {
			continue
		}
		e.rest.mu.Lock()
		if e.rest.jobs[j.id] == j {
			delete(e.rest.jobs, j.id)
		}
		e.rest.mu.Unlock()
		if held == nil {
			held = map[string]int64{}
		}
		if f.Split != nil {
			for _, p := range f.Split.Parts {
				held[p.Offer.ID] += p.Units
			}
		} else {
			held[f.Match.Offer.ID] += req.Job.Units
		}
		if e.cfg.OnFill != nil {
			e.cfg.OnFill(f)
		}
	}
}

// touchedBy reports whether one of the changed offers passes the job's
// checks.
func (j *restingJob) touchedBy(changed []slot) bool {
	for i := range changed {
		if defaultChain.check(&j.q, &changed[i]) == ReasonNone {
			return true
		}
	}
	return false
}

// unheld reports whether every part of sp still has its units after what
// this batch already handed out.
func unheld(held map[string]int64, sp *Split) bool {
	for _, p := range sp.Parts {
		if p.Offer.UnitsFree-held[p.Offer.ID] < p.Units {
			return false
		}
	}
	return true
}
