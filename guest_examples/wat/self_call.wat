;; A component that calls its own lifted function through `canon lower` (a component-to-
;; component call: the core runtime lifts the arguments out of the caller and lowers them
;; into the callee, the result back, as a fused adapter does).
(component
  (core module $M (func (export "two") (result i32) (i32.const 2)))
  (core instance $m (instantiate $M))
  (func $two (result u32) (canon lift (core func $m "two")))
  (core func $two-lowered (canon lower (func $two)))
  (core module $N
    (import "x" "two" (func $two (result i32)))
    (func (export "four") (result i32) (i32.add (call $two) (call $two))))
  (core instance $n (instantiate $N (with "x" (instance (export "two" (func $two-lowered))))))
  (func (export "four") (result u32) (canon lift (core func $n "four")))
)
