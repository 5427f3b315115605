module github.com/pasvgate/pasvgate

go 1.26.0

require (
	github.com/coreos/go-iptables v0.8.0 // indirect
	github.com/fclairamb/ftpserverlib v0.32.3 // indirect
	github.com/google/gopacket v1.1.19 // indirect
	github.com/jlaffaye/ftp v0.2.4 // indirect
	github.com/spf13/afero v1.15.0 // indirect
	github.com/vishvananda/netlink v1.3.1 // indirect
	github.com/vishvananda/netns v0.0.5 // indirect
	go.yaml.in/yaml/v3 v3.0.6 // indirect
	golang.org/x/sys v0.47.0 // indirect
	golang.org/x/text v0.28.0 // indirect
)
