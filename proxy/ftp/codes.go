package ftp

// Reply codes the proxy reads or sends, named so that a rewrite rule or a
// refusal says what it means. The comment names the RFC that defines each.
const (
	CodeDataOpenTransferStarting = 125 // RFC 959: data connection already open; transfer starting
	CodeFileStatusOK             = 150 // RFC 959: about to open data connection
	CodeOK                       = 200 // RFC 959: command okay (PORT, EPRT, TYPE)
	CodeSystemStatus             = 211 // RFC 959; also the FEAT reply, RFC 2389
	CodeServiceReady             = 220 // RFC 959: the banner
	CodeClosingControl           = 221 // RFC 959: goodbye, after QUIT
	CodeDataOpenNoTransfer       = 225 // RFC 959: data connection open; no transfer in progress
	CodeClosingData              = 226 // RFC 959: transfer complete, data connection closed
	CodeEnteringPassive          = 227 // RFC 959: reply to PASV, carries h1,h2,h3,h4,p1,p2
	CodeEnteringExtPassive       = 229 // RFC 2428: reply to EPSV, carries (|||port|)
	CodeLoggedIn                 = 230 // RFC 959
	CodeAuthOK                   = 234 // RFC 2228: AUTH accepted, TLS handshake follows
	CodeFileActionOK             = 250 // RFC 959: requested file action completed
	CodeNeedPassword             = 331 // RFC 959
	CodeServiceUnavailable       = 421 // RFC 959: the server is closing the control connection
	CodeCantOpenData             = 425 // RFC 959: can't open data connection
	CodeTransferAborted          = 426 // RFC 959: connection closed; transfer aborted
	CodeFileUnavailable          = 450 // RFC 959: file busy, try later
	CodeLocalError               = 451 // RFC 959: local error in processing
	CodeSyntaxError              = 500 // RFC 959: command unrecognized, or line too long
	CodeArgSyntaxError           = 501 // RFC 959: syntax error in arguments
	CodeNotImplemented           = 502 // RFC 959
	CodeBadSequence              = 503 // RFC 959: bad sequence of commands
	CodeParamNotImplemented      = 504 // RFC 959: command not implemented for that parameter
	CodeNetProtoNotSupported     = 522 // RFC 2428: network protocol not supported (EPRT)
	CodeNotLoggedIn              = 530 // RFC 959
	CodePolicyRefused            = 534 // RFC 2228: request denied for policy reasons
	CodeProtLevelNotSupported    = 536 // RFC 2228: PROT level not supported by the security mechanism
	CodeFileNotAvailable         = 550 // RFC 959: file unavailable, or permission denied
)
