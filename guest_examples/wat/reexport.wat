;; A component that re-exports an instance it imports from the host, untouched: the core
;; runtime does not run such exports and hands it to the component runtime (one log line),
;; which refuses it too (wasmtime does not implement re-exported imports).
(component
  (import "wasi:cli/environment@0.2.8" (instance $env
    (export "get-arguments" (func (result (list string))))))
  (export "env" (instance $env))
  (core module $M (func (export "four") (result i32) (i32.const 4)))
  (core instance $m (instantiate $M))
  (func (export "four") (result u32) (canon lift (core func $m "four")))
)
