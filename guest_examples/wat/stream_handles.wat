;; Host calls that return or take stream and future ends, in the shapes of wasi:sockets 0.3's
;; and upstream wasi:tls's (tests/test_stream_handles.py, benchmarks/bench_async.py's last rows):
;;   opens(n)      n times open() -> tuple<stream<u8>, future<result<_, u32>>> (as receive),
;;                 dropping both ends it gets; answers n
;;   sinks(n)      n times stream.new, sink(stream<u8>) -> future<result<_, u32>> (as send),
;;                 dropping the future and the writable end; answers n
;;   sink-bad(k)   passes sink what it may not take: 0 the writable end, 1 a readable end
;;                 joined to a waitable set, 2 a readable end with a read in progress
(component
  (import "wasi-tls-host:test/stream-handles" (instance $h
    (export "open" (func (result (tuple (stream u8) (future (result (error u32)))))))
    (export "sink" (func (param "data" (stream u8)) (result (future (result (error u32))))))
  ))
  (core module $Libc (memory (export "memory") 1))
  (core instance $libc (instantiate $Libc))
  (alias core export $libc "memory" (core memory $mem))
  (type $fut (future (result (error u32))))
  (type $st (stream u8))
  (core func $open (canon lower (func $h "open") (memory $mem)))
  (core func $sink (canon lower (func $h "sink") (memory $mem)))
  (core func $snew (canon stream.new $st))
  (core func $sdr (canon stream.drop-readable $st))
  (core func $sdw (canon stream.drop-writable $st))
  (core func $fdr (canon future.drop-readable $fut))
  (core func $wsnew (canon waitable-set.new))
  (core func $join (canon waitable.join))
  (core func $sread (canon stream.read $st async (memory $mem)))
  (core module $Main
    (import "h" "open" (func $open (param i32)))
    (import "h" "sink" (func $sink (param i32) (result i32)))
    (import "h" "snew" (func $snew (result i64)))
    (import "h" "sdr" (func $sdr (param i32)))
    (import "h" "sdw" (func $sdw (param i32)))
    (import "h" "fdr" (func $fdr (param i32)))
    (import "h" "wsnew" (func $wsnew (result i32)))
    (import "h" "join" (func $join (param i32 i32)))
    (import "h" "sread" (func $sread (param i32 i32 i32) (result i32)))
    (import "m" "memory" (memory 1))
    (func (export "opens") (param $n i32) (result i32)
      (local $i i32)
      (block $exit (loop $again
        (br_if $exit (i32.ge_u (local.get $i) (local.get $n)))
        (call $open (i32.const 8))
        (call $sdr (i32.load (i32.const 8)))
        (call $fdr (i32.load (i32.const 12)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $again)))
      (local.get $n))
    (func (export "sinks") (param $n i32) (result i32)
      (local $i i32) (local $rw i64)
      (block $exit (loop $again
        (br_if $exit (i32.ge_u (local.get $i) (local.get $n)))
        (local.set $rw (call $snew))
        (call $fdr (call $sink (i32.wrap_i64 (local.get $rw))))
        (call $sdw (i32.wrap_i64 (i64.shr_u (local.get $rw) (i64.const 32))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $again)))
      (local.get $n))
    ;; sink-bad(kind): passes sink what it may not take: 0 the writable end, 1 a readable end
    ;; joined to a waitable set, 2 a readable end with a read in progress
    (func (export "sink-bad") (param $k i32) (result i32)
      (local $rw i64) (local $r i32)
      (local.set $rw (call $snew))
      (local.set $r (i32.wrap_i64 (local.get $rw)))
      (if (i32.eq (local.get $k) (i32.const 0))
        (then (local.set $r (i32.wrap_i64 (i64.shr_u (local.get $rw) (i64.const 32))))))
      (if (i32.eq (local.get $k) (i32.const 1)) (then (call $join (local.get $r) (call $wsnew))))
      (if (i32.eq (local.get $k) (i32.const 2))
        (then (drop (call $sread (local.get $r) (i32.const 64) (i32.const 4)))))
      (call $sink (local.get $r))))
  (core instance $main (instantiate $Main
    (with "m" (instance $libc))
    (with "h" (instance (export "open" (func $open)) (export "sink" (func $sink))
      (export "snew" (func $snew)) (export "sdr" (func $sdr)) (export "sdw" (func $sdw)) (export "fdr" (func $fdr))
      (export "wsnew" (func $wsnew)) (export "join" (func $join)) (export "sread" (func $sread))))))
  (func (export "opens") (param "n" u32) (result u32) (canon lift (core func $main "opens")))
  (func (export "sinks") (param "n" u32) (result u32) (canon lift (core func $main "sinks")))
  (func (export "sink-bad") (param "kind" u32) (result u32) (canon lift (core func $main "sink-bad")))
)
