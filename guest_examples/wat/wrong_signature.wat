;; Imports wasi:io/streams' input-stream.read with a signature the host does not serve
;; (u32 length, u32 result): the host must refuse to link it, or trap if linked anyway,
;; and never read the guest's values as the wrong types.
(component
  (import "wasi:io/streams@0.2.8" (instance $streams
    (export "input-stream" (type $in (sub resource)))
    (export "[method]input-stream.read" (func (param "self" (borrow $in)) (param "len" u32) (result u32)))))
  (alias export $streams "input-stream" (type $in))
  (import "wasi:cli/stdin@0.2.8" (instance $stdin
    (export "input-stream" (type $i (eq $in)))
    (export "get-stdin" (func (result (own $i))))))
  (core func $get-stdin (canon lower (func $stdin "get-stdin")))
  (core func $read (canon lower (func $streams "[method]input-stream.read")))
  (core module $M
    (import "h" "get-stdin" (func $get-stdin (result i32)))
    (import "h" "read" (func $read (param i32 i32) (result i32)))
    (func (export "read") (result i32) (call $read (call $get-stdin) (i32.const 16))))
  (core instance $m (instantiate $M (with "h" (instance (export "get-stdin" (func $get-stdin)) (export "read" (func $read))))))
  (func (export "read") (result u32) (canon lift (core func $m "read"))))
