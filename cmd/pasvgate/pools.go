package main

import (
	"context"
	"log/slog"
	"sort"
	"sync"

	"github.com/pasvgate/pasvgate/proxy/pool"
)

// poolSet is the running pools of every route, by name, each with its
// health checks. A reload updates a pool in place (sync), so that its
// servers keep their state and session counts; a pool whose route is gone
// stops its checks, and its sessions go on.
type poolSet struct {
	ctx context.Context
	log *slog.Logger

	mu    sync.Mutex
	pools map[string]*runningPool
	wg    sync.WaitGroup
}

type runningPool struct {
	p      *pool.Pool
	cancel context.CancelFunc
}

func newPoolSet(ctx context.Context, log *slog.Logger) *poolSet {
	return &poolSet{ctx: ctx, log: log, pools: map[string]*runningPool{}}
}

// sync makes the set hold exactly the pools of rc.
func (s *poolSet) sync(rc *runConfig) {
	s.mu.Lock()
	defer s.mu.Unlock()
	want := map[string]bool{}
	for _, r := range rc.routes {
		for _, cfg := range []*pool.Config{r.pool, r.pool6} {
			if cfg == nil {
				continue
			}
			want[cfg.Name] = true
			if rp, ok := s.pools[cfg.Name]; ok {
				rp.p.Update(*cfg)
				continue
			}
			ctx, cancel := context.WithCancel(s.ctx)
			rp := &runningPool{p: pool.New(*cfg, s.log), cancel: cancel}
			s.pools[cfg.Name] = rp
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				rp.p.Run(ctx)
			}()
		}
	}
	for name, rp := range s.pools {
		if !want[name] {
			rp.cancel()
			delete(s.pools, name)
			s.log.Info("pool removed: its open sessions go on", "pool", name)
		}
	}
}

// get returns the running pool cfg names, nil for a nil cfg.
func (s *poolSet) get(cfg *pool.Config) *pool.Pool {
	if cfg == nil {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if rp, ok := s.pools[cfg.Name]; ok {
		return rp.p
	}
	return nil
}

// list returns the running pools, by name.
func (s *poolSet) list() []*pool.Pool {
	s.mu.Lock()
	defer s.mu.Unlock()
	names := make([]string, 0, len(s.pools))
	for n := range s.pools {
		names = append(names, n)
	}
	sort.Strings(names)
	ps := make([]*pool.Pool, 0, len(names))
	for _, n := range names {
		ps = append(ps, s.pools[n].p)
	}
	return ps
}

// stop ends every pool's checks and waits for them.
func (s *poolSet) stop() {
	s.mu.Lock()
	for _, rp := range s.pools {
		rp.cancel()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// members lists every server of every route, as written.
func (rc *runConfig) members() []string {
	var ms []string
	for _, r := range rc.routes {
		for _, p := range []*pool.Config{r.pool, r.pool6} {
			if p != nil {
				for _, m := range p.Members {
					ms = append(ms, m.Addr)
				}
			}
		}
	}
	return ms
}

// listenAddrs lists the listeners as the start-up line shows them.
func (rc *runConfig) listenAddrs() []string {
	var ls []string
	for _, l := range rc.listeners {
		ls = append(ls, l.key())
	}
	return ls
}

// poolSummary describes the pools for the start-up line: name, policy,
// servers.
func (rc *runConfig) poolSummary() []string {
	var out []string
	for _, r := range rc.routes {
		for _, p := range []*pool.Config{r.pool, r.pool6} {
			if p == nil {
				continue
			}
			s := p.Name + " " + p.Policy.String() + ":"
			for _, m := range p.Members {
				s += " " + m.Addr
			}
			out = append(out, s)
		}
	}
	return out
}

// metricsAddr is --metrics as written, "" when off.
func (rc *runConfig) metricsAddr() string {
	if rc.lim.metrics == nil {
		return ""
	}
	return rc.lim.metrics.text
}
