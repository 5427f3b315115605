// Package audit holds the end-to-end tests of `pasvgate audit`: the lab
// runs that record the capture fixtures in test/testdata (only when
// PASVGATE_UPDATE_FIXTURES=1, as root), the golden reports of those
// fixtures (no root needed), and a live capture in a lab namespace while a
// client session runs (root).
//
// Fixtures are made here, never downloaded: each is a capture of a
// scripted situation in the lab (a healthy server, a misconfigured one, a
// 227 split across segments, a multi-line 227, AUTH TLS, a blocked data
// port), taken on the gateway's client-side interface with the same live
// capture `pasvgate audit --iface` uses.
package audit
