package main

import (
	"fmt"
	"log/slog"
)

// logSpec is --log-format and --log-level, parsed.
type logSpec struct {
	json  bool
	level slog.Level
}

// parseLog checks the log keys.
func (c Config) parseLog() (logSpec, error) {
	if c.LogFormat != "text" && c.LogFormat != "json" {
		return logSpec{}, badFlag("log-format", "%q: want text or json", c.LogFormat)
	}
	l, err := parseLevel(c.LogLevel)
	if err != nil {
		return logSpec{}, badFlag("log-level", "%v", err)
	}
	return logSpec{json: c.LogFormat == "json", level: l}, nil
}

func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return 0, fmt.Errorf("%q: want debug, info, warn or error", s)
	}
	return l, nil
}
