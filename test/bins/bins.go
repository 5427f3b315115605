// Package bins compiles the binaries that the process-level tests run:
// pasvgate itself and the test FTP server. The lifecycle and scale labs
// call Build; deploy, which must test the binary its Dockerfile builds,
// uses Compile for the test server alone.
//
// Packages are named by import path, so a test in any directory of the
// module builds the same thing, and with CGO_ENABLED=0, so the binaries
// are static and run in any namespace or container the tests make.
package bins

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
)

// The packages Build compiles.
const (
	PasvgatePkg = "github.com/pasvgate/pasvgate/cmd/pasvgate"
	FTPDPkg     = "github.com/pasvgate/pasvgate/test/ftpd/cmd/testftpd"
)

// built holds one test binary's build: building once per process keeps a
// package's tests from spending most of their time in the compiler.
var built struct {
	once           sync.Once
	dir            string
	pasvgate, ftpd string
	err            error
}

// Build compiles pasvgate and the test FTP server into a temporary
// directory the first time it is called in the process, and returns their
// paths; a failed build fails every test that asks. Call Remove from
// TestMain after m.Run to delete the directory.
func Build(tb testing.TB) (pasvgate, ftpd string) {
	tb.Helper()
	built.once.Do(func() {
		built.dir, built.err = os.MkdirTemp("", "pasvgate-bins-")
		if built.err != nil {
			return
		}
		built.pasvgate = filepath.Join(built.dir, "pasvgate")
		built.ftpd = filepath.Join(built.dir, "testftpd")
		for out, pkg := range map[string]string{built.pasvgate: PasvgatePkg, built.ftpd: FTPDPkg} {
			if built.err = Compile(out, pkg); built.err != nil {
				return
			}
		}
	})
	if built.err != nil {
		tb.Fatal(built.err)
	}
	return built.pasvgate, built.ftpd
}

// Remove deletes what Build compiled, if it did; it is for TestMain,
// after m.Run, since no single test owns the binaries.
func Remove() {
	if built.dir != "" {
		os.RemoveAll(built.dir)
	}
}

// builtRace holds BuildRace's pasvgate, built with the race detector.
var builtRace struct {
	once sync.Once
	path string
	err  error
}

// BuildRace compiles pasvgate with the race detector (cgo on, so the
// binary is dynamic: it runs in a network namespace, not in an image),
// once per process, into Build's directory. A race it meets makes it print
// "WARNING: DATA RACE" and exit with status 66.
func BuildRace(tb testing.TB) string {
	tb.Helper()
	Build(tb)
	builtRace.once.Do(func() {
		builtRace.path = filepath.Join(built.dir, "pasvgate-race")
		cmd := exec.Command("go", "build", "-race", "-o", builtRace.path, PasvgatePkg)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=1")
		if b, err := cmd.CombinedOutput(); err != nil {
			builtRace.err = fmt.Errorf("building %s with -race: %v\n%s", PasvgatePkg, err, b)
		}
	})
	if builtRace.err != nil {
		tb.Fatal(builtRace.err)
	}
	return builtRace.path
}

// Compile builds the package pkg (an import path in this module) into
// the file out, with CGO_ENABLED=0.
func Compile(out, pkg string) error {
	cmd := exec.Command("go", "build", "-o", out, pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("building %s: %v\n%s", pkg, err, b)
	}
	return nil
}
