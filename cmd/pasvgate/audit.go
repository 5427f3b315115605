package main

import "errors"

// cmdAudit is being written (issue 7); this placeholder keeps the build whole.
func cmdAudit(args []string) error { return errors.New("audit: not implemented yet") }
