;; Imports an interface no host provides: instantiation must fail with a clear message.
(component
  (import "example:missing/thing" (instance $i (export "ping" (func (result u32)))))
  (core func $ping (canon lower (func $i "ping")))
  (core module $M (import "i" "ping" (func (result i32))) (func (export "run") (result i32) (i32.const 0)))
  (core instance $m (instantiate $M (with "i" (instance (export "ping" (func $ping))))))
  (func (export "run") (result u32) (canon lift (core func $m "run")))
)
