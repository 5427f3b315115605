package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"time"

	"github.com/pasvgate/pasvgate/rules/nftables"
)

// oneInstallCount is how many installs oneInstall times.
const oneInstallCount = 200

// oneInstall measures what one mapping's install takes in pasvgate's
// thread, in the gw namespace, with the nftables backend pasvgate uses by
// default: the median of n installs, each of a mapping like D's (SNAT and
// a dialed address) and removed again, gapped apart as the small
// downloads are (about a millisecond). The report sets it beside F minus
// F0, what an install adds to a transfer as the client sees it: the
// floor (column F) used to be F0 plus this figure, which left out the
// install's cost on the other CPUs (see floorInstaller).
//
// It runs while no pasvgate does (between the rounds and the profile),
// sets up pasvgate's table in the gw and flushes it again, which leaves
// the gw at its baseline.
func oneInstall(ctx context.Context, l *lab, n int) (time.Duration, error) {
	b, err := nftables.New(nftables.Config{NetNS: int(l.gw.Handle()), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return 0, err
	}
	defer b.Close()
	if err := b.Setup(ctx); err != nil {
		return 0, err
	}
	var took []time.Duration
	var errs []error
	for i := range n {
		m := mappingLikeD(fmt.Sprintf("bench-%d", i), clientIP,
			netip.AddrPortFrom(gwPublic2Addr, uint16(40000+i%1000)), gwPublicAddr, 30000)
		start := time.Now()
		if err := b.Install(ctx, m); err != nil {
			errs = append(errs, err)
			break
		}
		took = append(took, time.Since(start))
		if err := b.Remove(ctx, m); err != nil {
			errs = append(errs, err)
			break
		}
		time.Sleep(time.Millisecond)
	}
	if err := b.Flush(ctx); err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return 0, fmt.Errorf("measuring one install: %v", errs)
	}
	slices.Sort(took)
	return took[len(took)/2], nil
}
