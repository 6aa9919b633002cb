;; Guests that a host must be able to stop: `spin` loops forever without waiting, `grow`
;; calls memory.grow until it fails and returns how many 64 KiB pages it got, and
;; `grow-table` does the same for a table. `add` proves the instance still works.
(component
  (core module $M
    (memory (export "memory") 1)
    (table $t 1 funcref)
    (func (export "spin") (loop $forever (br $forever)))
    (func (export "grow") (result i32)
      (local $pages i32)
      (block $done
        (loop $more
          (br_if $done (i32.eq (memory.grow (i32.const 16)) (i32.const -1)))
          (local.set $pages (i32.add (local.get $pages) (i32.const 16)))
          (br $more)))
      (local.get $pages))
    (func (export "grow-table") (result i32)
      (local $n i32)
      (block $done
        (loop $more
          (br_if $done (i32.eq (table.grow $t (ref.null func) (i32.const 1024)) (i32.const -1)))
          (local.set $n (i32.add (local.get $n) (i32.const 1024)))
          (br $more)))
      (local.get $n))
    (func (export "add") (param i32 i32) (result i32) (i32.add (local.get 0) (local.get 1))))
  (core instance $m (instantiate $M))
  (func (export "spin") (canon lift (core func $m "spin")))
  (func (export "grow") (result u32) (canon lift (core func $m "grow")))
  (func (export "grow-table") (result u32) (canon lift (core func $m "grow-table")))
  (func (export "add") (param "a" u32) (param "b" u32) (result u32) (canon lift (core func $m "add")))
)
