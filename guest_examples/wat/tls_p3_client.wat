;; A WASI 0.3 guest of the upstream wasi:tls@0.3.0-draft client, written by hand (no language
;; runtime): every stream, future and subtask of a TLS connection is visible here. TCP comes
;; from the test stand-in wasi-tls-host:test/tcp (devtools/tcp_p3.py) until wasi:sockets 0.3
;; is on main; its ciphertext streams are plumbed straight to the socket, as a guest does
;; with tcp-socket.send/receive: connector.send's ciphertext goes to socket.send, the
;; socket's receive stream to connector.receive.
;;
;; Exports (async, without callback):
;;   fetch(port, server-name, request) -> (received, head, connect, receive, send)
;;       connect to 127.0.0.1:port, handshake for server-name, send the request, close the
;;       sending side (close_notify), read to the end. `received` counts the plaintext bytes,
;;       `head` is the first 64 KiB of them, and the three strings say how connect, the
;;       receive future and the send future ended: "ok" or the error's to-debug-string (a
;;       failed dial is reported as connect's).
;;   handshake(port, server-name) -> string / close(): connect + TLS ("ok" or the error's
;;       string), the connection kept open until close (for timing the handshake alone).
;;   misuse(kind) -> list<string>: a connector used the wrong way, each outcome as a string:
;;       1 send twice, 2 receive twice, 3 connect before receive, 4 drop the connector after
;;       send and receive, 5 connect while dropping the incoming ciphertext (a stream dropped
;;       mid-handshake), 6 connect while dropping the outgoing ciphertext after the first
;;       flight (port: a server that gets the ClientHello), 7 the outgoing ciphertext dropped
;;       while the host writes application data into it (the guest relays the handshake's two
;;       flights to the socket itself, then writes 2 MiB of plaintext, reads none of its
;;       ciphertext and drops that stream; port: an echo server). Its outcomes: connect's,
;;       "end" if the host took only part of the 2 MiB, the send and receive futures.
(component
  (type $bytes (stream u8))
  (import "wasi:tls/types@0.3.0-draft" (instance $types-i
    (export "error" (type $e (sub resource)))
    (export "[method]error.to-debug-string" (func (param "self" (borrow $e)) (result string)))))
  (alias export $types-i "error" (type $error))
  (type $outcome (future (result (error (own $error)))))
  (import "wasi:tls/client@0.3.0-draft" (instance $client-i
    (export "error" (type $e (eq $error)))
    (export "connector" (type $c (sub resource)))
    (export "[constructor]connector" (func (result (own $c))))
    (export "[method]connector.send" (func (param "self" (borrow $c)) (param "cleartext" (stream u8))
      (result (tuple (stream u8) (future (result (error (own $e))))))))
    (export "[method]connector.receive" (func (param "self" (borrow $c)) (param "ciphertext" (stream u8))
      (result (tuple (stream u8) (future (result (error (own $e))))))))
    (export "[static]connector.connect" (func async (param "this" (own $c)) (param "server-name" string)
      (result (result (error (own $e))))))))
  (alias export $client-i "connector" (type $connector))
  (import "wasi-tls-host:test/tcp" (instance $tcp-i
    (export "socket" (type $s (sub resource)))
    (export "dial" (func async (param "port" u16) (result (result (own $s) (error string)))))
    (export "[method]socket.receive" (func (param "self" (borrow $s)) (result $bytes)))
    (export "[method]socket.send" (func (param "self" (borrow $s)) (param "data" $bytes)))))
  (alias export $tcp-i "socket" (type $socket))

  (core module $Libc
    (memory (export "memory") 80)
    (global $bump (mut i32) (i32.const 4194304))
    (func (export "realloc") (param i32 i32 i32 i32) (result i32)
      (local $p i32)
      (local.set $p (i32.and (i32.add (global.get $bump) (i32.const 7)) (i32.const -8)))
      (global.set $bump (i32.add (local.get $p) (local.get 3)))
      (local.get $p)))
  (core instance $libc (instantiate $Libc))
  (alias core export $libc "memory" (core memory $mem))
  (alias core export $libc "realloc" (core func $realloc))

  (core func $connector-new (canon lower (func $client-i "[constructor]connector")))
  (core func $connector-send (canon lower (func $client-i "[method]connector.send") (memory $mem)))
  (core func $connector-receive (canon lower (func $client-i "[method]connector.receive") (memory $mem)))
  (core func $connect (canon lower (func $client-i "[static]connector.connect") async (memory $mem)))
  (core func $connector-drop (canon resource.drop $connector))
  (core func $debug-string (canon lower (func $types-i "[method]error.to-debug-string") (memory $mem) (realloc $realloc)))
  (core func $error-drop (canon resource.drop $error))
  (core func $dial (canon lower (func $tcp-i "dial") async (memory $mem) (realloc $realloc)))
  (core func $sock-receive (canon lower (func $tcp-i "[method]socket.receive")))
  (core func $sock-send (canon lower (func $tcp-i "[method]socket.send")))
  (core func $sock-drop (canon resource.drop $socket))
  (core func $ws-new (canon waitable-set.new))
  (core func $ws-wait (canon waitable-set.wait (memory $mem)))
  (core func $ws-drop (canon waitable-set.drop))
  (core func $join (canon waitable.join))
  (core func $subtask-drop (canon subtask.drop))
  (core func $stream-new (canon stream.new $bytes))
  (core func $stream-read (canon stream.read $bytes async (memory $mem)))
  (core func $stream-write (canon stream.write $bytes async (memory $mem)))
  (core func $drop-readable (canon stream.drop-readable $bytes))
  (core func $drop-writable (canon stream.drop-writable $bytes))
  (core func $future-read (canon future.read $outcome async (memory $mem)))
  (core func $future-drop-readable (canon future.drop-readable $outcome))
  (core func $return-fetch (canon task.return (result (tuple u64 (list u8) string string string)) (memory $mem)))
  (core func $return-strings (canon task.return (result (list string)) (memory $mem)))
  (core func $return-string (canon task.return (result string) (memory $mem)))
  (core func $return-nothing (canon task.return))

  (core module $Main
    (import "libc" "memory" (memory 80))
    (import "h" "connector-new" (func $connector-new (result i32)))
    (import "h" "connector-send" (func $connector-send (param i32 i32 i32)))
    (import "h" "connector-receive" (func $connector-receive (param i32 i32 i32)))
    (import "h" "connect" (func $connect (param i32 i32 i32 i32) (result i32)))
    (import "h" "connector-drop" (func $connector-drop (param i32)))
    (import "h" "debug-string" (func $debug-string (param i32 i32)))
    (import "h" "error-drop" (func $error-drop (param i32)))
    (import "h" "dial" (func $dial (param i32 i32) (result i32)))
    (import "h" "sock-receive" (func $sock-receive (param i32) (result i32)))
    (import "h" "sock-send" (func $sock-send (param i32 i32)))
    (import "h" "sock-drop" (func $sock-drop (param i32)))
    (import "h" "ws-new" (func $ws-new (result i32)))
    (import "h" "ws-wait" (func $ws-wait (param i32 i32) (result i32)))
    (import "h" "ws-drop" (func $ws-drop (param i32)))
    (import "h" "join" (func $join (param i32 i32)))
    (import "h" "subtask-drop" (func $subtask-drop (param i32)))
    (import "h" "stream-new" (func $stream-new (result i64)))
    (import "h" "stream-read" (func $stream-read (param i32 i32 i32) (result i32)))
    (import "h" "stream-write" (func $stream-write (param i32 i32 i32) (result i32)))
    (import "h" "drop-readable" (func $drop-readable (param i32)))
    (import "h" "drop-writable" (func $drop-writable (param i32)))
    (import "h" "future-read" (func $future-read (param i32 i32) (result i32)))
    (import "h" "future-drop-readable" (func $future-drop-readable (param i32)))
    (import "h" "return-fetch" (func $return-fetch (param i64 i32 i32 i32 i32 i32 i32 i32 i32)))
    (import "h" "return-strings" (func $return-strings (param i32 i32)))
    (import "h" "return-string" (func $return-string (param i32 i32)))
    (import "h" "return-nothing" (func $return-nothing))

    ;; Memory: 0..12 event, 64.. call results, 256 "ok", 512.. list<string> being built,
    ;; 65536.. the head of the plaintext (64 KiB), 131072.. the read buffer (1 MiB),
    ;; 4 MiB.. realloc's (strings the host returns, export arguments).
    (data (i32.const 256) "ok")
    (global $HEAD i32 (i32.const 65536))
    (global $HEAD-CAP i32 (i32.const 65536))
    (global $BUF i32 (i32.const 131072))
    (global $BUF-CAP i32 (i32.const 1048576))
    (global $strings (mut i32) (i32.const 0))  ;; strings in the list being built

    ;; wait until `handle` has an event (it joins a fresh set for the wait); the event code,
    ;; its payload at 4
    (func $wait-on (param $handle i32) (result i32)
      (local $ws i32) (local $code i32)
      (local.set $ws (call $ws-new))
      (call $join (local.get $handle) (local.get $ws))
      (local.set $code (call $ws-wait (local.get $ws) (i32.const 0)))
      (if (i32.ne (i32.load (i32.const 0)) (local.get $handle)) (then unreachable))
      (call $join (local.get $handle) (i32.const 0))
      (call $ws-drop (local.get $ws))
      (local.get $code))

    ;; an async call's status: wait for its subtask if it started, then drop it
    (func $await (param $status i32)
      (local $subtask i32)
      (if (i32.eq (i32.and (local.get $status) (i32.const 0xf)) (i32.const 2 (; RETURNED ;))) (then (return)))
      (if (i32.ne (i32.and (local.get $status) (i32.const 0xf)) (i32.const 1 (; STARTED ;))) (then unreachable))
      (local.set $subtask (i32.shr_u (local.get $status) (i32.const 4)))
      (if (i32.ne (call $wait-on (local.get $subtask)) (i32.const 1 (; SUBTASK ;))) (then unreachable))
      (if (i32.ne (i32.load (i32.const 4)) (i32.const 2 (; RETURNED ;))) (then unreachable))
      (call $subtask-drop (local.get $subtask)))

    ;; a stream.read or stream.write outcome, waiting if it blocked: (count << 4) | code
    (func $copied (param $ret i32) (param $end i32) (param $event i32) (result i32)
      (if (i32.eq (local.get $ret) (i32.const -1 (; BLOCKED ;)))
        (then
          (if (i32.ne (call $wait-on (local.get $end)) (local.get $event)) (then unreachable))
          (local.set $ret (i32.load (i32.const 4)))))
      (local.get $ret))

    ;; write all of ptr[0..len) into `tx`; stops early if the reader dropped it
    (func $write-all (param $tx i32) (param $ptr i32) (param $len i32)
      (local $ret i32)
      (block $done (loop $more
        (br_if $done (i32.eqz (local.get $len)))
        (local.set $ret (call $copied (call $stream-write (local.get $tx) (local.get $ptr) (local.get $len))
                                      (local.get $tx) (i32.const 3 (; STREAM_WRITE ;))))
        (local.set $ptr (i32.add (local.get $ptr) (i32.shr_u (local.get $ret) (i32.const 4))))
        (local.set $len (i32.sub (local.get $len) (i32.shr_u (local.get $ret) (i32.const 4))))
        (br_if $done (i32.eq (i32.and (local.get $ret) (i32.const 0xf)) (i32.const 1 (; DROPPED ;))))
        (br $more))))

    ;; read `rx` to its end (then drop it): the byte count; the first HEAD-CAP bytes stay at HEAD
    (func $drain (param $rx i32) (result i64)
      (local $ret i32) (local $total i64) (local $into i32) (local $room i32)
      (block $done (loop $more
        (if (i64.lt_u (local.get $total) (i64.extend_i32_u (global.get $HEAD-CAP)))
          (then
            (local.set $into (i32.add (global.get $HEAD) (i32.wrap_i64 (local.get $total))))
            (local.set $room (i32.sub (global.get $HEAD-CAP) (i32.wrap_i64 (local.get $total)))))
          (else
            (local.set $into (global.get $BUF))
            (local.set $room (global.get $BUF-CAP))))
        (local.set $ret (call $copied (call $stream-read (local.get $rx) (local.get $into) (local.get $room))
                                      (local.get $rx) (i32.const 2 (; STREAM_READ ;))))
        (local.set $total (i64.add (local.get $total) (i64.extend_i32_u (i32.shr_u (local.get $ret) (i32.const 4)))))
        (br_if $done (i32.eq (i32.and (local.get $ret) (i32.const 0xf)) (i32.const 1 (; DROPPED ;))))
        (br $more)))
      (call $drop-readable (local.get $rx))
      (local.get $total))

    ;; store an error's debug string as (ptr, len) at `out`, dropping the error
    (func $describe (param $error i32) (param $out i32)
      (call $debug-string (local.get $error) (local.get $out))
      (call $error-drop (local.get $error)))

    ;; store "ok" as (ptr, len) at `out`
    (func $ok (param $out i32)
      (i32.store (local.get $out) (i32.const 256))
      (i32.store offset=4 (local.get $out) (i32.const 2)))

    ;; a result<_, own<error>> at `at`: "ok" or the error's debug string, at `out`
    (func $outcome-of (param $at i32) (param $out i32)
      (if (i32.load8_u (local.get $at))
        (then (call $describe (i32.load offset=4 (local.get $at)) (local.get $out)))
        (else (call $ok (local.get $out)))))

    ;; read an outcome future (then drop it): its string at `out`
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

    ;; connect to 127.0.0.1:port (result<socket, string> at 96); on success the socket sends
    ;; `outgoing` and its received stream is returned (the socket's handle is let go: its
    ;; streams go on); on failure `outgoing` is dropped and -1 returned
    (func $plumb (param $port i32) (param $outgoing i32) (result i32)
      (local $sock i32) (local $incoming i32)
      (call $await (call $dial (local.get $port) (i32.const 96)))
      (if (i32.load8_u (i32.const 96))
        (then
          (call $drop-readable (local.get $outgoing))
          (return (i32.const -1))))
      (local.set $sock (i32.load (i32.const 100)))
      (call $sock-send (local.get $sock) (local.get $outgoing))
      (local.set $incoming (call $sock-receive (local.get $sock)))
      (call $sock-drop (local.get $sock))
      (local.get $incoming))

    (func (export "fetch") (param $port i32) (param $name i32) (param $name-len i32) (param $req i32) (param $req-len i32)
      (local $pair i64) (local $clear-rx i32) (local $clear-tx i32) (local $conn i32)
      (local $cipher-out i32) (local $send-future i32) (local $clear-in i32) (local $receive-future i32)
      (local $total i64) (local $incoming i32)
      ;; the plaintext the guest writes (the host reads clear-rx)
      (local.set $pair (call $stream-new))
      (local.set $clear-rx (i32.wrap_i64 (local.get $pair)))
      (local.set $clear-tx (i32.wrap_i64 (i64.shr_u (local.get $pair) (i64.const 32))))
      (local.set $conn (call $connector-new))
      (call $connector-send (local.get $conn) (local.get $clear-rx) (i32.const 64))
      (local.set $cipher-out (i32.load (i32.const 64)))
      (local.set $send-future (i32.load (i32.const 68)))
      ;; the socket sends cipher-out and gives what it receives
      (local.set $incoming (call $plumb (local.get $port) (local.get $cipher-out)))
      (if (i32.eq (local.get $incoming) (i32.const -1))
        (then  ;; no connection: the dial's error is connect's; nothing was received
          (call $connector-drop (local.get $conn))
          (call $drop-writable (local.get $clear-tx))
          (call $read-outcome (local.get $send-future) (i32.const 168))
          (call $ok (i32.const 176))
          (call $return-fetch (i64.const 0) (global.get $HEAD) (i32.const 0)
            (i32.load (i32.const 100)) (i32.load (i32.const 104))
            (i32.load (i32.const 176)) (i32.load (i32.const 180))
            (i32.load (i32.const 168)) (i32.load (i32.const 172)))
          (return)))
      (call $connector-receive (local.get $conn) (local.get $incoming) (i32.const 72))
      (local.set $clear-in (i32.load (i32.const 72)))
      (local.set $receive-future (i32.load (i32.const 76)))
      ;; the handshake (connect consumes the connector); its result<_, error> at 80
      (call $await (call $connect (local.get $conn) (local.get $name) (local.get $name-len) (i32.const 80)))
      (call $outcome-of (i32.const 80) (i32.const 160))
      (if (i32.eqz (i32.load8_u (i32.const 80)))
        (then (call $write-all (local.get $clear-tx) (local.get $req) (local.get $req-len))))
      (call $drop-writable (local.get $clear-tx))  ;; close_notify once all is sent
      (local.set $total (call $drain (local.get $clear-in)))
      (call $read-outcome (local.get $receive-future) (i32.const 168))
      (call $read-outcome (local.get $send-future) (i32.const 176))
      (call $return-fetch (local.get $total) (global.get $HEAD)
        (select (i32.wrap_i64 (local.get $total)) (global.get $HEAD-CAP)
                (i64.lt_u (local.get $total) (i64.extend_i32_u (global.get $HEAD-CAP))))
        (i32.load (i32.const 160)) (i32.load (i32.const 164))
        (i32.load (i32.const 168)) (i32.load (i32.const 172))
        (i32.load (i32.const 176)) (i32.load (i32.const 180))))

    ;; --- handshake/close: a connection kept open between calls (timing connect + TLS) ---

    (global $open-tx (mut i32) (i32.const 0))
    (global $open-in (mut i32) (i32.const 0))
    (global $open-send (mut i32) (i32.const 0))
    (global $open-receive (mut i32) (i32.const 0))

    (func (export "handshake") (param $port i32) (param $name i32) (param $name-len i32)
      (local $pair i64) (local $conn i32)
      (local.set $pair (call $stream-new))
      (global.set $open-tx (i32.wrap_i64 (i64.shr_u (local.get $pair) (i64.const 32))))
      (local.set $conn (call $connector-new))
      (call $connector-send (local.get $conn) (i32.wrap_i64 (local.get $pair)) (i32.const 64))
      (global.set $open-send (i32.load (i32.const 68)))
      (call $connector-receive (local.get $conn) (call $plumb (local.get $port) (i32.load (i32.const 64))) (i32.const 72))
      (global.set $open-in (i32.load (i32.const 72)))
      (global.set $open-receive (i32.load (i32.const 76)))
      (call $await (call $connect (local.get $conn) (local.get $name) (local.get $name-len) (i32.const 80)))
      (call $outcome-of (i32.const 80) (i32.const 160))
      (call $return-string (i32.load (i32.const 160)) (i32.load (i32.const 164))))

    ;; close_notify (waiting until it is on its way: host work runs only while the guest is
    ;; in a call), then let go of everything without waiting for the peer
    (func (export "close")
      (call $drop-writable (global.get $open-tx))
      (call $read-outcome (global.get $open-send) (i32.const 184))
      (call $drop-readable (global.get $open-in))
      (call $future-drop-readable (global.get $open-receive))
      (call $return-nothing))

    ;; --- misuse: each outcome is appended, as a string, to the list being built at 512 ---

    (func $add (param $ptr i32) (param $len i32)
      (i32.store (i32.add (i32.const 512) (i32.shl (global.get $strings) (i32.const 3))) (local.get $ptr))
      (i32.store offset=4 (i32.add (i32.const 512) (i32.shl (global.get $strings) (i32.const 3))) (local.get $len))
      (global.set $strings (i32.add (global.get $strings) (i32.const 1))))

    (func $add-outcome (param $future i32)
      (call $read-outcome (local.get $future) (i32.const 184))
      (call $add (i32.load (i32.const 184)) (i32.load (i32.const 188))))

    ;; "end" if a stream at once reports its end with nothing in it, else "data"
    (func $add-ended (param $rx i32)
      (local $ret i32)
      (local.set $ret (call $copied (call $stream-read (local.get $rx) (global.get $BUF) (i32.const 16))
                                    (local.get $rx) (i32.const 2 (; STREAM_READ ;))))
      (call $drop-readable (local.get $rx))
      (if (i32.eq (local.get $ret) (i32.const 1 (; DROPPED, 0 bytes ;)))
        (then (call $add (i32.const 258) (i32.const 3)))
        (else (call $add (i32.const 261) (i32.const 4)))))
    (data (i32.const 258) "enddata")

    ;; a fresh stream pair: (rx, tx)
    (func $pair (result i32 i32)
      (local $pair i64)
      (local.set $pair (call $stream-new))
      (i32.wrap_i64 (local.get $pair))
      (i32.wrap_i64 (i64.shr_u (local.get $pair) (i64.const 32))))

    ;; one read of `from` (waiting for it), written on to `to`
    (func $relay-once (param $from i32) (param $to i32)
      (local $ret i32)
      (local.set $ret (call $copied (call $stream-read (local.get $from) (global.get $BUF) (global.get $BUF-CAP))
                                    (local.get $from) (i32.const 2 (; STREAM_READ ;))))
      (call $write-all (local.get $to) (global.get $BUF) (i32.shr_u (local.get $ret) (i32.const 4))))

    (func (export "misuse") (param $kind i32) (param $port i32) (param $name i32) (param $name-len i32)
      (local $conn i32) (local $rx i32) (local $tx i32) (local $rx2 i32) (local $tx2 i32) (local $ret i32)
      (local $cipher-out i32) (local $relay-rx i32) (local $relay-tx i32) (local $status i32)
      (global.set $strings (i32.const 0))
      (local.set $conn (call $connector-new))
      (call $pair) (local.set $tx) (local.set $rx)
      (call $pair) (local.set $tx2) (local.set $rx2)
      (block $done
        (if (i32.eq (local.get $kind) (i32.const 1))  ;; send twice: the second is refused
          (then
            (call $connector-send (local.get $conn) (local.get $rx) (i32.const 64))
            (call $connector-send (local.get $conn) (local.get $rx2) (i32.const 72))
            (call $add-outcome (i32.load (i32.const 76)))
            (call $add-ended (i32.load (i32.const 72)))
            ;; the stream the second send took was dropped: a write to it sees that
            (local.set $ret (call $copied (call $stream-write (local.get $tx2) (i32.const 256) (i32.const 2))
                                          (local.get $tx2) (i32.const 3)))
            (if (i32.eq (i32.and (local.get $ret) (i32.const 0xf)) (i32.const 1))
              (then (call $add (i32.const 258) (i32.const 3))))
            (call $connector-drop (local.get $conn))
            (call $add-outcome (i32.load (i32.const 68)))  ;; the first send's future: the drop
            (call $drop-readable (i32.load (i32.const 64)))
            (br $done)))
        (if (i32.eq (local.get $kind) (i32.const 2))  ;; receive twice
          (then
            (call $connector-receive (local.get $conn) (local.get $rx) (i32.const 64))
            (call $connector-receive (local.get $conn) (local.get $rx2) (i32.const 72))
            (call $add-outcome (i32.load (i32.const 76)))
            (call $add-ended (i32.load (i32.const 72)))
            (call $connector-drop (local.get $conn))
            (call $add-outcome (i32.load (i32.const 68)))
            (call $add-ended (i32.load (i32.const 64)))
            (br $done)))
        (if (i32.eq (local.get $kind) (i32.const 3))  ;; connect with only send set up
          (then
            (call $connector-send (local.get $conn) (local.get $rx) (i32.const 64))
            (call $await (call $connect (local.get $conn) (local.get $name) (local.get $name-len) (i32.const 80)))
            (call $outcome-of (i32.const 80) (i32.const 184))
            (call $add (i32.load (i32.const 184)) (i32.load (i32.const 188)))
            (call $add-outcome (i32.load (i32.const 68)))
            (call $add-ended (i32.load (i32.const 64)))
            (call $drop-readable (local.get $rx2))
            (br $done)))
        (if (i32.eq (local.get $kind) (i32.const 4))  ;; drop the connector after setting it up
          (then
            (call $connector-send (local.get $conn) (local.get $rx) (i32.const 64))
            (call $connector-receive (local.get $conn) (local.get $rx2) (i32.const 72))
            (call $connector-drop (local.get $conn))
            (call $add-outcome (i32.load (i32.const 68)))
            (call $add-outcome (i32.load (i32.const 76)))
            (call $add-ended (i32.load (i32.const 64)))
            (call $add-ended (i32.load (i32.const 72)))
            (br $done)))
        (if (i32.eq (local.get $kind) (i32.const 5))  ;; the incoming ciphertext ends mid-handshake
          (then
            (call $connector-send (local.get $conn) (local.get $rx) (i32.const 64))
            (call $connector-receive (local.get $conn) (local.get $rx2) (i32.const 72))
            (local.set $status (call $connect (local.get $conn) (local.get $name) (local.get $name-len) (i32.const 80)))
            (call $drop-writable (local.get $tx2))  ;; the "network" goes away
            (call $await (local.get $status))
            (call $outcome-of (i32.const 80) (i32.const 184))
            (call $add (i32.load (i32.const 184)) (i32.load (i32.const 188)))
            (call $add-outcome (i32.load (i32.const 68)))
            (call $add-outcome (i32.load (i32.const 76)))
            (call $drop-readable (i32.load (i32.const 64)))
            (call $drop-readable (i32.load (i32.const 72)))
            (br $done)))
        (if (i32.eq (local.get $kind) (i32.const 6))  ;; the outgoing ciphertext dropped after the first flight
          (then
            (call $connector-send (local.get $conn) (local.get $rx) (i32.const 64))
            (local.set $cipher-out (i32.load (i32.const 64)))
            (call $pair) (local.set $relay-tx) (local.set $relay-rx)
            (call $connector-receive (local.get $conn) (call $plumb (local.get $port) (local.get $relay-rx)) (i32.const 72))
            (local.set $status (call $connect (local.get $conn) (local.get $name) (local.get $name-len) (i32.const 80)))
            ;; the ClientHello, forwarded to the socket; then the guest lets go of the stream
            (local.set $ret (call $copied (call $stream-read (local.get $cipher-out) (global.get $BUF) (global.get $BUF-CAP))
                                          (local.get $cipher-out) (i32.const 2)))
            (call $write-all (local.get $relay-tx) (global.get $BUF) (i32.shr_u (local.get $ret) (i32.const 4)))
            (call $drop-readable (local.get $cipher-out))
            (call $await (local.get $status))
            (call $outcome-of (i32.const 80) (i32.const 184))
            (call $add (i32.load (i32.const 184)) (i32.load (i32.const 188)))
            (call $add-outcome (i32.load (i32.const 68)))
            (call $add-outcome (i32.load (i32.const 76)))
            (call $drop-writable (local.get $relay-tx))
            (call $drop-readable (i32.load (i32.const 72)))
            (call $drop-readable (local.get $rx2))
            (br $done)))
        (if (i32.eq (local.get $kind) (i32.const 7))  ;; the outgoing ciphertext dropped while the host writes
          (then
            (call $connector-send (local.get $conn) (local.get $rx) (i32.const 64))
            (local.set $cipher-out (i32.load (i32.const 64)))
            (call $pair) (local.set $relay-tx) (local.set $relay-rx)
            (call $connector-receive (local.get $conn) (call $plumb (local.get $port) (local.get $relay-rx)) (i32.const 72))
            (local.set $status (call $connect (local.get $conn) (local.get $name) (local.get $name-len) (i32.const 80)))
            (call $relay-once (local.get $cipher-out) (local.get $relay-tx))  ;; the ClientHello
            (call $relay-once (local.get $cipher-out) (local.get $relay-tx))  ;; the client's Finished
            (call $await (local.get $status))
            (call $outcome-of (i32.const 80) (i32.const 184))
            (call $add (i32.load (i32.const 184)) (i32.load (i32.const 188)))
            ;; 2 MiB of plaintext, more than the host takes (1 MiB of ciphertext waiting, a
            ;; chunk) before its ciphertext is read; the guest lets go of the ciphertext while
            ;; the host waits to write it
            (local.set $ret (call $stream-write (local.get $tx) (global.get $BUF) (i32.const 0x200000)))
            (call $drop-readable (local.get $cipher-out))
            (local.set $ret (call $copied (local.get $ret) (local.get $tx) (i32.const 3 (; STREAM_WRITE ;))))
            ;; "end": the host took part of it (its reader stopped), "data": all of it
            (if (i32.lt_u (i32.shr_u (local.get $ret) (i32.const 4)) (i32.const 0x200000))
              (then (call $add (i32.const 258) (i32.const 3)))
              (else (call $add (i32.const 261) (i32.const 4))))
            (call $drop-writable (local.get $relay-tx))  ;; the peer sees the end of TCP
            (call $drop-readable (i32.load (i32.const 72)))
            (call $add-outcome (i32.load (i32.const 68)))
            (call $add-outcome (i32.load (i32.const 76)))
            (call $drop-readable (local.get $rx2))
            (br $done)))
        unreachable)
      (call $drop-writable (local.get $tx))
      (if (i32.ne (local.get $kind) (i32.const 5)) (then (call $drop-writable (local.get $tx2))))
      (call $return-strings (i32.const 512) (global.get $strings)))
  )
  (core instance $main (instantiate $Main
    (with "libc" (instance $libc))
    (with "h" (instance
      (export "connector-new" (func $connector-new))
      (export "connector-send" (func $connector-send))
      (export "connector-receive" (func $connector-receive))
      (export "connect" (func $connect))
      (export "connector-drop" (func $connector-drop))
      (export "debug-string" (func $debug-string))
      (export "error-drop" (func $error-drop))
      (export "dial" (func $dial))
      (export "sock-receive" (func $sock-receive))
      (export "sock-send" (func $sock-send))
      (export "sock-drop" (func $sock-drop))
      (export "ws-new" (func $ws-new))
      (export "ws-wait" (func $ws-wait))
      (export "ws-drop" (func $ws-drop))
      (export "join" (func $join))
      (export "subtask-drop" (func $subtask-drop))
      (export "stream-new" (func $stream-new))
      (export "stream-read" (func $stream-read))
      (export "stream-write" (func $stream-write))
      (export "drop-readable" (func $drop-readable))
      (export "drop-writable" (func $drop-writable))
      (export "future-read" (func $future-read))
      (export "future-drop-readable" (func $future-drop-readable))
      (export "return-fetch" (func $return-fetch))
      (export "return-strings" (func $return-strings))
      (export "return-string" (func $return-string))
      (export "return-nothing" (func $return-nothing))
    ))))
  (func (export "fetch") async (param "port" u16) (param "server-name" string) (param "request" (list u8))
    (result (tuple u64 (list u8) string string string))
    (canon lift (core func $main "fetch") async (memory $mem) (realloc $realloc)))
  (func (export "misuse") async (param "kind" u32) (param "port" u16) (param "server-name" string) (result (list string))
    (canon lift (core func $main "misuse") async (memory $mem) (realloc $realloc)))
  (func (export "handshake") async (param "port" u16) (param "server-name" string) (result string)
    (canon lift (core func $main "handshake") async (memory $mem) (realloc $realloc)))
  (func (export "close") async (canon lift (core func $main "close") async))
)
