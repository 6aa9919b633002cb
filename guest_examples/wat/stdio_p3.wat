;; WASI 0.3 stdio and clocks used precisely, including the misuses a language runtime would
;; not produce (tests/test_wasi_p3.py). Each export is lifted `async` (stackful: it waits
;; inline in waitable-set.wait) or sync:
;;   wait-for(ms) -> ms        monotonic-clock.wait-for through a subtask
;;   now() -> mark             monotonic-clock.now, a synchronous export
;;   cat() -> status           stdin's host-made stream handed straight to stdout's
;;                             write-via-stream; the stdout future's result (0 ok, 1 + code)
;;   cat-return()              the same, returning at once (stdin may stay open)
;;   read-drop(n) -> count     reads up to n bytes of stdin in one read, drops the stream,
;;                             then waits for the stdin future (must be ok)
;;   write-twice(n) -> codes   writes n bytes to stdout, waits for its future, then writes
;;                             again unless the first write saw the host drop the stream:
;;                             (future: 0 ok / 1 + error-code) | (first write's copy result
;;                             << 8: 1 = DROPPED) | (second write's << 16: 15 = not tried).
;;                             With a stdout that works the future never resolves while the
;;                             stream is open: a deadlock the host reports.
;;   exit-writing(n)           writes n bytes to stdout twice (the second into a read the
;;                             host has posted: the host holds them) and exits with code 3,
;;                             waiting for nothing and dropping nothing
;;   exit-reading()            starts a read of stdin and exits with code 4 while it is
;;                             pending, stream and future undropped
;;   read-then-wait(n) -> res  reads up to n bytes of stdin, then makes a zero-length read
;;                             (wait until more can be read) and waits for it: its result
;;   cancel-drop() -> status   starts a read of stdin, cancels it and drops the stream
;;                             while stdin stays open; the stdin future's result
;;   drop-busy(n)              writes n bytes into a stream nobody reads yet, hands the
;;                             stream to stdout and drops its writable end while the write
;;                             is still pending (a trap)
(component
  (type $ec (enum "io" "illegal-byte-sequence" "pipe"))
  (import "wasi:cli/types@0.3.0" (instance $types (export "error-code" (type (eq $ec)))))
  (alias export $types "error-code" (type $error-code))
  (type $ST (stream u8))
  (type $FT (future (result (error $error-code))))
  (import "wasi:cli/stdin@0.3.0" (instance $stdin
    (export "error-code" (type $e (eq $error-code)))
    (export "read-via-stream" (func (result (tuple (stream u8) (future (result (error $e)))))))))
  (import "wasi:cli/stdout@0.3.0" (instance $stdout
    (export "error-code" (type $e (eq $error-code)))
    (export "write-via-stream" (func (param "data" (stream u8)) (result (future (result (error $e))))))))
  (import "wasi:cli/exit@0.3.0" (instance $exit
    (export "exit-with-code" (func (param "status-code" u8)))))
  (import "wasi:clocks/monotonic-clock@0.3.0" (instance $clock
    (export "now" (func (result u64)))
    (export "wait-for" (func async (param "how-long" u64)))))

  (core module $Libc
    (memory (export "memory") 2)
    (global $bump (mut i32) (i32.const 65536))
    (func (export "realloc") (param i32 i32 i32 i32) (result i32)
      (local $p i32)
      (local.set $p (global.get $bump))
      (global.set $bump (i32.add (global.get $bump) (i32.const 64)))
      (local.get $p)))
  (core instance $libc (instantiate $Libc))
  (alias core export $libc "memory" (core memory $mem))

  (core func $read-via-stream (canon lower (func $stdin "read-via-stream") (memory $mem)))
  (core func $write-via-stream (canon lower (func $stdout "write-via-stream")))
  (core func $exit-with-code (canon lower (func $exit "exit-with-code")))
  (core func $now (canon lower (func $clock "now")))
  (core func $wait-for (canon lower (func $clock "wait-for") async))
  (core func $ws-new (canon waitable-set.new))
  (core func $ws-wait (canon waitable-set.wait (memory $mem)))
  (core func $ws-drop (canon waitable-set.drop))
  (core func $join (canon waitable.join))
  (core func $subtask-drop (canon subtask.drop))
  (core func $return-u32 (canon task.return (result u32)))
  (core func $return-none (canon task.return))
  (core func $stream-new (canon stream.new $ST))
  (core func $stream-read (canon stream.read $ST async (memory $mem)))
  (core func $stream-write (canon stream.write $ST async (memory $mem)))
  (core func $cancel-read (canon stream.cancel-read $ST))
  (core func $drop-readable (canon stream.drop-readable $ST))
  (core func $drop-writable (canon stream.drop-writable $ST))
  (core func $future-read (canon future.read $FT async (memory $mem)))
  (core func $future-drop-readable (canon future.drop-readable $FT))

  (core module $Main
    (import "libc" "memory" (memory 2))
    (import "h" "read-via-stream" (func $read-via-stream (param i32)))
    (import "h" "write-via-stream" (func $write-via-stream (param i32) (result i32)))
    (import "h" "exit-with-code" (func $exit-with-code (param i32)))
    (import "h" "now" (func $now (result i64)))
    (import "h" "wait-for" (func $wait-for (param i64) (result i32)))
    (import "h" "ws-new" (func $ws-new (result i32)))
    (import "h" "ws-wait" (func $ws-wait (param i32 i32) (result i32)))
    (import "h" "ws-drop" (func $ws-drop (param i32)))
    (import "h" "join" (func $join (param i32 i32)))
    (import "h" "subtask-drop" (func $subtask-drop (param i32)))
    (import "h" "return-u32" (func $return-u32 (param i32)))
    (import "h" "return-none" (func $return-none))
    (import "h" "stream-new" (func $stream-new (result i64)))
    (import "h" "stream-read" (func $stream-read (param i32 i32 i32) (result i32)))
    (import "h" "stream-write" (func $stream-write (param i32 i32 i32) (result i32)))
    (import "h" "cancel-read" (func $cancel-read (param i32) (result i32)))
    (import "h" "drop-readable" (func $drop-readable (param i32)))
    (import "h" "drop-writable" (func $drop-writable (param i32)))
    (import "h" "future-read" (func $future-read (param i32 i32) (result i32)))
    (import "h" "future-drop-readable" (func $future-drop-readable (param i32)))

    ;; memory: 0..8 event payload, 16..24 read-via-stream's (stream, future), 32..40 a
    ;; future's result<_, error-code>, 4096.. data (filled with "x" by $fill)

    ;; wait until `handle` has an event (it joins a fresh set for the wait); the event's
    ;; payload (the copy result or subtask state)
    (func $wait-on (param $handle i32) (result i32)
      (local $ws i32)
      (local.set $ws (call $ws-new))
      (call $join (local.get $handle) (local.get $ws))
      (drop (call $ws-wait (local.get $ws) (i32.const 0)))
      (if (i32.ne (i32.load (i32.const 0)) (local.get $handle)) (then unreachable))
      (call $join (local.get $handle) (i32.const 0))
      (call $ws-drop (local.get $ws))
      (i32.load (i32.const 4)))

    ;; a copy's result once it is done (waiting if it was BLOCKED)
    (func $settle (param $handle i32) (param $ret i32) (result i32)
      (if (result i32) (i32.eq (local.get $ret) (i32.const -1 (; BLOCKED ;)))
        (then (call $wait-on (local.get $handle)))
        (else (local.get $ret))))

    ;; read a future<result<_, error-code>>: 0 for ok, 1 + the error code's index
    (func $outcome (param $future i32) (result i32)
      (local $ret i32)
      (local.set $ret (call $settle (local.get $future) (call $future-read (local.get $future) (i32.const 32))))
      (if (i32.ne (local.get $ret) (i32.const 0 (; COMPLETED ;))) (then unreachable))
      (call $future-drop-readable (local.get $future))
      (if (result i32) (i32.load8_u (i32.const 32))
        (then (i32.add (i32.const 1) (i32.load8_u (i32.const 33))))
        (else (i32.const 0))))

    (func $fill (param $n i32)
      (memory.fill (i32.const 4096) (i32.const 120 (; "x" ;)) (local.get $n)))

    (func (export "wait-for") (param $ms i32)
      (local $status i32) (local $subtask i32)
      (local.set $status (call $wait-for (i64.mul (i64.extend_i32_u (local.get $ms)) (i64.const 1000000))))
      (if (i32.ne (i32.and (local.get $status) (i32.const 0xf)) (i32.const 2 (; RETURNED ;)))
        (then
          (local.set $subtask (i32.shr_u (local.get $status) (i32.const 4)))
          (if (i32.ne (call $wait-on (local.get $subtask)) (i32.const 2 (; RETURNED ;))) (then unreachable))
          (call $subtask-drop (local.get $subtask))))
      (call $return-u32 (local.get $ms)))

    (func (export "now") (result i64) (call $now))

    (func (export "cat")
      (call $read-via-stream (i32.const 16))
      (call $return-u32 (call $outcome (call $write-via-stream (i32.load (i32.const 16))))))

    (func (export "cat-return")
      (call $read-via-stream (i32.const 16))
      (drop (call $write-via-stream (i32.load (i32.const 16))))
      (call $return-none))

    (func (export "read-drop") (param $n i32)
      (local $rx i32) (local $ret i32)
      (call $read-via-stream (i32.const 16))
      (local.set $rx (i32.load (i32.const 16)))
      (local.set $ret (call $settle (local.get $rx) (call $stream-read (local.get $rx) (i32.const 4096) (local.get $n))))
      (call $drop-readable (local.get $rx))
      (if (call $outcome (i32.load (i32.const 20))) (then unreachable))
      (call $return-u32 (i32.shr_u (local.get $ret) (i32.const 4))))

    (func (export "write-twice") (param $n i32)
      (local $pair i64) (local $tx i32) (local $future i32) (local $first i32) (local $ret i32)
      (call $fill (local.get $n))
      (local.set $pair (call $stream-new))
      (local.set $tx (i32.wrap_i64 (i64.shr_u (local.get $pair) (i64.const 32))))
      (local.set $future (call $write-via-stream (i32.wrap_i64 (local.get $pair))))
      (local.set $ret (i32.and (call $settle (local.get $tx) (call $stream-write (local.get $tx) (i32.const 4096) (local.get $n)))
                               (i32.const 0xf)))
      (local.set $first (i32.or (call $outcome (local.get $future)) (i32.shl (local.get $ret) (i32.const 8))))
      (local.set $ret (i32.const 15))
      (if (i32.ne (i32.and (local.get $first) (i32.const 0xf00)) (i32.const 0x100 (; DROPPED ;)))
        (then (local.set $ret (i32.and (call $settle (local.get $tx) (call $stream-write (local.get $tx) (i32.const 4096) (local.get $n)))
                                       (i32.const 0xf)))))
      (call $drop-writable (local.get $tx))
      (call $return-u32 (i32.or (local.get $first) (i32.shl (local.get $ret) (i32.const 16)))))

    (func (export "exit-writing") (param $n i32)
      (local $pair i64) (local $tx i32)
      (call $fill (local.get $n))
      (local.set $pair (call $stream-new))
      (local.set $tx (i32.wrap_i64 (i64.shr_u (local.get $pair) (i64.const 32))))
      (drop (call $write-via-stream (i32.wrap_i64 (local.get $pair))))
      (drop (call $settle (local.get $tx) (call $stream-write (local.get $tx) (i32.const 4096) (local.get $n))))
      (drop (call $stream-write (local.get $tx) (i32.const 4096) (local.get $n)))
      (call $exit-with-code (i32.const 3))
      unreachable)

    (func (export "exit-reading")
      (call $read-via-stream (i32.const 16))
      (drop (call $stream-read (i32.load (i32.const 16)) (i32.const 4096) (i32.const 100)))
      (call $exit-with-code (i32.const 4))
      unreachable)

    (func (export "read-then-wait") (param $n i32)
      (local $rx i32)
      (call $read-via-stream (i32.const 16))
      (local.set $rx (i32.load (i32.const 16)))
      (drop (call $settle (local.get $rx) (call $stream-read (local.get $rx) (i32.const 4096) (local.get $n))))
      (call $return-u32 (i32.and (call $settle (local.get $rx) (call $stream-read (local.get $rx) (i32.const 4096) (i32.const 0)))
                                 (i32.const 0xf))))

    (func (export "cancel-drop")
      (local $rx i32)
      (call $read-via-stream (i32.const 16))
      (local.set $rx (i32.load (i32.const 16)))
      (if (i32.ne (call $stream-read (local.get $rx) (i32.const 4096) (i32.const 100)) (i32.const -1 (; BLOCKED ;)))
        (then unreachable))
      (drop (call $cancel-read (local.get $rx)))
      (call $drop-readable (local.get $rx))
      (call $return-u32 (call $outcome (i32.load (i32.const 20)))))

    (func (export "drop-busy") (param $n i32)
      (local $pair i64) (local $tx i32)
      (call $fill (local.get $n))
      (local.set $pair (call $stream-new))
      (local.set $tx (i32.wrap_i64 (i64.shr_u (local.get $pair) (i64.const 32))))
      (if (i32.ne (call $stream-write (local.get $tx) (i32.const 4096) (local.get $n)) (i32.const -1 (; BLOCKED ;)))
        (then unreachable))
      (drop (call $write-via-stream (i32.wrap_i64 (local.get $pair))))
      (call $drop-writable (local.get $tx))
      (call $return-none))
  )
  (core instance $main (instantiate $Main
    (with "libc" (instance $libc))
    (with "h" (instance
      (export "read-via-stream" (func $read-via-stream))
      (export "write-via-stream" (func $write-via-stream))
      (export "exit-with-code" (func $exit-with-code))
      (export "now" (func $now))
      (export "wait-for" (func $wait-for))
      (export "ws-new" (func $ws-new))
      (export "ws-wait" (func $ws-wait))
      (export "ws-drop" (func $ws-drop))
      (export "join" (func $join))
      (export "subtask-drop" (func $subtask-drop))
      (export "return-u32" (func $return-u32))
      (export "return-none" (func $return-none))
      (export "stream-new" (func $stream-new))
      (export "stream-read" (func $stream-read))
      (export "stream-write" (func $stream-write))
      (export "cancel-read" (func $cancel-read))
      (export "drop-readable" (func $drop-readable))
      (export "drop-writable" (func $drop-writable))
      (export "future-read" (func $future-read))
      (export "future-drop-readable" (func $future-drop-readable))
    ))))
  (func (export "wait-for") async (param "ms" u32) (result u32) (canon lift (core func $main "wait-for") async))
  (func (export "now") (result u64) (canon lift (core func $main "now")))
  (func (export "cat") async (result u32) (canon lift (core func $main "cat") async))
  (func (export "cat-return") async (canon lift (core func $main "cat-return") async))
  (func (export "read-drop") async (param "n" u32) (result u32) (canon lift (core func $main "read-drop") async))
  (func (export "write-twice") async (param "n" u32) (result u32) (canon lift (core func $main "write-twice") async))
  (func (export "exit-writing") async (param "n" u32) (canon lift (core func $main "exit-writing") async))
  (func (export "exit-reading") async (canon lift (core func $main "exit-reading") async))
  (func (export "read-then-wait") async (param "n" u32) (result u32) (canon lift (core func $main "read-then-wait") async))
  (func (export "cancel-drop") async (result u32) (canon lift (core func $main "cancel-drop") async))
  (func (export "drop-busy") async (param "n" u32) (canon lift (core func $main "drop-busy") async))
)
