module github.com/pasvgate/pasvgate

go 1.26.0

require (
	github.com/fclairamb/ftpserverlib v0.32.3
	github.com/jlaffaye/ftp v0.2.4
	github.com/spf13/afero v1.15.0
	github.com/vishvananda/netns v0.0.5
)

require (
	go.yaml.in/yaml/v3 v3.0.6 // indirect
	golang.org/x/sys v0.47.0 // indirect
	golang.org/x/text v0.28.0 // indirect
)
