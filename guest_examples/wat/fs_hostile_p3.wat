;; A hostile WASI 0.3 filesystem guest, written by hand so every built-in call is visible
;; (tests/test_filesystem_p3.py). It imports wasi:filesystem@0.3.0 only and misuses
;; descriptors, streams and futures; each export answers a u32 (or traps, where the
;; Canonical ABI says it must). The first preopen holds data.txt (a few KiB) and sub/.
;;
;;   open-dotdot            open-at ".." of the preopen: 1000 + the error-code case, or the handle
;;   open-absolute          open-at "/etc/passwd": the same
;;   read-after-drop        read-via-stream, drop the descriptor, read the stream to its end: the
;;                          byte count (+ 1000000 * the future's case: 0 is ok)
;;   drop-stream-early      read 16 bytes, drop the stream, read the future: its case (0 ok)
;;   drop-future-first      drop the future, then read the whole stream: the byte count
;;   write-drop-mid-copy    a write into write-via-stream's stream is pending when the guest
;;                          drops the stream's writable end: traps (a copy is in progress)
;;   write-cancel-mid-copy  the same, but cancelled first: the future's case (0 ok)
;;   list-directory         read-directory's stream of records to its end: the entry count
;;                          (+ 1000000 * the future's case)
;;   list-drop-early        read one entry, drop the stream, read the future: its case
;;   use-after-drop         get-flags on a dropped descriptor: traps (unknown handle)
;;   leave-open(n)          n descriptors, each with a read stream, a pending write stream and a
;;                          directory stream, none dropped: returns n
(component
  (import "wasi:filesystem/types@0.3.0" (instance $types
    (export "descriptor" (type $desc (sub resource)))
    (type $error-code (variant
      (case "access") (case "already") (case "bad-descriptor") (case "busy") (case "deadlock")
      (case "quota") (case "exist") (case "file-too-large") (case "illegal-byte-sequence")
      (case "in-progress") (case "interrupted") (case "invalid") (case "io") (case "is-directory")
      (case "loop") (case "too-many-links") (case "message-size") (case "name-too-long")
      (case "no-device") (case "no-entry") (case "no-lock") (case "insufficient-memory")
      (case "insufficient-space") (case "not-directory") (case "not-empty") (case "not-recoverable")
      (case "unsupported") (case "no-tty") (case "no-such-device") (case "overflow")
      (case "not-permitted") (case "pipe") (case "read-only") (case "invalid-seek")
      (case "text-file-busy") (case "cross-device") (case "other" (option string))))
    (export "error-code" (type $ec (eq $error-code)))
    (type $descriptor-type (variant
      (case "block-device") (case "character-device") (case "directory") (case "fifo")
      (case "symbolic-link") (case "regular-file") (case "socket") (case "other" (option string))))
    (export "descriptor-type" (type $dt (eq $descriptor-type)))
    (type $directory-entry (record (field "type" $dt) (field "name" string)))
    (export "directory-entry" (type $de (eq $directory-entry)))
    (type $path-flags (flags "symlink-follow"))
    (export "path-flags" (type $pf (eq $path-flags)))
    (type $open-flags (flags "create" "directory" "exclusive" "truncate"))
    (export "open-flags" (type $of (eq $open-flags)))
    (type $descriptor-flags (flags "read" "write" "file-integrity-sync" "data-integrity-sync"
                                   "requested-write-sync" "mutate-directory"))
    (export "descriptor-flags" (type $df (eq $descriptor-flags)))
    (export "[method]descriptor.open-at" (func async
      (param "self" (borrow $desc)) (param "path-flags" $pf) (param "path" string)
      (param "open-flags" $of) (param "flags" $df) (result (result (own $desc) (error $ec)))))
    (export "[method]descriptor.get-flags" (func async
      (param "self" (borrow $desc)) (result (result $df (error $ec)))))
    (export "[method]descriptor.read-via-stream" (func
      (param "self" (borrow $desc)) (param "offset" u64)
      (result (tuple (stream u8) (future (result (error $ec)))))))
    (export "[method]descriptor.write-via-stream" (func
      (param "self" (borrow $desc)) (param "data" (stream u8)) (param "offset" u64)
      (result (future (result (error $ec))))))
    (export "[method]descriptor.read-directory" (func
      (param "self" (borrow $desc)) (result (tuple (stream $de) (future (result (error $ec)))))))
  ))
  (alias export $types "descriptor" (type $desc))
  (alias export $types "error-code" (type $ec))
  (alias export $types "directory-entry" (type $de))
  (import "wasi:filesystem/preopens@0.3.0" (instance $preopens
    (alias outer 1 $desc (type $d))
    (export "get-directories" (func (result (list (tuple (own $d) string)))))
  ))

  (core module $Libc
    ;; 0..64: scratch, 512..: path strings, 64 KiB..1 MiB: realloc's bump, 1 MiB..: data
    (memory (export "memory") 96)
    (data (i32.const 512) "..")
    (data (i32.const 520) "/etc/passwd")
    (data (i32.const 540) "data.txt")
    (data (i32.const 560) "out.bin")
    (global $bump (mut i32) (i32.const 65536))
    (func (export "realloc") (param i32 i32 i32 i32) (result i32)
      (local $p i32)
      (local.set $p (i32.and (i32.add (global.get $bump) (i32.const 7)) (i32.const -8)))
      (global.set $bump (i32.add (local.get $p) (local.get 3)))
      (if (i32.gt_u (global.get $bump) (i32.const 0x100000)) (then unreachable))
      (local.get $p)))
  (core instance $libc (instantiate $Libc))
  (alias core export $libc "memory" (core memory $mem))
  (alias core export $libc "realloc" (core func $realloc))

  (type $ST (stream u8))
  (type $FT (future (result (error $ec))))
  (type $DST (stream $de))
  (core func $open-at (canon lower (func $types "[method]descriptor.open-at") (memory $mem) (realloc $realloc)))
  (core func $get-flags (canon lower (func $types "[method]descriptor.get-flags") (memory $mem) (realloc $realloc)))
  (core func $read-via-stream (canon lower (func $types "[method]descriptor.read-via-stream") (memory $mem)))
  (core func $write-via-stream (canon lower (func $types "[method]descriptor.write-via-stream")))
  (core func $read-directory (canon lower (func $types "[method]descriptor.read-directory") (memory $mem)))
  (core func $get-directories (canon lower (func $preopens "get-directories") (memory $mem) (realloc $realloc)))
  (core func $desc-drop (canon resource.drop $desc))
  (core func $ws-new (canon waitable-set.new))
  (core func $ws-wait (canon waitable-set.wait (memory $mem)))
  (core func $ws-drop (canon waitable-set.drop))
  (core func $join (canon waitable.join))
  (core func $task-return (canon task.return (result u32)))
  (core func $stream-new (canon stream.new $ST))
  (core func $stream-read (canon stream.read $ST async (memory $mem)))
  (core func $stream-write (canon stream.write $ST async (memory $mem)))
  (core func $stream-cancel-write (canon stream.cancel-write $ST))
  (core func $drop-readable (canon stream.drop-readable $ST))
  (core func $drop-writable (canon stream.drop-writable $ST))
  (core func $future-read (canon future.read $FT async (memory $mem) (realloc $realloc)))
  (core func $future-drop-readable (canon future.drop-readable $FT))
  (core func $dir-read (canon stream.read $DST async (memory $mem) (realloc $realloc)))
  (core func $dir-drop-readable (canon stream.drop-readable $DST))

  (core module $Main
    (import "libc" "memory" (memory 96))
    (import "h" "open-at" (func $open-at (param i32 i32 i32 i32 i32 i32 i32)))
    (import "h" "get-flags" (func $get-flags (param i32 i32)))
    (import "h" "read-via-stream" (func $read-via-stream (param i32 i64 i32)))
    (import "h" "write-via-stream" (func $write-via-stream (param i32 i32 i64) (result i32)))
    (import "h" "read-directory" (func $read-directory (param i32 i32)))
    (import "h" "get-directories" (func $get-directories (param i32)))
    (import "h" "desc-drop" (func $desc-drop (param i32)))
    (import "h" "ws-new" (func $ws-new (result i32)))
    (import "h" "ws-wait" (func $ws-wait (param i32 i32) (result i32)))
    (import "h" "ws-drop" (func $ws-drop (param i32)))
    (import "h" "join" (func $join (param i32 i32)))
    (import "h" "task-return" (func $task-return (param i32)))
    (import "h" "stream-new" (func $stream-new (result i64)))
    (import "h" "stream-read" (func $stream-read (param i32 i32 i32) (result i32)))
    (import "h" "stream-write" (func $stream-write (param i32 i32 i32) (result i32)))
    (import "h" "stream-cancel-write" (func $stream-cancel-write (param i32) (result i32)))
    (import "h" "drop-readable" (func $drop-readable (param i32)))
    (import "h" "drop-writable" (func $drop-writable (param i32)))
    (import "h" "future-read" (func $future-read (param i32 i32) (result i32)))
    (import "h" "future-drop-readable" (func $future-drop-readable (param i32)))
    (import "h" "dir-read" (func $dir-read (param i32 i32 i32) (result i32)))
    (import "h" "dir-drop-readable" (func $dir-drop-readable (param i32)))

    (global $data i32 (i32.const 0x100000))  ;; 1 MiB .. 6 MiB: data buffer

    ;; wait until `handle` has an event: its code (payload at 4)
    (func $wait-on (param $handle i32) (result i32)
      (local $ws i32) (local $code i32)
      (local.set $ws (call $ws-new))
      (call $join (local.get $handle) (local.get $ws))
      (local.set $code (call $ws-wait (local.get $ws) (i32.const 0)))
      (if (i32.ne (i32.load (i32.const 0)) (local.get $handle)) (then unreachable))
      (call $join (local.get $handle) (i32.const 0))
      (call $ws-drop (local.get $ws))
      (local.get $code))

    ;; an async copy's result: at once, or from its event once it is blocked
    (func $finish (param $handle i32) (param $ret i32) (result i32)
      (if (result i32) (i32.eq (local.get $ret) (i32.const -1 (; BLOCKED ;)))
        (then (drop (call $wait-on (local.get $handle))) (i32.load (i32.const 4)))
        (else (local.get $ret))))

    (func $root (result i32)
      (call $get-directories (i32.const 16))
      (if (i32.eqz (i32.load (i32.const 20))) (then unreachable))  ;; no preopen
      (i32.load (i32.load (i32.const 16))))

    ;; open-at(root, follow, path, open-flags, flags): the handle, or 1000 + error-code case
    (func $open (param $path i32) (param $len i32) (param $oflags i32) (param $flags i32) (result i32)
      (call $open-at (call $root) (i32.const 1) (local.get $path) (local.get $len) (local.get $oflags)
                     (local.get $flags) (i32.const 32))
      (if (result i32) (i32.load8_u (i32.const 32))
        (then (i32.add (i32.const 1000) (i32.load8_u (i32.const 36))))
        (else (i32.load (i32.const 36)))))

    (func $open-data (result i32)
      (local $h i32)
      (local.set $h (call $open (i32.const 540) (i32.const 8) (i32.const 0) (i32.const 1 (; read ;))))
      (if (i32.ge_u (local.get $h) (i32.const 1000)) (then unreachable))
      (local.get $h))

    ;; the future's outcome: 0 ok, else 1 + the error-code case
    (func $outcome (param $future i32) (result i32)
      (local $ret i32)
      (local.set $ret (call $finish (local.get $future) (call $future-read (local.get $future) (i32.const 48))))
      (if (i32.ne (local.get $ret) (i32.const 0 (; COMPLETED ;))) (then unreachable))
      (call $future-drop-readable (local.get $future))
      (if (result i32) (i32.load8_u (i32.const 48))
        (then (i32.add (i32.const 1) (i32.load8_u (i32.const 52))))
        (else (i32.const 0))))

    ;; read a byte stream to its end (and drop it): the byte count
    (func $drain (param $rx i32) (result i32)
      (local $ret i32) (local $total i32)
      (block $done
        (loop $more
          (local.set $ret (call $finish (local.get $rx)
            (call $stream-read (local.get $rx) (global.get $data) (i32.const 65536))))
          (local.set $total (i32.add (local.get $total) (i32.shr_u (local.get $ret) (i32.const 4))))
          (br_if $done (i32.eq (i32.and (local.get $ret) (i32.const 0xf)) (i32.const 1 (; DROPPED ;))))
          (br $more)))
      (call $drop-readable (local.get $rx))
      (local.get $total))

    (func (export "open-dotdot")
      (call $task-return (call $open (i32.const 512) (i32.const 2) (i32.const 0) (i32.const 1))))

    (func (export "open-absolute")
      (call $task-return (call $open (i32.const 520) (i32.const 11) (i32.const 0) (i32.const 1))))

    (func (export "read-after-drop")
      (local $f i32) (local $total i32)
      (local.set $f (call $open-data))
      (call $read-via-stream (local.get $f) (i64.const 0) (i32.const 40))
      (call $desc-drop (local.get $f))
      (local.set $total (call $drain (i32.load (i32.const 40))))
      (call $task-return (i32.add (local.get $total)
        (i32.mul (i32.const 1000000) (call $outcome (i32.load (i32.const 44)))))))

    (func (export "drop-stream-early")
      (local $f i32) (local $ret i32)
      (local.set $f (call $open-data))
      (call $read-via-stream (local.get $f) (i64.const 0) (i32.const 40))
      (local.set $ret (call $finish (i32.load (i32.const 40))
        (call $stream-read (i32.load (i32.const 40)) (global.get $data) (i32.const 16))))
      (if (i32.ne (local.get $ret) (i32.const 0x100 (; 16 bytes, COMPLETED ;))) (then unreachable))
      (call $drop-readable (i32.load (i32.const 40)))
      (call $desc-drop (local.get $f))
      (call $task-return (call $outcome (i32.load (i32.const 44)))))

    (func (export "drop-future-first")
      (local $f i32)
      (local.set $f (call $open-data))
      (call $read-via-stream (local.get $f) (i64.const 0) (i32.const 40))
      (call $future-drop-readable (i32.load (i32.const 44)))
      (call $task-return (call $drain (i32.load (i32.const 40)))))

    ;; a write of 4 MiB pending in a stream that write-via-stream then takes: its writable end
    (func $pending-write (result i32)
      (local $f i32) (local $pair i64) (local $rx i32) (local $tx i32)
      (local.set $f (call $open (i32.const 560) (i32.const 7) (i32.const 1 (; create ;)) (i32.const 2 (; write ;))))
      (if (i32.ge_u (local.get $f) (i32.const 1000)) (then unreachable))
      (local.set $pair (call $stream-new))
      (local.set $rx (i32.wrap_i64 (local.get $pair)))
      (local.set $tx (i32.wrap_i64 (i64.shr_u (local.get $pair) (i64.const 32))))
      ;; no reader yet: the write waits
      (if (i32.ne (call $stream-write (local.get $tx) (global.get $data) (i32.const 0x400000)) (i32.const -1))
        (then unreachable))
      (i32.store (i32.const 60) (call $write-via-stream (local.get $f) (local.get $rx) (i64.const 0)))
      (call $desc-drop (local.get $f))
      (local.get $tx))

    (func (export "write-drop-mid-copy")
      (call $drop-writable (call $pending-write))  ;; traps: the write is in progress
      (call $task-return (i32.const 0)))

    (func (export "write-cancel-mid-copy")
      (local $tx i32)
      (local.set $tx (call $pending-write))
      (drop (call $stream-cancel-write (local.get $tx)))
      (call $drop-writable (local.get $tx))
      (call $task-return (call $outcome (i32.load (i32.const 60)))))

    (func (export "list-directory")
      (local $pair i32) (local $ret i32) (local $count i32)
      (call $read-directory (call $root) (i32.const 40))
      (block $done
        (loop $more
          ;; up to 3 records of 24 bytes (type variant, name string) at a time
          (local.set $ret (call $finish (i32.load (i32.const 40))
            (call $dir-read (i32.load (i32.const 40)) (global.get $data) (i32.const 3))))
          (local.set $count (i32.add (local.get $count) (i32.shr_u (local.get $ret) (i32.const 4))))
          (br_if $done (i32.eq (i32.and (local.get $ret) (i32.const 0xf)) (i32.const 1 (; DROPPED ;))))
          (br $more)))
      (call $dir-drop-readable (i32.load (i32.const 40)))
      (call $task-return (i32.add (local.get $count)
        (i32.mul (i32.const 1000000) (call $outcome (i32.load (i32.const 44)))))))

    (func (export "list-drop-early")
      (local $ret i32)
      (call $read-directory (call $root) (i32.const 40))
      (local.set $ret (call $finish (i32.load (i32.const 40))
        (call $dir-read (i32.load (i32.const 40)) (global.get $data) (i32.const 1))))
      (if (i32.ne (local.get $ret) (i32.const 0x10 (; 1 record, COMPLETED ;))) (then unreachable))
      (call $dir-drop-readable (i32.load (i32.const 40)))
      (call $task-return (call $outcome (i32.load (i32.const 44)))))

    (func (export "use-after-drop")
      (local $f i32)
      (local.set $f (call $open-data))
      (call $desc-drop (local.get $f))
      (call $get-flags (local.get $f) (i32.const 32))  ;; traps: unknown handle
      (call $task-return (i32.const 0)))

    (func (export "leave-open") (param $n i32)
      (local $i i32)
      (block $done (loop $more
        (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
        (call $read-via-stream (call $open-data) (i64.const 0) (i32.const 40))
        (drop (call $pending-write))
        (call $read-directory (call $root) (i32.const 40))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $more)))
      (call $task-return (local.get $n)))
  )
  (core instance $main (instantiate $Main
    (with "libc" (instance $libc))
    (with "h" (instance
      (export "open-at" (func $open-at))
      (export "get-flags" (func $get-flags))
      (export "read-via-stream" (func $read-via-stream))
      (export "write-via-stream" (func $write-via-stream))
      (export "read-directory" (func $read-directory))
      (export "get-directories" (func $get-directories))
      (export "desc-drop" (func $desc-drop))
      (export "ws-new" (func $ws-new))
      (export "ws-wait" (func $ws-wait))
      (export "ws-drop" (func $ws-drop))
      (export "join" (func $join))
      (export "task-return" (func $task-return))
      (export "stream-new" (func $stream-new))
      (export "stream-read" (func $stream-read))
      (export "stream-write" (func $stream-write))
      (export "stream-cancel-write" (func $stream-cancel-write))
      (export "drop-readable" (func $drop-readable))
      (export "drop-writable" (func $drop-writable))
      (export "future-read" (func $future-read))
      (export "future-drop-readable" (func $future-drop-readable))
      (export "dir-read" (func $dir-read))
      (export "dir-drop-readable" (func $dir-drop-readable))
    ))))
  (func (export "open-dotdot") async (result u32) (canon lift (core func $main "open-dotdot") async))
  (func (export "open-absolute") async (result u32) (canon lift (core func $main "open-absolute") async))
  (func (export "read-after-drop") async (result u32) (canon lift (core func $main "read-after-drop") async))
  (func (export "drop-stream-early") async (result u32) (canon lift (core func $main "drop-stream-early") async))
  (func (export "drop-future-first") async (result u32) (canon lift (core func $main "drop-future-first") async))
  (func (export "write-drop-mid-copy") async (result u32) (canon lift (core func $main "write-drop-mid-copy") async))
  (func (export "write-cancel-mid-copy") async (result u32) (canon lift (core func $main "write-cancel-mid-copy") async))
  (func (export "list-directory") async (result u32) (canon lift (core func $main "list-directory") async))
  (func (export "list-drop-early") async (result u32) (canon lift (core func $main "list-drop-early") async))
  (func (export "use-after-drop") async (result u32) (canon lift (core func $main "use-after-drop") async))
  (func (export "leave-open") async (param "n" u32) (result u32) (canon lift (core func $main "leave-open") async))
)
