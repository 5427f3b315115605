package pool

import (
	"cmp"
	"fmt"
	"math"
	"slices"
	"strconv"

	"github.com/pasvgate/pasvgate/nat"
)

// Policy is how a pool picks a member for a new session.
type Policy uint8

// Policies; the package doc says how each one picks.
const (
	RoundRobin Policy = iota // smooth weighted round-robin
	LeastConn                // fewest open sessions per unit of weight
	Source                   // sticky by client address (IPv6: /64)
	User                     // sticky by login name
)

var policyNames = [...]string{
	RoundRobin: "round-robin",
	LeastConn:  "least-conn",
	Source:     "source",
	User:       "user",
}

// ParsePolicy reads a policy's name: "round-robin", "least-conn",
// "source" or "user".
func ParsePolicy(s string) (Policy, error) {
	for p, name := range policyNames {
		if s == name {
			return Policy(p), nil
		}
	}
	return 0, fmt.Errorf("unknown balance policy %q (want round-robin, least-conn, source or user)", s)
}

func (p Policy) String() string {
	if int(p) < len(policyNames) {
		return policyNames[p]
	}
	return "policy(" + strconv.Itoa(int(p)) + ")"
}

// candidatesLocked returns the members Dial should try, in order: the Up
// members by the policy's preference, then the Down ones by the same
// preference. Drained members are not among them. The first pick moves
// the round-robin state, as a pick should; the rest of the order is what
// the policy would prefer next without moving it again.
func (p *Pool) candidatesLocked(k Key) []*member {
	var up, down []*member
	for _, m := range p.members {
		switch m.state {
		case Up:
			up = append(up, m)
		case Down:
			down = append(down, m)
		}
	}
	switch p.cfg.Policy {
	case LeastConn:
		byLoad(up)
		if len(up) > 1 {
			// The members tied for the lowest load share out turns by
			// weight, in smooth round-robin order.
			n := 1
			for n < len(up) && compareLoad(up[0], up[n]) == 0 {
				n++
			}
			first := smoothPick(up[:n])
			i := slices.Index(up, first)
			copy(up[1:i+1], up[:i])
			up[0] = first
		}
		byLoad(down)
	case Source, User:
		key := hashKey(p.cfg.Policy, k)
		byScore(up, key)
		byScore(down, key)
	default:
		if len(up) > 0 {
			first := smoothPick(up)
			slices.SortStableFunc(up, func(a, b *member) int {
				switch {
				case a == first:
					return -1
				case b == first:
					return 1
				}
				return cmp.Compare(b.current, a.current)
			})
		}
	}
	return append(up, down...)
}

// smoothPick is one step of smooth weighted round-robin over ms (all with
// weight above 0): it returns the member picked and moves the scores.
// Members outside ms keep their scores, so a member that is down for a
// while does not come back with a burst of saved-up turns. Ties go to the
// first in configuration order.
func smoothPick(ms []*member) *member {
	total := 0
	var best *member
	for _, m := range ms {
		m.current += m.weight
		total += m.weight
		if best == nil || m.current > best.current {
			best = m
		}
	}
	best.current -= total
	return best
}

// byLoad sorts ms by open sessions (and connects in progress) per unit of
// weight, stably, so that equal loads stay in configuration order.
func byLoad(ms []*member) {
	slices.SortStableFunc(ms, compareLoad)
}

// compareLoad compares two members' sessions per unit of weight, by cross
// multiplication rather than division so that it is exact.
func compareLoad(a, b *member) int {
	return cmp.Compare((a.sessions+a.dialing)*b.weight, (b.sessions+b.dialing)*a.weight)
}

// hashKey is the rendezvous-hashing key of a session under policy pol: a
// client's nat.ClientKey for Source, the login name for User. The leading
// byte keeps the two key spaces apart.
func hashKey(pol Policy, k Key) []byte {
	if pol == User {
		return append([]byte{'u'}, k.User...)
	}
	b, _ := nat.ClientKey(k.Client.Addr()).MarshalBinary() // never fails
	return append([]byte{'s'}, b...)
}

// byScore sorts ms by their rendezvous score for key, best first; equal
// scores (equal weights and a 64-bit hash collision) keep configuration
// order.
func byScore(ms []*member, key []byte) {
	if len(ms) < 2 {
		return
	}
	scores := make(map[*member]float64, len(ms))
	for _, m := range ms {
		scores[m] = score(key, m.addr, m.weight)
	}
	slices.SortStableFunc(ms, func(a, b *member) int {
		return cmp.Compare(scores[b], scores[a])
	})
}

// score is the weighted rendezvous score of a member for key: weight /
// -ln(h), h uniform in (0, 1). For weights w_i, member i wins a key with
// probability w_i / sum(w): the score is, in distribution, the weight over
// an exponential variable, and the smallest of independent exponentials
// with rates w_i is the i-th with that probability.
func score(key []byte, addr string, weight int) float64 {
	x := mix64(fnv1a(fnv1a(fnv1a(fnvOffset, key), []byte{0}), []byte(addr)))
	h := (float64(x>>11) + 0.5) / (1 << 53) // 53 random bits, never 0 or 1
	return float64(weight) / -math.Log(h)
}

const (
	fnvOffset = 14695981039346656037
	fnvPrime  = 1099511628211
)

// fnv1a continues a 64-bit FNV-1a hash with b. A fixed hash rather than
// hash/maphash: its values must not change across restarts, or every
// sticky client would move.
func fnv1a(h uint64, b []byte) uint64 {
	for _, c := range b {
		h ^= uint64(c)
		h *= fnvPrime
	}
	return h
}

// mix64 is the splitmix64 finalizer. FNV-1a's high bits barely change with
// the last bytes hashed, so keys differing at the end (two clients of one
// /24, "user1" and "user2") would score alike without it.
func mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}
