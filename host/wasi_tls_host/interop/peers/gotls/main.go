// gotls: a TLS peer on Go's crypto/tls (standard library only) for interop tests.
//
// Usage:
//
//	gotls -mode server -cert CERT.pem -key KEY.pem [-cert2 CERT.pem -key2 KEY.pem]
//	      [-listen 127.0.0.1:0] [-ca CA.pem] [-client-auth none|request|verify-if-given|require]
//	      [-min 1.2] [-max 1.3] [-alpn h2,http/1.1] [-groups X25519,P-256] [-tickets=true]
//	      [-then echo|close|truncate] [-bytes N] [-count N] [-timeout 10s]
//	gotls -mode client -connect HOST:PORT [-server-name NAME] [-ca CA.pem]
//	      [-cert CERT.pem -key KEY.pem] [-min 1.2] [-max 1.3] [-alpn h2] [-groups P-384]
//	      [-tickets=true] [-count N] [-send TEXT] [-read-to-end] [-then close|truncate]
//	      [-timeout 10s]
//
// Flags:
//
//	-cert, -key    PEM certificate chain (leaf first; the rest is sent as intermediates)
//	               and its private key. Required for a server; a client presents them
//	               when the server asks for a certificate.
//	-cert2, -key2  server: a second certificate chain and key; Go picks the one whose
//	               names match the client's SNI (else the first).
//	-ca            PEM roots: a client verifies the server against them (default: the
//	               system's roots); a server verifies client certificates against them.
//	-client-auth   server: none (default), request (ask, accept anything), verify-if-given,
//	               require (require and verify).
//	-min, -max     protocol versions: 1.0, 1.1, 1.2, 1.3 (defaults: Go's).
//	-alpn          protocols offered (client) or accepted, in preference order (server).
//	-groups        key exchange groups offered or accepted: X25519, P-256, P-384, P-521.
//	-tickets       session tickets: a server issues them and resumes sessions; a client
//	               keeps them (in memory, across its -count connections) and offers them.
//	-count         server: exit 0 after N connections ended (0: serve until killed).
//	               client: N connections one after another (they share the ticket cache).
//	-send          client: after the handshake send TEXT and a newline, read one line back.
//	               A TLS 1.3 ticket arrives after the handshake: a client only keeps one
//	               when it reads, so resumption tests need -send.
//	-server-name   client: the name sent as SNI and verified (default: HOST of -connect).
//	-then          server: after the handshake, echo lines (echo, the default), or send
//	               -bytes bytes and end with close_notify (close) or with a bare TCP close,
//	               no close_notify (truncate). Client: how to end each connection once done
//	               (close: close_notify, the default; truncate: a bare TCP close).
//	-bytes         server: how many bytes -then close|truncate sends (default 1000).
//	-read-to-end   client: after the handshake (and -send), read until the server ends the
//	               stream; reports "received" (bytes) and "end": close_notify, or the error
//	               (an end without close_notify is Go's "unexpected EOF").
//	-timeout       bound on each connection's handshake and I/O.
//
// A server listens, then prints {"event":"listening","addr":"127.0.0.1:PORT"} (use port 0
// and read the address from this line), then echoes each connection's data back line by
// line until the peer closes. Output on stdout is JSON, one line per connection, written
// once its handshake completed or failed:
//
//	{"event":"connection","side":"server","ok":true,"peer":"127.0.0.1:5678",
//	 "version":"TLSv1.3","suite":"TLS_AES_128_GCM_SHA256","alpn":"h2","resumed":false,
//	 "server_name":"localhost","peer_subject":"CN=client","peer_chain":["CN=client","CN=ca"],
//	 "handshake_ms":1.2}
//
// A failed handshake has "ok":false and "error"; a client's line adds "reply" (with -send),
// "received" and "end" (with -read-to-end). handshake_ms is the handshake alone (after the
// TCP connection), as this side saw it. When a server's echo connection ends it prints
// {"event":"end","side":"server","peer":"127.0.0.1:5678","end":"close_notify"}: how the
// client ended it (close_notify, or the error: "unexpected EOF" without close_notify).
// Version names are OpenSSL's (TLSv1.2, TLSv1.3); suites are IANA names. A client exits 1
// if any of its connections failed; bad flags exit 2. Go reads no RSA-PSS (id-RSASSA-PSS)
// keys or certificates: use GnuTLS or OpenSSL for those.
//
// wasi_tls_host.interop.peers.gotls builds it (go build, no network, cached by source hash)
// for `wasi-tls-host interop` and for the tests' gotls fixture (tests/gotls_peer.py).
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
	Received    *int     `json:"received,omitempty"`
	End         string   `json:"end,omitempty"`
	HandshakeMs float64  `json:"handshake_ms,omitempty"`
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

