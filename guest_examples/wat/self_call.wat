;; A component that calls its own lifted function through `canon lower` (a component-to-
;; component call, which needs a fused adapter): the core runtime does not implement that,
;; so the host runs this component on the component runtime instead.
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
