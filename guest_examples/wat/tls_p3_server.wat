;; A WASI 0.3 TLS echo server on this project's wasi-tls-host:tls@0.2.0, written by hand (no
;; language runtime: the work it leaves to the host is all there is). TCP comes from the test
;; stand-in wasi-tls-host:test/tcp (devtools/tcp_p3.py) until wasi:sockets 0.3 is on main.
;;
;; serve(port, count, flags, stall-ms) accepts `count` connections from the listener the test
;; registered for `port`, one handshake after another, each then living on by itself:
;;   - the socket's received stream goes to server.accept, its outgoing ciphertext to the
;;     socket's send (nothing passes through the guest);
;;   - the identity is chosen by name from the ClientHello: the SNI, or "default" without
;;     one (identities named by host name: --identity a.test=...);
;;   - flags bit 0: request a client certificate, required (mutual TLS);
;;   - stall-ms: wait this long (the stand-in's sleep) before answering the hello;
;;   - once established, the connection echoes: its receive stream is given to its send, so
;;     the plaintext goes back through the host alone; close_notify comes back at the end.
;; It returns once every connection has ended, one record per connection:
;;   (code, message, sni, version, suite, peer subject, receive code, receive message,
;;    send code, send message)
;; with code -1 for success, else the index of the error-code enum case (and its message);
;; the first two say how the handshake went, the others how each direction ended.
(component
  (type $bytes (stream u8))
  (import "wasi-tls-host:tls/types@0.2.0" (instance $types-i
    (type $ec (enum "unknown-issuer" "expired" "not-yet-valid" "name-mismatch" "bad-certificate" "handshake-failure"
      "protocol-version" "peer-alert" "decode-error" "closed" "truncated" "access-denied" "invalid-state"
      "would-block" "invalid-argument" "internal" "code-mismatch"))
    (export "error-code" (type $code (eq $ec)))
    (type $er (record (field "code" $code) (field "message" string)))
    (export "error" (type (eq $er)))))
  (alias export $types-i "error" (type $error))
  (type $outcome (future (result (error $error))))
  (import "wasi-tls-host:tls/identities@0.2.0" (instance $identities-i
    (export "public-identity" (type $pi (sub resource)))
    (export "[method]public-identity.subject" (func (param "self" (borrow $pi)) (result string)))))
  (alias export $identities-i "public-identity" (type $public-identity))
  (import "wasi-tls-host:tls/connection@0.2.0" (instance $connection-i
    (export "error" (type $e (eq $error)))
    (export "public-identity" (type $pi (eq $public-identity)))
    (export "connection" (type $c (sub resource)))
    (export "[method]connection.protocol-version" (func (param "self" (borrow $c)) (result u16)))
    (export "[method]connection.cipher-suite" (func (param "self" (borrow $c)) (result u16)))
    (export "[method]connection.peer-identity" (func (param "self" (borrow $c)) (result (option (own $pi)))))
    (export "[method]connection.receive" (func (param "self" (borrow $c)) (result (tuple $bytes (future (result (error $e)))))))
    (export "[method]connection.send" (func (param "self" (borrow $c)) (param "data" $bytes) (result (future (result (error $e))))))))
  (alias export $connection-i "connection" (type $connection))
  (import "wasi-tls-host:tls/server@0.2.0" (instance $server-i
    (export "error" (type $e (eq $error)))
    (export "connection" (type $c (eq $connection)))
    (export "incoming-client-hello" (type $h (sub resource)))
    (export "outgoing-server-hello" (type $o (sub resource)))
    (export "incoming-client-exchange" (type $x (sub resource)))
    (export "accept" (func (param "ciphertext" $bytes) (result (tuple (own $h) $bytes))))
    (export "[method]incoming-client-hello.server-name" (func async (param "self" (borrow $h)) (result (result (option string) (error $e)))))
    (export "[static]incoming-client-hello.accept" (func async (param "this" (own $h)) (param "response" (own $o)) (result (result (own $x) (error $e)))))
    (export "[constructor]outgoing-server-hello" (func (param "identity" string) (result (own $o))))
    (export "[method]outgoing-server-hello.request-client-identity" (func (param "self" (borrow $o)) (param "required" bool)))
    (export "[static]incoming-client-exchange.finish" (func async (param "this" (own $x)) (result (result (own $c) (error $e)))))))
  (alias export $server-i "incoming-client-hello" (type $hello))
  (import "wasi-tls-host:test/tcp" (instance $tcp-i
    (export "socket" (type $s (sub resource)))
    (export "accept" (func async (param "port" u16) (result (result (own $s) (error string)))))
    (export "sleep" (func async (param "ms" u32)))
    (export "[method]socket.receive" (func (param "self" (borrow $s)) (result $bytes)))
    (export "[method]socket.send" (func (param "self" (borrow $s)) (param "data" $bytes)))))
  (alias export $tcp-i "socket" (type $socket))

  (core module $Libc
    (memory (export "memory") 16)
    (global $bump (mut i32) (i32.const 262144))
    (func (export "realloc") (param i32 i32 i32 i32) (result i32)
      (local $p i32)
      (local.set $p (i32.and (i32.add (global.get $bump) (i32.const 7)) (i32.const -8)))
      (global.set $bump (i32.add (local.get $p) (local.get 3)))
      (local.get $p)))
  (core instance $libc (instantiate $Libc))
  (alias core export $libc "memory" (core memory $mem))
  (alias core export $libc "realloc" (core func $realloc))

  (core func $tls-accept (canon lower (func $server-i "accept") (memory $mem)))
  (core func $server-name (canon lower (func $server-i "[method]incoming-client-hello.server-name") async (memory $mem) (realloc $realloc)))
  (core func $hello-accept (canon lower (func $server-i "[static]incoming-client-hello.accept") async (memory $mem) (realloc $realloc)))
  (core func $hello-drop (canon resource.drop $hello))
  (core func $answer-new (canon lower (func $server-i "[constructor]outgoing-server-hello") (memory $mem)))
  (core func $request-client (canon lower (func $server-i "[method]outgoing-server-hello.request-client-identity")))
  (core func $finish (canon lower (func $server-i "[static]incoming-client-exchange.finish") async (memory $mem) (realloc $realloc)))
  (core func $version (canon lower (func $connection-i "[method]connection.protocol-version")))
  (core func $suite (canon lower (func $connection-i "[method]connection.cipher-suite")))
  (core func $peer (canon lower (func $connection-i "[method]connection.peer-identity") (memory $mem)))
  (core func $receive (canon lower (func $connection-i "[method]connection.receive") (memory $mem)))
  (core func $send (canon lower (func $connection-i "[method]connection.send")))
  (core func $connection-drop (canon resource.drop $connection))
  (core func $subject (canon lower (func $identities-i "[method]public-identity.subject") (memory $mem) (realloc $realloc)))
  (core func $identity-drop (canon resource.drop $public-identity))
  (core func $tcp-accept (canon lower (func $tcp-i "accept") async (memory $mem) (realloc $realloc)))
  (core func $sleep (canon lower (func $tcp-i "sleep") async))
  (core func $sock-receive (canon lower (func $tcp-i "[method]socket.receive")))
  (core func $sock-send (canon lower (func $tcp-i "[method]socket.send")))
  (core func $sock-drop (canon resource.drop $socket))
  (core func $ws-new (canon waitable-set.new))
  (core func $ws-wait (canon waitable-set.wait (memory $mem)))
  (core func $ws-drop (canon waitable-set.drop))
  (core func $join (canon waitable.join))
  (core func $subtask-drop (canon subtask.drop))
  (core func $future-read (canon future.read $outcome async (memory $mem) (realloc $realloc)))
  (core func $future-drop-readable (canon future.drop-readable $outcome))
  (core func $return-records (canon task.return
    (result (list (tuple s32 string string u16 u16 string s32 string s32 string))) (memory $mem)))

  (core module $Main
    (import "libc" "memory" (memory 16))
    (import "h" "tls-accept" (func $tls-accept (param i32 i32)))
    (import "h" "server-name" (func $server-name (param i32 i32) (result i32)))
    (import "h" "hello-accept" (func $hello-accept (param i32 i32 i32) (result i32)))
    (import "h" "hello-drop" (func $hello-drop (param i32)))
    (import "h" "answer-new" (func $answer-new (param i32 i32) (result i32)))
    (import "h" "request-client" (func $request-client (param i32 i32)))
    (import "h" "finish" (func $finish (param i32 i32) (result i32)))
    (import "h" "version" (func $version (param i32) (result i32)))
    (import "h" "suite" (func $suite (param i32) (result i32)))
    (import "h" "peer" (func $peer (param i32 i32)))
    (import "h" "receive" (func $receive (param i32 i32)))
    (import "h" "send" (func $send (param i32 i32) (result i32)))
    (import "h" "connection-drop" (func $connection-drop (param i32)))
    (import "h" "subject" (func $subject (param i32 i32)))
    (import "h" "identity-drop" (func $identity-drop (param i32)))
    (import "h" "tcp-accept" (func $tcp-accept (param i32 i32) (result i32)))
    (import "h" "sleep" (func $sleep (param i32) (result i32)))
    (import "h" "sock-receive" (func $sock-receive (param i32) (result i32)))
    (import "h" "sock-send" (func $sock-send (param i32 i32)))
    (import "h" "sock-drop" (func $sock-drop (param i32)))
    (import "h" "ws-new" (func $ws-new (result i32)))
    (import "h" "ws-wait" (func $ws-wait (param i32 i32) (result i32)))
    (import "h" "ws-drop" (func $ws-drop (param i32)))
    (import "h" "join" (func $join (param i32 i32)))
    (import "h" "subtask-drop" (func $subtask-drop (param i32)))
    (import "h" "future-read" (func $future-read (param i32 i32) (result i32)))
    (import "h" "future-drop-readable" (func $future-drop-readable (param i32)))
    (import "h" "return-records" (func $return-records (param i32 i32)))

    ;; Memory: 0..12 event, 64..256 call results, 256 "default", 8192.. the records (56
    ;; bytes each), 131072.. receive futures, 196608.. send futures (4 bytes each; at most
    ;; 16384 connections), 262144.. realloc's (strings the host returns).
    (data (i32.const 256) "default")
    (global $RECORDS i32 (i32.const 8192))
    (global $RECEIVES i32 (i32.const 131072))
    (global $SENDS i32 (i32.const 196608))

    (func $wait-on (param $handle i32) (result i32)
      (local $ws i32) (local $code i32)
      (local.set $ws (call $ws-new))
      (call $join (local.get $handle) (local.get $ws))
      (local.set $code (call $ws-wait (local.get $ws) (i32.const 0)))
      (if (i32.ne (i32.load (i32.const 0)) (local.get $handle)) (then unreachable))
      (call $join (local.get $handle) (i32.const 0))
      (call $ws-drop (local.get $ws))
      (local.get $code))

    (func $await (param $status i32)
      (local $subtask i32)
      (if (i32.eq (i32.and (local.get $status) (i32.const 0xf)) (i32.const 2 (; RETURNED ;))) (then (return)))
      (if (i32.ne (i32.and (local.get $status) (i32.const 0xf)) (i32.const 1 (; STARTED ;))) (then unreachable))
      (local.set $subtask (i32.shr_u (local.get $status) (i32.const 4)))
      (if (i32.ne (call $wait-on (local.get $subtask)) (i32.const 1 (; SUBTASK ;))) (then unreachable))
      (if (i32.ne (i32.load (i32.const 4)) (i32.const 2 (; RETURNED ;))) (then unreachable))
      (call $subtask-drop (local.get $subtask)))

    ;; a result<_, error> at `at` (error record: code u8 at +4, message at +8) into the
    ;; (code, message) pair at `out`: -1 and "" for ok
    (func $outcome-of (param $at i32) (param $out i32)
      (if (i32.load8_u (local.get $at))
        (then
          (i32.store (local.get $out) (i32.load8_u offset=4 (local.get $at)))
          (i64.store offset=4 (local.get $out) (i64.load offset=8 (local.get $at))))
        (else
          (i32.store (local.get $out) (i32.const -1))
          (i64.store offset=4 (local.get $out) (i64.const 0)))))

    ;; read an outcome future (then drop it) into the (code, message) pair at `out`
    (func $read-outcome (param $future i32) (param $out i32)
      (local $ret i32)
      (local.set $ret (call $future-read (local.get $future) (i32.const 48)))
      (if (i32.eq (local.get $ret) (i32.const -1 (; BLOCKED ;)))
        (then
          (if (i32.ne (call $wait-on (local.get $future)) (i32.const 4 (; FUTURE_READ ;))) (then unreachable))
          (local.set $ret (i32.load (i32.const 4)))))
      (if (i32.ne (local.get $ret) (i32.const 0 (; COMPLETED ;))) (then unreachable))
      (call $future-drop-readable (local.get $future))
      (call $outcome-of (i32.const 48) (local.get $out)))

    ;; one connection, its handshake recorded at `rec`; 1 if it was established
    (func $serve-one (param $port i32) (param $flags i32) (param $stall i32) (param $rec i32) (param $index i32) (result i32)
      (local $sock i32) (local $hello i32) (local $answer i32) (local $conn i32) (local $name i32) (local $name-len i32)
      (memory.fill (local.get $rec) (i32.const 0) (i32.const 56))
      (call $await (call $tcp-accept (local.get $port) (i32.const 96)))
      (if (i32.load8_u (i32.const 96)) (then unreachable))  ;; the test registered a listener
      (local.set $sock (i32.load (i32.const 100)))
      ;; the socket's bytes to the TLS server; its ciphertext to the socket
      (call $tls-accept (call $sock-receive (local.get $sock)) (i32.const 112))
      (local.set $hello (i32.load (i32.const 112)))
      (call $sock-send (local.get $sock) (i32.load (i32.const 116)))
      (call $sock-drop (local.get $sock))
      ;; the identity is the SNI's name, or "default"
      (call $await (call $server-name (local.get $hello) (i32.const 128)))
      (if (i32.load8_u (i32.const 128))
        (then
          (call $outcome-of (i32.const 128) (local.get $rec))
          (call $hello-drop (local.get $hello))
          (return (i32.const 0))))
      (if (i32.load8_u (i32.const 132))
        (then
          (local.set $name (i32.load (i32.const 136)))
          (local.set $name-len (i32.load (i32.const 140)))
          (i64.store offset=12 (local.get $rec) (i64.load (i32.const 136))))
        (else
          (local.set $name (i32.const 256))
          (local.set $name-len (i32.const 7))))
      (if (local.get $stall) (then (call $await (call $sleep (local.get $stall)))))
      (local.set $answer (call $answer-new (local.get $name) (local.get $name-len)))
      (if (i32.and (local.get $flags) (i32.const 1))
        (then (call $request-client (local.get $answer) (i32.const 1))))
      (call $await (call $hello-accept (local.get $hello) (local.get $answer) (i32.const 144)))
      (if (i32.load8_u (i32.const 144))
        (then
          (call $outcome-of (i32.const 144) (local.get $rec))
          (return (i32.const 0))))
      (call $await (call $finish (i32.load (i32.const 148)) (i32.const 160)))
      (if (i32.load8_u (i32.const 160))
        (then
          (call $outcome-of (i32.const 160) (local.get $rec))
          (return (i32.const 0))))
      (local.set $conn (i32.load (i32.const 164)))
      (i32.store (local.get $rec) (i32.const -1))
      (i32.store16 offset=20 (local.get $rec) (call $version (local.get $conn)))
      (i32.store16 offset=22 (local.get $rec) (call $suite (local.get $conn)))
      (call $peer (local.get $conn) (i32.const 176))
      (if (i32.load8_u (i32.const 176))
        (then
          (call $subject (i32.load (i32.const 180)) (i32.add (local.get $rec) (i32.const 24)))
          (call $identity-drop (i32.load (i32.const 180)))))
      ;; the echo: what the peer sends is what the host sends back
      (call $receive (local.get $conn) (i32.const 184))
      (i32.store (i32.add (global.get $RECEIVES) (i32.shl (local.get $index) (i32.const 2))) (i32.load (i32.const 188)))
      (i32.store (i32.add (global.get $SENDS) (i32.shl (local.get $index) (i32.const 2)))
        (call $send (local.get $conn) (i32.load (i32.const 184))))
      (call $connection-drop (local.get $conn))
      (i32.const 1))

    (func (export "serve") (param $port i32) (param $count i32) (param $flags i32) (param $stall i32)
      (local $i i32) (local $rec i32)
      (block $accepted (loop $next
        (br_if $accepted (i32.ge_u (local.get $i) (local.get $count)))
        (local.set $rec (i32.add (global.get $RECORDS) (i32.mul (local.get $i) (i32.const 56))))
        (i32.store offset=44 (local.get $rec) (i32.const 0))
        (i32.store offset=32 (local.get $rec)
          (call $serve-one (local.get $port) (local.get $flags) (local.get $stall) (local.get $rec) (local.get $i)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
      ;; every established connection's end, in order
      (local.set $i (i32.const 0))
      (block $ended (loop $next
        (br_if $ended (i32.ge_u (local.get $i) (local.get $count)))
        (local.set $rec (i32.add (global.get $RECORDS) (i32.mul (local.get $i) (i32.const 56))))
        (if (i32.load offset=32 (local.get $rec))
          (then
            (call $read-outcome (i32.load (i32.add (global.get $RECEIVES) (i32.shl (local.get $i) (i32.const 2))))
                                (i32.add (local.get $rec) (i32.const 32)))
            (call $read-outcome (i32.load (i32.add (global.get $SENDS) (i32.shl (local.get $i) (i32.const 2))))
                                (i32.add (local.get $rec) (i32.const 44))))
          (else
            (i32.store offset=32 (local.get $rec) (i32.const -1))
            (i32.store offset=44 (local.get $rec) (i32.const -1))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
      (call $return-records (global.get $RECORDS) (local.get $count)))
  )
  (core instance $main (instantiate $Main
    (with "libc" (instance $libc))
    (with "h" (instance
      (export "tls-accept" (func $tls-accept))
      (export "server-name" (func $server-name))
      (export "hello-accept" (func $hello-accept))
      (export "hello-drop" (func $hello-drop))
      (export "answer-new" (func $answer-new))
      (export "request-client" (func $request-client))
      (export "finish" (func $finish))
      (export "version" (func $version))
      (export "suite" (func $suite))
      (export "peer" (func $peer))
      (export "receive" (func $receive))
      (export "send" (func $send))
      (export "connection-drop" (func $connection-drop))
      (export "subject" (func $subject))
      (export "identity-drop" (func $identity-drop))
      (export "tcp-accept" (func $tcp-accept))
      (export "sleep" (func $sleep))
      (export "sock-receive" (func $sock-receive))
      (export "sock-send" (func $sock-send))
      (export "sock-drop" (func $sock-drop))
      (export "ws-new" (func $ws-new))
      (export "ws-wait" (func $ws-wait))
      (export "ws-drop" (func $ws-drop))
      (export "join" (func $join))
      (export "subtask-drop" (func $subtask-drop))
      (export "future-read" (func $future-read))
      (export "future-drop-readable" (func $future-drop-readable))
      (export "return-records" (func $return-records))
    ))))
  (func (export "serve") async (param "port" u16) (param "count" u32) (param "flags" u32) (param "stall-ms" u32)
    (result (list (tuple s32 string string u16 u16 string s32 string s32 string)))
    (canon lift (core func $main "serve") async (memory $mem) (realloc $realloc)))
)
