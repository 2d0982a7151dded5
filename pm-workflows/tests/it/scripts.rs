//! The rhai sandbox: runaway scripts stop within 60 ms, every limit is its own error.

use std::time::{Duration, Instant};

use pm_workflows::Error;
use pm_workflows::script::{Sandbox, ScriptLimits};
use serde_json::json;

fn stopped_quickly(source: &str) -> Error {
    let sandbox = Sandbox::new(ScriptLimits {
        // Far more than the time budget allows, so the budget is what stops the script.
        max_operations: u64::MAX / 2,
        ..ScriptLimits::default()
    });
    let script = sandbox.compile(source).unwrap();
    let started = Instant::now();
    let err = sandbox.run(&script, &[]).unwrap_err();
    let took = started.elapsed();
    assert!(took < Duration::from_millis(60), "{source:?} ran for {took:?}");
    err
}

#[test]
fn infinite_loop_stops_within_60ms() {
    let err = stopped_quickly("loop {}");
    assert!(matches!(err, Error::LimitExceeded { limit: "script_time", .. }), "{err:?}");
    let err = stopped_quickly("let x = 0; while true { x += 1; }");
    assert!(matches!(err, Error::LimitExceeded { limit: "script_time", .. }), "{err:?}");
}

#[test]
fn deep_recursion_stops_within_60ms() {
    let err = stopped_quickly("fn f(n) { f(n + 1) } f(0)");
    assert!(matches!(err, Error::LimitExceeded { limit: "script_call_depth", .. }), "{err:?}");
    // Wide recursion (exponential) hits the time budget instead.
    let err = stopped_quickly("fn f(n) { if n > 25 { 0 } else { f(n + 1) + f(n + 1) } } f(0)");
    assert!(matches!(err, Error::LimitExceeded { limit: "script_time", .. }), "{err:?}");
}

#[test]
fn operations_and_sizes_are_capped() {
    let s = Sandbox::new(ScriptLimits { max_operations: 1_000, ..ScriptLimits::default() });
    let err = s.eval("let x = 0; for i in 0..100000 { x += i } x", &[]).unwrap_err();
    assert!(matches!(err, Error::LimitExceeded { limit: "script_operations", .. }), "{err:?}");

    let s = Sandbox::shared();
    let err = s.eval("let s = \"x\"; loop { s += s; }", &[]).unwrap_err();
    assert!(matches!(err, Error::LimitExceeded { limit: "script_data_size", .. }), "{err:?}");
    let err = s.eval("let a = []; loop { a.push(1); }", &[]).unwrap_err();
    assert!(matches!(err, Error::LimitExceeded { .. }), "{err:?}");
    let err = s.eval("let m = #{}; let i = 0; loop { m[`k${i}`] = i; i += 1; }", &[]).unwrap_err();
    assert!(matches!(err, Error::LimitExceeded { .. }), "{err:?}");
}

#[test]
fn no_eval_no_import_no_host_access() {
    let s = Sandbox::shared();
    for src in ["eval(\"1 + 1\")", "import \"fs\" as fs; 1"] {
        assert!(s.compile(src).is_err(), "{src} compiled");
    }
    // Inputs are constants: a script cannot change what later steps see.
    let task = json!({"title": "t"});
    assert!(s.eval("task.title = \"changed\"; 1", &[("task", &task)]).is_err());
    assert_eq!(s.eval("task.title.len()", &[("task", &task)]).unwrap(), json!(1));
}
