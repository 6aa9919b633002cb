;; A hand-written component that exercises the host runtime's value and resource rules
;; without any guest language runtime in between. Host functions come from the test-only
;; interface `wasi-tls-host:test/probe`; the exports either re-export a host function (so the
;; embedder can see exactly what the guest received) or run a fixed handle scenario.
(component
  (import "wasi-tls-host:test/probe" (instance $host
    (export "thing" (type $thing (sub resource)))
    (export "[constructor]thing" (func (param "v" u32) (result (own $thing))))
    (export "[method]thing.get" (func (param "self" (borrow $thing)) (result u32)))
    (export "sum" (func (param "a" (borrow $thing)) (param "b" (borrow $thing)) (result u32)))
    (export "sum-list" (func (param "things" (list (borrow $thing))) (result u32)))
    (export "consume" (func (param "t" (own $thing)) (result u32)))
    (export "echo" (func (param "data" (list u8)) (result (list u8))))
    (export "nested" (func (param "k" u32)
      (result (option (result (result (tuple u32 u32) (error u32)))))))
    (export "fail" (func (param "k" u32) (result (result u32 (error u32)))))
  ))
  (alias export $host "thing" (type $thing))

  (core module $Libc
    (memory (export "memory") 64)
    ;; One scratch area for every returned list: the probe never keeps two alive.
    (func (export "realloc") (param i32 i32 i32 i32) (result i32) (i32.const 65536)))
  (core instance $libc (instantiate $Libc))
  (alias core export $libc "memory" (core memory $mem))
  (alias core export $libc "realloc" (core func $realloc))

  (core func $new (canon lower (func $host "[constructor]thing")))
  (core func $get (canon lower (func $host "[method]thing.get")))
  (core func $sum (canon lower (func $host "sum")))
  (core func $sum_list (canon lower (func $host "sum-list") (memory $mem)))
  (core func $consume (canon lower (func $host "consume")))
  (core func $drop (canon resource.drop $thing))
  (core func $echo (canon lower (func $host "echo") (memory $mem) (realloc $realloc)))
  (core func $nested (canon lower (func $host "nested") (memory $mem)))
  (core func $fail (canon lower (func $host "fail") (memory $mem)))

  (core module $Main
    (import "libc" "memory" (memory 1))
    (import "host" "new" (func $new (param i32) (result i32)))
    (import "host" "get" (func $get (param i32) (result i32)))
    (import "host" "sum" (func $sum (param i32 i32) (result i32)))
    (import "host" "sum-list" (func $sum_list (param i32 i32) (result i32)))
    (import "host" "consume" (func $consume (param i32) (result i32)))
    (import "host" "drop" (func $drop (param i32)))
    (import "host" "echo" (func $echo (param i32 i32 i32)))
    (import "host" "nested" (func $nested (param i32 i32)))
    (import "host" "fail" (func $fail (param i32 i32)))

    ;; sum(make(a), make(b)) through one call with two borrows, then drop both.
    (func (export "two-borrows") (param $a i32) (param $b i32) (result i32)
      (local $x i32) (local $y i32) (local $r i32)
      (local.set $x (call $new (local.get $a)))
      (local.set $y (call $new (local.get $b)))
      (local.set $r (call $sum (local.get $x) (local.get $y)))
      (call $drop (local.get $x))
      (call $drop (local.get $y))
      (local.get $r))
    ;; The same through one call with a list of two borrows (as poll takes its pollables).
    (func (export "borrow-list") (param $a i32) (param $b i32) (result i32)
      (local $x i32) (local $y i32) (local $r i32)
      (local.set $x (call $new (local.get $a)))
      (local.set $y (call $new (local.get $b)))
      (i32.store (i32.const 0) (local.get $x))
      (i32.store (i32.const 4) (local.get $y))
      (local.set $r (call $sum_list (i32.const 0) (i32.const 2)))
      (call $drop (local.get $x))
      (call $drop (local.get $y))
      (local.get $r))
    ;; Creates a thing, drops it, then calls a method on the dropped handle.
    (func (export "use-after-drop") (result i32)
      (local $x i32)
      (local.set $x (call $new (i32.const 7)))
      (call $drop (local.get $x))
      (call $get (local.get $x)))
    ;; Passes ownership to the host, then tries to use the handle again.
    (func (export "use-after-move") (result i32)
      (local $x i32)
      (local.set $x (call $new (i32.const 9)))
      (drop (call $consume (local.get $x)))
      (call $get (local.get $x)))
    ;; Creates n things and drops them all (the host's table must end empty).
    (func (export "churn") (param $n i32) (result i32)
      (local $i i32) (local $total i32) (local $x i32)
      (block $done
        (loop $next
          (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
          (local.set $x (call $new (local.get $i)))
          (local.set $total (i32.add (local.get $total) (call $get (local.get $x))))
          (call $drop (local.get $x))
          (local.set $i (i32.add (local.get $i) (i32.const 1)))
          (br $next)))
      (local.get $total))
    ;; Calls a handle index the guest never had.
    (func (export "forged-handle") (result i32) (call $get (i32.const 4242)))
    ;; Pass-throughs: call the host, hand the host's answer back to the embedder.
    (func (export "echo") (param i32 i32) (result i32)
      (call $echo (local.get 0) (local.get 1) (i32.const 0)) (i32.const 0))
    (func (export "nested") (param i32) (result i32)
      (call $nested (local.get 0) (i32.const 0)) (i32.const 0))
    (func (export "fail") (param i32) (result i32)
      (call $fail (local.get 0) (i32.const 0)) (i32.const 0))
    ;; Calls echo `count` times with `n` bytes and returns the total length received.
    (func (export "echo-loop") (param $n i32) (param $count i32) (result i64)
      (local $total i64)
      (block $done
        (loop $next
          (br_if $done (i32.eqz (local.get $count)))
          (call $echo (i32.const 131072) (local.get $n) (i32.const 0))
          (local.set $total (i64.add (local.get $total) (i64.extend_i32_u (i32.load offset=4 (i32.const 0)))))
          (local.set $count (i32.sub (local.get $count) (i32.const 1)))
          (br $next)))
      (local.get $total))
  )
  (core instance $main (instantiate $Main
    (with "libc" (instance $libc))
    (with "host" (instance
      (export "new" (func $new)) (export "get" (func $get)) (export "sum" (func $sum)) (export "sum-list" (func $sum_list))
      (export "consume" (func $consume)) (export "drop" (func $drop)) (export "echo" (func $echo))
      (export "nested" (func $nested)) (export "fail" (func $fail))))))

  (func (export "two-borrows") (param "a" u32) (param "b" u32) (result u32)
    (canon lift (core func $main "two-borrows")))
  (func (export "borrow-list") (param "a" u32) (param "b" u32) (result u32)
    (canon lift (core func $main "borrow-list")))
  (func (export "use-after-drop") (result u32) (canon lift (core func $main "use-after-drop")))
  (func (export "use-after-move") (result u32) (canon lift (core func $main "use-after-move")))
  (func (export "churn") (param "n" u32) (result u32) (canon lift (core func $main "churn")))
  (func (export "forged-handle") (result u32) (canon lift (core func $main "forged-handle")))
  (func (export "echo") (param "data" (list u8)) (result (list u8))
    (canon lift (core func $main "echo") (memory $mem) (realloc $realloc)))
  (func (export "nested") (param "k" u32) (result (option (result (result (tuple u32 u32) (error u32)))))
    (canon lift (core func $main "nested") (memory $mem)))
  (func (export "fail") (param "k" u32) (result (result u32 (error u32)))
    (canon lift (core func $main "fail") (memory $mem)))
  (func (export "echo-loop") (param "n" u32) (param "count" u32) (result u64)
    (canon lift (core func $main "echo-loop")))
)
