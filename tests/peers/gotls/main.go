// gotls: a TLS peer on Go's crypto/tls (standard library only) for interop tests.
//
// Usage:
//
//	gotls -mode server -cert CERT.pem -key KEY.pem [-listen 127.0.0.1:0] [-ca CA.pem]
//	      [-client-auth none|request|verify-if-given|require] [-min 1.2] [-max 1.3]
//	      [-alpn h2,http/1.1] [-tickets=true] [-count N] [-timeout 10s]
//	gotls -mode client -connect HOST:PORT [-server-name NAME] [-ca CA.pem]
//	      [-cert CERT.pem -key KEY.pem] [-min 1.2] [-max 1.3] [-alpn h2]
//	      [-tickets=true] [-count N] [-send TEXT] [-timeout 10s]
//
// Flags:
//
//	-cert, -key    PEM certificate chain (leaf first; the rest is sent as intermediates)
//	               and its private key. Required for a server; a client presents them
//	               when the server asks for a certificate.
//	-ca            PEM roots: a client verifies the server against them (default: the
//	               system's roots); a server verifies client certificates against them.
//	-client-auth   server: none (default), request (ask, accept anything), verify-if-given,
//	               require (require and verify).
//	-min, -max     protocol versions: 1.0, 1.1, 1.2, 1.3 (defaults: Go's).
//	-alpn          protocols offered (client) or accepted, in preference order (server).
//	-tickets       session tickets: a server issues them and resumes sessions; a client
//	               keeps them (in memory, across its -count connections) and offers them.
//	-count         server: exit 0 after N connections ended (0: serve until killed).
//	               client: N connections one after another (they share the ticket cache).
//	-send          client: after the handshake send TEXT and a newline, read one line back.
//	               A TLS 1.3 ticket arrives after the handshake: a client only keeps one
//	               when it reads, so resumption tests need -send.
//	-server-name   client: the name sent as SNI and verified (default: HOST of -connect).
//	-timeout       bound on each connection's handshake and I/O.
//
// A server listens, then prints {"event":"listening","addr":"127.0.0.1:PORT"} (use port 0
// and read the address from this line), then echoes each connection's data back line by
// line until the peer closes. Output on stdout is JSON, one line per connection, written
// once its handshake completed or failed:
//
//	{"event":"connection","side":"server","ok":true,"peer":"127.0.0.1:5678",
//	 "version":"TLSv1.3","suite":"TLS_AES_128_GCM_SHA256","alpn":"h2","resumed":false,
//	 "server_name":"localhost","peer_subject":"CN=client","peer_chain":["CN=client","CN=ca"]}
//
// A failed handshake has "ok":false and "error"; a client's line adds "reply" (with -send).
// Version names are OpenSSL's (TLSv1.2, TLSv1.3); suites are IANA names. A client exits 1
// if any of its connections failed; bad flags exit 2. Go reads no RSA-PSS (id-RSASSA-PSS)
// keys or certificates: use GnuTLS or OpenSSL for those.
//
// tests/gotls_peer.py builds it (go build, no network) and runs it for pytest: the gotls
// fixture.
package main

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"time"
)

type report struct {
	Event       string   `json:"event"`
	Side        string   `json:"side"`
	OK          bool     `json:"ok"`
	Peer        string   `json:"peer,omitempty"`
	Version     string   `json:"version,omitempty"`
	Suite       string   `json:"suite,omitempty"`
	ALPN        string   `json:"alpn,omitempty"`
	Resumed     bool     `json:"resumed"`
	ServerName  string   `json:"server_name,omitempty"`
	PeerSubject string   `json:"peer_subject,omitempty"`
	PeerChain   []string `json:"peer_chain,omitempty"`
	Reply       *string  `json:"reply,omitempty"`
	Error       string   `json:"error,omitempty"`
}

var (
	outMu sync.Mutex
	out   = json.NewEncoder(os.Stdout)
)

type listening struct {
	Event string `json:"event"`
	Addr  string `json:"addr"`
}

func emit(r interface{}) {
	outMu.Lock()
	defer outMu.Unlock()
	_ = out.Encode(r) // one line each; stdout is unbuffered
}

var versions = map[string]uint16{"1.0": tls.VersionTLS10, "1.1": tls.VersionTLS11, "1.2": tls.VersionTLS12, "1.3": tls.VersionTLS13}

var versionNames = map[uint16]string{tls.VersionTLS10: "TLSv1", tls.VersionTLS11: "TLSv1.1", tls.VersionTLS12: "TLSv1.2", tls.VersionTLS13: "TLSv1.3"}

var clientAuths = map[string]tls.ClientAuthType{
	"none": tls.NoClientCert, "request": tls.RequestClientCert,
	"verify-if-given": tls.VerifyClientCertIfGiven, "require": tls.RequireAndVerifyClientCert,
}

func usage(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "gotls: "+format+"\n", args...)
	os.Exit(2)
}

// version is the protocol version a -min or -max flag names (0, Go's default, for "").
func version(name string) uint16 {
	if name == "" {
		return 0
	}
	v, ok := versions[name]
	if !ok {
		usage("unknown protocol version %q (1.0, 1.1, 1.2, 1.3)", name)
	}
	return v
}

func describe(r *report, state tls.ConnectionState) {
	r.Version = versionNames[state.Version]
	r.Suite = tls.CipherSuiteName(state.CipherSuite)
	r.ALPN = state.NegotiatedProtocol
	r.Resumed = state.DidResume
	r.ServerName = state.ServerName
	for _, cert := range state.PeerCertificates {
		r.PeerChain = append(r.PeerChain, cert.Subject.String())
	}
	if len(r.PeerChain) > 0 {
		r.PeerSubject = r.PeerChain[0]
	}
}

