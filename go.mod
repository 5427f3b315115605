module github.com/pasvgate/pasvgate

go 1.26.0

require (
	github.com/coreos/go-iptables v0.8.0
	github.com/fclairamb/ftpserverlib v0.32.3
	github.com/google/gopacket v1.1.19
	github.com/jlaffaye/ftp v0.2.4
	github.com/spf13/afero v1.15.0
	github.com/vishvananda/netlink v1.3.1
	github.com/vishvananda/netns v0.0.5
	go.yaml.in/yaml/v3 v3.0.6
	golang.org/x/sys v0.47.0
)

require (
	golang.org/x/net v0.0.0-20190620200207-3b0461eec859 // indirect
	golang.org/x/text v0.28.0 // indirect
)
