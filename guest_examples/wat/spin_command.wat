;; A command (wasi:cli/run) that computes forever without calling the host: only epoch
;; interruption can stop it (a timeout, GuestInstance.interrupt, cancelling run_async).
(component
  (core module $M
    (func (export "run") (result i32) (loop $forever (br $forever)) (i32.const 0)))
  (core instance $m (instantiate $M))
  (func $run (result (result)) (canon lift (core func $m "run")))
  (instance $run-instance (export "run" (func $run)))
  (export "wasi:cli/run@0.2.3" (instance $run-instance))
)