var groups = map[string]tls.CurveID{"X25519": tls.X25519, "P-256": tls.CurveP256, "P-384": tls.CurveP384, "P-521": tls.CurveP521}

// ending names how a stream ended: close_notify, or the error.
func ending(err error) string {
	if errors.Is(err, io.EOF) {
		return "close_notify"
	}
	return err.Error()
}

func milliseconds(d time.Duration) float64 {
	return float64(d.Microseconds()) / 1000
}

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
	cert2File := flag.String("cert2", "", "server: a second PEM certificate chain, picked by SNI")
	key2File := flag.String("key2", "", "server: the second chain's private key")
	groupList := flag.String("groups", "", "comma-separated key exchange groups")
	then := flag.String("then", "", "server: echo, close or truncate; client: close or truncate")
	byteCount := flag.Int("bytes", 1000, "server: bytes sent by -then close|truncate")
	readToEnd := flag.Bool("read-to-end", false, "client: read until the server ends the stream")
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
	if *cert2File != "" {
		pair, err := tls.LoadX509KeyPair(*cert2File, *key2File)
		if err != nil {
			usage("cannot load -cert2/-key2: %v", err)
		}
		config.Certificates = append(config.Certificates, pair)
	}
	if *groupList != "" {
		for _, name := range strings.Split(*groupList, ",") {
			id, ok := groups[name]
			if !ok {
				usage("unknown group %q (X25519, P-256, P-384, P-521)", name)
			}
			config.CurvePreferences = append(config.CurvePreferences, id)
		}
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
		if *then == "" {
			*then = "echo"
		}
		if *then != "echo" && *then != "close" && *then != "truncate" {
			usage("-then must be echo, close or truncate for a server")
		}
		serve(config, *listen, *count, *timeout, *then, *byteCount)
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
		if *then == "" {
			*then = "close"
		}
		if *then != "close" && *then != "truncate" {
			usage("-then must be close or truncate for a client")
		}
		failed := false
		for i := 0; i < n; i++ {
			if !dial(config, *connect, *send, *readToEnd, *then, *timeout) {
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

func serve(config *tls.Config, address string, count int, timeout time.Duration, then string, byteCount int) {
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
			handle(tls.Server(raw, config), timeout, then, byteCount)
		}()
	}
	done.Wait()
}

// handle reports the handshake, then echoes lines until the peer closes (or the timeout),
// or sends byteCount bytes and ends with close_notify (close) or without it (truncate).
func handle(conn *tls.Conn, timeout time.Duration, then string, byteCount int) {
	defer conn.Close()
	r := report{Event: "connection", Side: "server", Peer: conn.RemoteAddr().String()}
	_ = conn.SetDeadline(time.Now().Add(timeout))
	start := time.Now()
	if err := conn.Handshake(); err != nil {
		r.Error = err.Error()
		emit(r)
		return
	}
	r.HandshakeMs = milliseconds(time.Since(start))
	r.OK = true
	describe(&r, conn.ConnectionState())
	emit(r)
	if then != "echo" {
		if _, err := conn.Write([]byte(strings.Repeat("x", byteCount))); err != nil {
			return
		}
		if then == "truncate" {
			_ = conn.NetConn().Close() // no close_notify
		}
		return
	}
	end := report{Event: "end", Side: "server", Peer: r.Peer, OK: true}
	reader := bufio.NewReader(conn)
	for {
		_ = conn.SetDeadline(time.Now().Add(timeout))
		line, err := reader.ReadBytes('\n')
		if len(line) > 0 {
			if _, werr := conn.Write(line); werr != nil {
				end.End = werr.Error()
				break
			}
		}
		if err != nil {
			end.End = ending(err)
			break
		}
	}
	emit(end)
}

func dial(config *tls.Config, address, send string, readToEnd bool, then string, timeout time.Duration) bool {
	r := report{Event: "connection", Side: "client", Peer: address}
	raw, err := net.DialTimeout("tcp", address, timeout)
	if err != nil {
		r.Error = err.Error()
		emit(r)
		return false
	}
	conn := tls.Client(raw, config)
	_ = conn.SetDeadline(time.Now().Add(timeout))
	start := time.Now()
	if err := conn.Handshake(); err != nil {
		_ = raw.Close()
		r.Error = err.Error()
		emit(r)
		return false
	}
	r.HandshakeMs = milliseconds(time.Since(start))
	if then == "truncate" {
		defer raw.Close() // no close_notify
	} else {
		defer conn.Close()
	}
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
	if readToEnd && r.OK {
		received, err := io.Copy(io.Discard, conn)
		n := int(received)
		r.Received = &n
		if err == nil {
			r.End = "close_notify" // io.Copy treats io.EOF as success
		} else {
			r.End = err.Error()
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
