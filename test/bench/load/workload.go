package load

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"io"
	"math/rand/v2"
	"net/netip"
	"slices"
	"time"
)

// Config is one run of the client. A zero count skips that part, so the
// same program serves the full suite, a bulk-only run and a profile.
type Config struct {
	// Addr is the control address to dial.
	Addr netip.AddrPort
	// PASVHost, when valid, is the host every PASV data connection goes
	// to, in place of the 227's (its port is kept). The bench's floor
	// relays the control channel without parsing it, so its 227s name the
	// server, and static DNAT on this address takes the data connection
	// there, as the kernel path of a proxy that rewrote the 227 would.
	PASVHost netip.Addr
	// Timeout bounds every single step: a connect, a reply, a transfer.
	Timeout time.Duration

	// Noops is the number of NOOP round trips in one session.
	Noops int
	// Gets is the number of sequential small downloads in one session,
	// done once with PASV and once with EPSV.
	Gets int
	// Sessions is the number of whole sessions: connect, log in, one
	// small download, QUIT.
	Sessions int
	// Bulk is the number of big downloads and big uploads.
	Bulk int
	// Profile is the number of single small downloads to time phase by
	// phase, ProfileGap apart so that the gateway's off-path work for one
	// (rule removal) is over before the next begins.
	Profile    int
	ProfileGap time.Duration

	// SmallFile is what Gets, Sessions and Profile download; it must be
	// SmallSize bytes long.
	SmallFile string
	SmallSize int64
	// BigFile is what Bulk downloads; it must be BigSize bytes long.
	BigFile string
	BigSize int64
	// UploadFile is where Bulk uploads UploadSize bytes; it is deleted
	// after each upload has been checked.
	UploadFile string
	UploadSize int64

	// TLS makes every session FTPS when its Config is set (tls.go).
	TLS TLS
	// SessionRetr adds one small download to each whole session. The
	// FTPS bench leaves it out: its sessions are connect, AUTH TLS, login
	// and QUIT.
	SessionRetr bool
	// SmallSHA256 and BigSHA256, when set, are the hex SHA-256 of the
	// small and the big file, and every download of them is checked
	// against it, inside the timing.
	SmallSHA256, BigSHA256 string
	// KeepUploads leaves each bulk upload on the server, as UploadFile
	// with ".N" appended, for the orchestrator to check its bytes
	// (Result.Uploads; UploadSHA256 says what they must hash to), in place
	// of the SIZE check and DELE.
	KeepUploads bool
}

// Result is what a run measured. Rates use MB = 10^6 bytes.
type Result struct {
	// PASVAddr and EPSVAddr are where the first PASV and EPSV data
	// connections went: the orchestrator checks them against the gateway
	// under test.
	PASVAddr string `json:"pasv_addr,omitempty"`
	EPSVAddr string `json:"epsv_addr,omitempty"`

	// NoopUS is the mean NOOP round trip in microseconds; P50 and P99 are
	// over the individual round trips of the same session.
	NoopUS    float64 `json:"noop_us,omitempty"`
	NoopP50US float64 `json:"noop_p50_us,omitempty"`
	NoopP99US float64 `json:"noop_p99_us,omitempty"`

	// PASVPerSec and EPSVPerSec are small downloads per second in one
	// session, everything from PASV/EPSV to 226 included.
	PASVPerSec float64 `json:"pasv_per_sec,omitempty"`
	EPSVPerSec float64 `json:"epsv_per_sec,omitempty"`

	// SessionsPerSec counts whole sessions per second.
	SessionsPerSec float64 `json:"sessions_per_sec,omitempty"`

	// DownMBps and UpMBps hold one rate per bulk transfer, from RETR/STOR
	// sent until 226: the data path. DownSetupMBps and UpSetupMBps are the
	// same transfers from PASV sent, so they include the data port set-up.
	DownMBps      []float64 `json:"down_mbps,omitempty"`
	UpMBps        []float64 `json:"up_mbps,omitempty"`
	DownSetupMBps []float64 `json:"down_setup_mbps,omitempty"`
	UpSetupMBps   []float64 `json:"up_setup_mbps,omitempty"`

	// Profile holds one entry per profiled transfer.
	Profile []Sample `json:"profile,omitempty"`

	// TLS is what the client saw of FTPS, when it spoke it.
	TLS *TLSStats `json:"tls,omitempty"`
	// Uploads are the files KeepUploads left on the server.
	Uploads []string `json:"uploads,omitempty"`
	// ClientCPUSeconds is the CPU time, user and system, the client's
	// process used for the whole run (set by cmd/ftpload).
	ClientCPUSeconds float64 `json:"client_cpu_s,omitempty"`
}

