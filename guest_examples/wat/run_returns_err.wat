;; A wasi:cli/run command whose run() returns err without printing anything: the host must
;; still say on stderr why the run failed (a componentize-py guest that lets an Err escape
;; its run() ends exactly like this).
(component
  (core module $Main
    (func (export "run") (result i32) (i32.const 1)))
  (core instance $main (instantiate $Main))
  (func $run (result (result)) (canon lift (core func $main "run")))
  (instance $run-instance (export "run" (func $run)))
  (export "wasi:cli/run@0.2.8" (instance $run-instance))
)
