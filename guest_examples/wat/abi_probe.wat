;; Canonical ABI shapes both runtimes must agree on: every export is lifted and forwards its
;; flat arguments unchanged to a lowered host function of the same type, so a value makes a
;; round trip embedder -> guest -> host -> guest -> embedder. Covers the string encodings
;; (utf8, utf16, latin1+utf16), more than 16 flat parameters (passed in memory), results
;; returned through memory, variants whose cases join to other core types (f32 and u64 and
;; a string in one slot), records with options, flags, enums, lists and chars.
(component
  (import "wasi-tls-host:test/abi" (instance $h
    (export "echo-string" (func (param "s" string) (result string)))
    (export "sum17" (func
      (param "a" u32) (param "b" u32) (param "c" u32) (param "d" u32) (param "e" u32) (param "f" u32)
      (param "g" u32) (param "h" u32) (param "i" u32) (param "j" u32) (param "k" u32) (param "l" u32)
      (param "m" u32) (param "n" u32) (param "o" u32) (param "p" u32) (param "q" u32) (result u64)))
    (type $v (variant (case "a" f32) (case "b" u64) (case "c" string) (case "d")))
    (export "v" (type $v-t (eq $v)))
    (export "echo-variant" (func (param "v" $v-t) (result $v-t)))
    (type $fl (flags "read" "write" "exec"))
    (export "fl" (type $fl-t (eq $fl)))
    (type $en (enum "red" "green" "blue"))
    (export "en" (type $en-t (eq $en)))
    (type $r (record (field "x" u8) (field "y" string) (field "z" (list u16)) (field "w" (option s64))
                     (field "f" $fl-t) (field "e" $en-t)))
    (export "r" (type $r-t (eq $r)))
    (export "echo-record" (func (param "r" $r-t) (result $r-t)))
    (export "echo-char" (func (param "c" char) (result char)))
  ))
  (alias export $h "v" (type $v))
  (alias export $h "r" (type $r))

  (core module $Libc
    (memory (export "memory") 2)
    (global $next (mut i32) (i32.const 1024))
    ;; A bump allocator that is a real realloc: shrinking keeps the block, growing copies.
    (func (export "realloc") (param i32 i32 i32 i32) (result i32)
      (local $p i32)
      (if (i32.and (i32.ne (local.get 0) (i32.const 0)) (i32.le_u (local.get 3) (local.get 1)))
        (then (return (local.get 0))))
      (local.set $p (i32.and (i32.add (global.get $next) (i32.sub (local.get 2) (i32.const 1)))
                             (i32.sub (i32.const 0) (local.get 2))))
      (global.set $next (i32.add (local.get $p) (local.get 3)))
      (if (i32.ne (local.get 0) (i32.const 0)) (then (memory.copy (local.get $p) (local.get 0) (local.get 1))))
      (local.get $p)))
  (core instance $libc (instantiate $Libc))
  (alias core export $libc "memory" (core memory $mem))
  (alias core export $libc "realloc" (core func $realloc))

  (core func $s8 (canon lower (func $h "echo-string") (memory $mem) (realloc $realloc) string-encoding=utf8))
  (core func $s16 (canon lower (func $h "echo-string") (memory $mem) (realloc $realloc) string-encoding=utf16))
  (core func $sl1 (canon lower (func $h "echo-string") (memory $mem) (realloc $realloc) string-encoding=latin1+utf16))
  (core func $sum17 (canon lower (func $h "sum17") (memory $mem)))
  (core func $variant (canon lower (func $h "echo-variant") (memory $mem) (realloc $realloc)))
  (core func $record (canon lower (func $h "echo-record") (memory $mem) (realloc $realloc)))
  (core func $char (canon lower (func $h "echo-char")))

  (core module $Main
    (import "h" "s8" (func $s8 (param i32 i32 i32)))
    (import "h" "s16" (func $s16 (param i32 i32 i32)))
    (import "h" "sl1" (func $sl1 (param i32 i32 i32)))
    (import "h" "sum17" (func $sum17 (param i32) (result i64)))
    (import "h" "variant" (func $variant (param i32 i64 i32 i32)))
    (import "h" "record" (func $record (param i32 i32 i32 i32 i32 i32 i64 i32 i32 i32)))
    (import "h" "char" (func $char (param i32) (result i32)))
    ;; Results come back through a fixed 64-byte area at address 16.
    (func (export "s8") (param i32 i32) (result i32) (call $s8 (local.get 0) (local.get 1) (i32.const 16)) (i32.const 16))
    (func (export "s16") (param i32 i32) (result i32) (call $s16 (local.get 0) (local.get 1) (i32.const 16)) (i32.const 16))
    (func (export "sl1") (param i32 i32) (result i32) (call $sl1 (local.get 0) (local.get 1) (i32.const 16)) (i32.const 16))
    (func (export "sum17") (param i32) (result i64) (call $sum17 (local.get 0)))
    (func (export "variant") (param i32 i64 i32) (result i32)
      (call $variant (local.get 0) (local.get 1) (local.get 2) (i32.const 16)) (i32.const 16))
    (func (export "record") (param i32 i32 i32 i32 i32 i32 i64 i32 i32) (result i32)
      (call $record (local.get 0) (local.get 1) (local.get 2) (local.get 3) (local.get 4)
                    (local.get 5) (local.get 6) (local.get 7) (local.get 8) (i32.const 16))
      (i32.const 16))
    (func (export "char") (param i32) (result i32) (call $char (local.get 0)))
  )
  (core instance $main (instantiate $Main
    (with "h" (instance
      (export "s8" (func $s8)) (export "s16" (func $s16)) (export "sl1" (func $sl1))
      (export "sum17" (func $sum17)) (export "variant" (func $variant))
      (export "record" (func $record)) (export "char" (func $char))))))

  (func (export "echo-utf8") (param "s" string) (result string)
    (canon lift (core func $main "s8") (memory $mem) (realloc $realloc) string-encoding=utf8))
  (func (export "echo-utf16") (param "s" string) (result string)
    (canon lift (core func $main "s16") (memory $mem) (realloc $realloc) string-encoding=utf16))
  (func (export "echo-latin1-utf16") (param "s" string) (result string)
    (canon lift (core func $main "sl1") (memory $mem) (realloc $realloc) string-encoding=latin1+utf16))
  (func (export "sum17")
      (param "a" u32) (param "b" u32) (param "c" u32) (param "d" u32) (param "e" u32) (param "f" u32)
      (param "g" u32) (param "h" u32) (param "i" u32) (param "j" u32) (param "k" u32) (param "l" u32)
      (param "m" u32) (param "n" u32) (param "o" u32) (param "p" u32) (param "q" u32) (result u64)
    (canon lift (core func $main "sum17") (memory $mem) (realloc $realloc)))
  (func (export "echo-variant") (param "v" $v) (result $v)
    (canon lift (core func $main "variant") (memory $mem) (realloc $realloc)))
  (func (export "echo-record") (param "r" $r) (result $r)
    (canon lift (core func $main "record") (memory $mem) (realloc $realloc)))
  (func (export "echo-char") (param "c" char) (result char) (canon lift (core func $main "char")))
)