// Sample is one profiled transfer, in milliseconds.
type Sample struct {
	PassiveMS float64 `json:"passive_ms"`
	ConnectMS float64 `json:"connect_ms"`
	OpenMS    float64 `json:"open_ms"`
	DataMS    float64 `json:"data_ms"`
	FinalMS   float64 `json:"final_ms"`
	TotalMS   float64 `json:"total_ms"`
	// DoneUnixNano is when the 226 arrived (wall clock).
	DoneUnixNano int64 `json:"done_unix_nano"`
}

// Run runs cfg's workload and returns what it measured. Any failure (a
// refused command, a short transfer) ends the run with an error: a number
// measured over a broken path would be a lie.
func Run(ctx context.Context, cfg Config) (Result, error) {
	var res Result
	if cfg.TLS.Config != nil {
		res.TLS = &TLSStats{}
	}
	if cfg.Noops > 0 || cfg.Gets > 0 || cfg.Bulk > 0 {
		if err := oneSession(ctx, cfg, &res); err != nil {
			return res, err
		}
	}
	if cfg.Sessions > 0 {
		if err := sessions(ctx, cfg, &res); err != nil {
			return res, err
		}
	}
	if cfg.Profile > 0 {
		if err := profile(ctx, cfg, &res); err != nil {
			return res, err
		}
	}
	return res, nil
}

// oneSession runs the NOOPs, the sequential small downloads and the bulk
// transfers, in that order, in one control session.
func oneSession(ctx context.Context, cfg Config, res *Result) error {
	c, err := dialLogin(ctx, cfg, res, true)
	if err != nil {
		return err
	}
	defer c.Close()

	if cfg.Noops > 0 {
		rtt := make([]time.Duration, cfg.Noops)
		start := time.Now()
		for i := range rtt {
			t := time.Now()
			if err := c.Noop(); err != nil {
				return err
			}
			rtt[i] = time.Since(t)
		}
		res.NoopUS = us(time.Since(start)) / float64(cfg.Noops)
		slices.Sort(rtt)
		res.NoopP50US = us(rtt[len(rtt)/2])
		res.NoopP99US = us(rtt[len(rtt)*99/100])
	}

	if cfg.Gets > 0 {
		buf := make([]byte, 64<<10)
		for _, epsv := range []bool{false, true} {
			start := time.Now()
			for i := range cfg.Gets {
				_, t, err := retrChecked(ctx, c, cfg.SmallFile, epsv, buf, cfg.SmallSize, cfg.SmallSHA256)
				if err != nil {
					return fmt.Errorf("download %d: %w", i, err)
				}
				if i == 0 {
					if epsv {
						res.EPSVAddr = t.Addr.String()
					} else {
						res.PASVAddr = t.Addr.String()
					}
				}
			}
			rate := float64(cfg.Gets) / time.Since(start).Seconds()
			if epsv {
				res.EPSVPerSec = rate
			} else {
				res.PASVPerSec = rate
			}
		}
	}

	if cfg.Bulk > 0 {
		buf := make([]byte, 256<<10)
		chunk := uploadChunk()
		for i := range cfg.Bulk {
			n, t, err := retrChecked(ctx, c, cfg.BigFile, false, buf, cfg.BigSize, cfg.BigSHA256)
			if err != nil {
				return err
			}
			if res.PASVAddr == "" {
				res.PASVAddr = t.Addr.String()
			}
			res.DownMBps = append(res.DownMBps, mbps(n, t.Open+t.Data+t.Final))
			res.DownSetupMBps = append(res.DownSetupMBps, mbps(n, t.Total()))

			up := cfg.UploadFile
			if cfg.KeepUploads {
				up = fmt.Sprintf("%s.%d", up, i)
			}
			t, err = c.Stor(ctx, up, false, cfg.UploadSize, chunk)
			if err != nil {
				return err
			}
			// Checked and removed outside the timing: the server must
			// have every byte, and the next upload starts from nothing.
			if cfg.KeepUploads {
				res.Uploads = append(res.Uploads, up)
			} else {
				got, err := c.Size(up)
				if err != nil {
					return err
				}
				if got != cfg.UploadSize {
					return fmt.Errorf("upload of %s: server has %d bytes, want %d", up, got, cfg.UploadSize)
				}
				if err := c.Delete(up); err != nil {
					return err
				}
			}
			res.UpMBps = append(res.UpMBps, mbps(cfg.UploadSize, t.Open+t.Data+t.Final))
			res.UpSetupMBps = append(res.UpSetupMBps, mbps(cfg.UploadSize, t.Total()))
		}
	}
	return c.Quit()
}

