// Package readme makes the README executable: it reads README.md, finds
// every command the README shows, and runs each one exactly as written in a
// network-namespace lab shaped like the README's (test/lab): the gateway
// 203.0.113.1 and its second public address 203.0.113.2 in front of the
// server 192.0.2.10, with the gateway's private address 192.0.2.1; the
// router with its LAN on lan0 (198.51.100.0/24) and its public address
// 203.0.113.1 on wan0. Each run checks that the command starts, serves a
// transfer to a real client told to trust the 227 address where that
// applies, and stops cleanly (SIGTERM, exit 0, `pasvgate rules list`
// empty). The systemd unit's ExecStart and ExecStopPost, and the
// Dockerfile's ENTRYPOINT and CMD (as the image's user, after its own
// setcap lines), are run the same way, after the README's install steps
// have run in a private mount namespace whose /etc, /usr/local/bin, /run
// and /usr/sbin are overlays: nothing reaches the host's own files.
//
// # The README's convention
//
// Every code block of README.md is fenced and tagged:
//
//   - ```sh: commands a user runs. Each line is one command (a line
//     ending in a backslash continues on the next); a line that starts
//     with # is a comment, and so is the rest of a line after " #". The
//     test runs each one as written, with pasvgate on PATH and the
//     repository's top as the working directory.
//   - ```output: what the command of the ```sh block just above it (one
//     command, only blank lines between the blocks) prints; the test
//     compares it, with port numbers left free where the kernel picks
//     them.
//   - ```text: anything else: synopses (pasvgate probe [--timeout 3s] ...),
//     rule listings (iptables-restore input, nft rulesets), logs, layout.
//
// An untagged fence, another tag, or an indented code block fails the
// test: it could not tell whether such a block is meant to run. A
// runnable block holds no placeholder: a command with a word to fill in
// (FILE.pcap, IFACE, ADDR:PORT, in capitals) is a synopsis and goes in a
// ```text block. What a runnable line leaves to the shell ($(git describe
// ...), $(getent group ...)) the shell expands, where the README's steps
// put what it reads; the one line that names the user's own choice,
// $EDITOR, is not run (see below). So the test substitutes nothing.
//
// # Both directions of drift
//
// commands_test.go lists every command the README shows, by its exact
// text (continuations joined, runs of blanks made one, a trailing comment
// left out), with what running it proves. A command in the README that
// the list does not have fails TestCommandsKnown, and so does a listed
// command the README no longer shows. Commands that cannot run in a
// namespace on this machine (make test itself, docker without an engine,
// systemctl without systemd, $EDITOR) are in the list too, with the
// reason and what the test does instead.
//
// The example configs under deploy/examples/ are run the same way, as
// `pasvgate run --config FILE`, each in a lab that has what it names (a
// config the test has no lab for fails).
//
// The lab tests need root and skip otherwise; TestCommandsKnown and
// TestConvention run anywhere. Run:
//
//	go test ./test/readme -v
//
// The package has no code besides its tests.
package readme
