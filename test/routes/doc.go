// Package routes tests, in the netns lab of test/lab, what issue 15 gives
// an appliance in front of several FTP services: PROXY protocol towards
// the server (and how it combines with --snat), announced addresses per
// client network, routes with their own pool, public address and data
// ports (and their reload), and `pasvgate sessions`, the live view.
//
// The servers are test/ftpd instances started directly in the server
// namespace (with --proxy-protocol and --pasv-same-ip where a test needs
// them), each serving a random file of its own, so a download's SHA-256
// names the server it came from. One lab, with namespaces named pgrt-*,
// is shared by the subtests of TestRoutes to keep the package's run time
// small; each subtest starts its own pasvgate and stops it at its end.
//
// Only root can run these tests; as another user they skip.
package routes