// sessions times whole short sessions: what a batch job fetching one file
// per connection costs.
func sessions(ctx context.Context, cfg Config, res *Result) error {
	buf := make([]byte, 64<<10)
	start := time.Now()
	for i := range cfg.Sessions {
		c, err := dialLogin(ctx, cfg, res, cfg.SessionRetr)
		if err != nil {
			return fmt.Errorf("session %d: %w", i, err)
		}
		if cfg.SessionRetr {
			_, _, err = retrChecked(ctx, c, cfg.SmallFile, false, buf, cfg.SmallSize, cfg.SmallSHA256)
		}
		if err == nil {
			err = c.Quit()
		} else {
			c.Close()
		}
		if err != nil {
			return fmt.Errorf("session %d: %w", i, err)
		}
	}
	res.SessionsPerSec = float64(cfg.Sessions) / time.Since(start).Seconds()
	return nil
}

// profile times single small downloads phase by phase, spaced apart.
func profile(ctx context.Context, cfg Config, res *Result) error {
	c, err := dialLogin(ctx, cfg, res, true)
	if err != nil {
		return err
	}
	defer c.Close()
	buf := make([]byte, 64<<10)
	for i := range cfg.Profile {
		n, t, err := c.Retr(ctx, cfg.SmallFile, false, buf)
		if err != nil {
			return err
		}
		if n != cfg.SmallSize {
			return fmt.Errorf("profiled download %d: got %d bytes, want %d", i, n, cfg.SmallSize)
		}
		if i == 0 {
			res.PASVAddr = t.Addr.String()
		}
		res.Profile = append(res.Profile, Sample{
			PassiveMS: ms(t.Passive), ConnectMS: ms(t.Connect), OpenMS: ms(t.Open),
			DataMS: ms(t.Data), FinalMS: ms(t.Final), TotalMS: ms(t.Total()),
			DoneUnixNano: t.Done.UnixNano(),
		})
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(cfg.ProfileGap):
		}
	}
	return c.Quit()
}

// dial opens a control connection as cfg says.
func dial(ctx context.Context, cfg Config) (*Conn, error) {
	c, err := Dial(ctx, cfg.Addr, cfg.Timeout)
	if err != nil {
		return nil, err
	}
	c.pasvHost = cfg.PASVHost
	return c, nil
}

// dialLogin opens a control connection as cfg says, upgrades it to TLS
// when cfg asks for FTPS, and logs in; then, for a session that will
// transfer, sets the data protection.
func dialLogin(ctx context.Context, cfg Config, res *Result, transfers bool) (*Conn, error) {
	c, err := dial(ctx, cfg)
	if err != nil {
		return nil, err
	}
	if cfg.TLS.Config != nil {
		err = c.StartTLS(ctx, cfg.TLS, res.TLS)
	}
	if err == nil {
		err = c.Login()
	}
	if err == nil && cfg.TLS.Config != nil && transfers {
		err = c.Protect()
	}
	if err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// retrChecked downloads name and checks its size and, when sum is set,
// its SHA-256 (hex).
func retrChecked(ctx context.Context, c *Conn, name string, epsv bool, buf []byte, size int64, sum string) (int64, Timing, error) {
	var h hash.Hash
	if sum != "" {
		h = sha256.New()
	}
	var sink io.Writer
	if h != nil {
		sink = h
	}
	n, t, err := c.RetrTo(ctx, name, epsv, buf, sink)
	if err != nil {
		return n, t, err
	}
	if n != size {
		return n, t, fmt.Errorf("download of %s: got %d bytes, want %d", name, n, size)
	}
	if h != nil {
		if got := hex.EncodeToString(h.Sum(nil)); got != sum {
			return n, t, fmt.Errorf("download of %s: SHA-256 %s, want %s", name, got, sum)
		}
	}
	return n, t, nil
}

// uploadChunk is what a bulk upload writes, over and over: 1 MiB from a
// generator with a fixed seed, so that UploadSHA256 can say what the
// server must have.
func uploadChunk() []byte {
	chunk := make([]byte, 1<<20)
	_, _ = rand.NewChaCha8([32]byte{'p', 'g', 'b'}).Read(chunk)
	return chunk
}

// UploadSHA256 is the hex SHA-256 of a bulk upload of size bytes, as Stor
// writes it from uploadChunk.
func UploadSHA256(size int64) string {
	h := sha256.New()
	chunk := uploadChunk()
	for left := size; left > 0; {
		p := chunk[:min(int64(len(chunk)), left)]
		stampOffset(p, size-left)
		h.Write(p)
		left -= int64(len(p))
	}
	return hex.EncodeToString(h.Sum(nil))
}

func us(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }
func ms(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e6 }

func mbps(n int64, d time.Duration) float64 { return float64(n) / 1e6 / d.Seconds() }
