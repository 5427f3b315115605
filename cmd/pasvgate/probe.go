package main

import "errors"

// cmdProbe is being written (issue 7); this placeholder keeps the build whole.
func cmdProbe(args []string) error { return errors.New("probe: not implemented yet") }
