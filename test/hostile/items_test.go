package hostile

// Items of issue 12 that no peer's input or fault shows from outside the
// process, listed in the table with the tests that prove them, so that the
// table accounts for every item of the issue.
func itemEntries() []entry {
	return []entry{
		{id: "R01", side: "item", input: "verb parsing as ProFTPD and pure-ftpd read it", want: "-",
			ref: "TestVerbSmuggling (test/interop: ProFTPD, pure-ftpd, vsftpd), TestParseCommand (proxy/ftp)"},
		{id: "R02", side: "item", input: "abnormal end: conntrack flush filtered in the kernel, off the removal queue", want: "-",
			ref: "TestFlushFlowsKernel (rules/conntrack), TestRemovalsDoNotWaitForFlush (nat)"},
		{id: "R03", side: "item", input: "failed removal retried with backoff, port kept out of the pool", want: "-",
			ref: "TestRemoveRetried, TestCloseCutsRetryShort (nat), TestMetricsRemoveRetries (cmd/pasvgate)"},
		{id: "R04", side: "item", input: "transparent mode: LAN client to a private destination", want: "421",
			ref: "TestDestinationPolicy (test/sidecar), TestDestPolicy (proxy)"},
		{id: "R05", side: "item", input: "transparent mode: always a canonical 227", want: "-",
			ref: "TestTransparentPASVCanonical (proxy)"},
		{id: "R06", side: "item", input: "interception port with several listeners", want: "-",
			ref: "TestListenOverlap (cmd/pasvgate)"},
		{id: "R07", side: "item", input: "/healthz during reloads (race); a reload with a restart-only key keeps the upstream change", want: "-",
			ref: "TestReloadUnderRace (test/lifecycle)"},
		{id: "R08", side: "item", input: "shutdown drains sessions in parallel", want: "421 each",
			ref: "TestShutdownDrainsInParallel (proxy)"},
		{id: "R09", side: "item", input: "a port returns to the pool only after its flush", want: "-",
			ref: "TestPortFreedOnlyAfterFlush (nat)"},
		{id: "R10", side: "item", input: "a second instance in the same netns", want: "exit 1",
			ref: "TestSecondInstanceRefused (test/lifecycle)"},
		{id: "R11", side: "item", input: "metrics or pprof beyond loopback", want: "a warning",
			ref: "TestMetricsExposure (cmd/pasvgate)"},
		{id: "R12", side: "item", input: "--public-addr 0.0.0.0; upstream = own listener", want: "exit 2",
			ref: "TestPublicAddrUnicast, TestUpstreamIsListener (cmd/pasvgate)"},
		{id: "R13", side: "item", input: "probe password from the environment or a file", want: "-",
			ref: "TestProbePasswordSources (cmd/pasvgate)"},
		{id: "R14", side: "item", input: "age_ms of \"mapping closed\"", want: "-",
			ref: "TestClosedAge (nat)"},
	}
}