func main() {
	mode := flag.String("mode", "", "server or client")
	listen := flag.String("listen", "127.0.0.1:0", "server: address to listen on")
	connect := flag.String("connect", "", "client: HOST:PORT to connect to")
	serverName := flag.String("server-name", "", "client: SNI and the name verified")
	certFile := flag.String("cert", "", "PEM certificate chain, leaf first")
	keyFile := flag.String("key", "", "PEM private key")
	caFile := flag.String("ca", "", "PEM roots for verifying the peer")
	clientAuth := flag.String("client-auth", "none", "server: none, request, verify-if-given, require")
	minVersion := flag.String("min", "", "lowest protocol version (1.0 to 1.3)")
	maxVersion := flag.String("max", "", "highest protocol version (1.0 to 1.3)")
	alpn := flag.String("alpn", "", "comma-separated ALPN protocols")
	tickets := flag.Bool("tickets", true, "session tickets and resumption")
	count := flag.Int("count", 0, "server: connections to serve (0: forever); client: connections to make (default 1)")
	send := flag.String("send", "", "client: a line to send after the handshake (its reply is read)")
	timeout := flag.Duration("timeout", 10*time.Second, "bound on each connection's handshake and I/O")
	flag.Parse()

	config := &tls.Config{}
	if *certFile != "" || *keyFile != "" {
		pair, err := tls.LoadX509KeyPair(*certFile, *keyFile)
		if err != nil {
			usage("cannot load -cert/-key: %v", err)
		}
		config.Certificates = []tls.Certificate{pair}
	}
	if *caFile != "" {
		pem, err := os.ReadFile(*caFile)
		if err != nil {
			usage("cannot read -ca: %v", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			usage("-ca %s holds no PEM certificate", *caFile)
		}
		config.RootCAs, config.ClientCAs = pool, pool
	}
	config.MinVersion = version(*minVersion)
	config.MaxVersion = version(*maxVersion)
	if *alpn != "" {
		config.NextProtos = strings.Split(*alpn, ",")
	}
	auth, ok := clientAuths[*clientAuth]
	if !ok {
		usage("unknown -client-auth %q (none, request, verify-if-given, require)", *clientAuth)
	}
	config.ClientAuth = auth

	switch *mode {
	case "server":
		if len(config.Certificates) == 0 {
			usage("a server needs -cert and -key")
		}
		config.SessionTicketsDisabled = !*tickets
		serve(config, *listen, *count, *timeout)
	case "client":
		if *connect == "" {
			usage("a client needs -connect HOST:PORT")
		}
		host, _, err := net.SplitHostPort(*connect)
		if err != nil {
			usage("bad -connect %q: %v", *connect, err)
		}
		config.ServerName = host
		if *serverName != "" {
			config.ServerName = *serverName
		}
		if *tickets {
			config.ClientSessionCache = tls.NewLRUClientSessionCache(64)
		}
		n := *count
		if n <= 0 {
			n = 1
		}
		failed := false
		for i := 0; i < n; i++ {
			if !dial(config, *connect, *send, *timeout) {
				failed = true
			}
		}
		if failed {
			os.Exit(1)
		}
	default:
		usage("-mode must be server or client")
	}
}

func serve(config *tls.Config, address string, count int, timeout time.Duration) {
	listener, err := net.Listen("tcp", address)
	if err != nil {
		usage("cannot listen on %s: %v", address, err)
	}
	emit(listening{Event: "listening", Addr: listener.Addr().String()})
	var done sync.WaitGroup
	for served := 0; count == 0 || served < count; served++ {
		raw, err := listener.Accept()
		if err != nil {
			fmt.Fprintf(os.Stderr, "gotls: accept: %v\n", err)
			os.Exit(1)
		}
		done.Add(1)
		go func() {
			defer done.Done()
			handle(tls.Server(raw, config), timeout)
		}()
	}
	done.Wait()
}

// handle reports the handshake, then echoes lines until the peer closes (or the timeout).
func handle(conn *tls.Conn, timeout time.Duration) {
	defer conn.Close()
	r := report{Event: "connection", Side: "server", Peer: conn.RemoteAddr().String()}
	_ = conn.SetDeadline(time.Now().Add(timeout))
	if err := conn.Handshake(); err != nil {
		r.Error = err.Error()
		emit(r)
		return
	}
	r.OK = true
	describe(&r, conn.ConnectionState())
	emit(r)
	reader := bufio.NewReader(conn)
	for {
		_ = conn.SetDeadline(time.Now().Add(timeout))
		line, err := reader.ReadBytes('\n')
		if len(line) > 0 {
			if _, werr := conn.Write(line); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func dial(config *tls.Config, address, send string, timeout time.Duration) bool {
	r := report{Event: "connection", Side: "client", Peer: address}
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: timeout}, "tcp", address, config)
	if err != nil {
		r.Error = err.Error()
		emit(r)
		return false
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(timeout))
	r.OK = true
	describe(&r, conn.ConnectionState())
	if send != "" {
		reply, err := exchange(conn, send)
		r.Reply = &reply
		if err != nil {
			r.OK = false
			r.Error = err.Error()
		}
	}
	emit(r)
	return r.OK
}

func exchange(conn *tls.Conn, line string) (string, error) {
	if _, err := io.WriteString(conn, line+"\n"); err != nil {
		return "", err
	}
	reply, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil && !(errors.Is(err, io.EOF) && reply != "") {
		return reply, err
	}
	return strings.TrimSuffix(reply, "\n"), nil
}
