;; A wasi:cli/run command whose run() exits through wasi:cli/exit#exit-with-code with the
;; status given as its single argument ("0".."255"), to check that exit codes reach the
;; CLI's exit status. Parses the decimal argument itself: no language runtime involved.
(component
  (import "wasi:cli/environment@0.2.8" (instance $env
    (export "get-arguments" (func (result (list string))))))
  (import "wasi:cli/exit@0.2.8" (instance $exit
    (export "exit-with-code" (func (param "status-code" u8)))))
  (core module $Libc
    (memory (export "memory") 1)
    (global $next (mut i32) (i32.const 1024))
    (func (export "realloc") (param i32 i32 i32 i32) (result i32)
      (local $p i32)
      (local.set $p (global.get $next))
      (global.set $next (i32.add (global.get $next) (i32.and (i32.add (local.get 3) (i32.const 7)) (i32.const -8))))
      (local.get $p)))
  (core instance $libc (instantiate $Libc))
  (alias core export $libc "memory" (core memory $mem))
  (alias core export $libc "realloc" (core func $realloc))
  (core func $args (canon lower (func $env "get-arguments") (memory $mem) (realloc $realloc) string-encoding=utf8))
  (core func $exit (canon lower (func $exit "exit-with-code")))
  (core module $Main
    (import "libc" "memory" (memory 1))
    (import "h" "args" (func $args (param i32)))
    (import "h" "exit" (func $exit (param i32)))
    (func (export "run") (result i32)
      (local $list i32) (local $str i32) (local $len i32) (local $i i32) (local $n i32)
      (call $args (i32.const 0))
      ;; (ptr, len) of the list at 0; the second string is argv[1]: (ptr, len) at list+8
      (if (i32.lt_u (i32.load offset=4 (i32.const 0)) (i32.const 2)) (then (call $exit (i32.const 2)) (unreachable)))
      (local.set $list (i32.load (i32.const 0)))
      (local.set $str (i32.load offset=8 (local.get $list)))
      (local.set $len (i32.load offset=12 (local.get $list)))
      (block $done (loop $digit
        (br_if $done (i32.ge_u (local.get $i) (local.get $len)))
        (local.set $n (i32.add (i32.mul (local.get $n) (i32.const 10))
          (i32.sub (i32.load8_u (i32.add (local.get $str) (local.get $i))) (i32.const 48))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $digit)))
      (call $exit (local.get $n))
      (unreachable)))
  (core instance $main (instantiate $Main
    (with "libc" (instance $libc))
    (with "h" (instance (export "args" (func $args)) (export "exit" (func $exit))))))
  (func $run (result (result)) (canon lift (core func $main "run")))
  (instance $run-instance (export "run" (func $run)))
  (export "wasi:cli/run@0.2.8" (instance $run-instance))
)
