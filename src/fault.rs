//! Named crash points for fault-injection tests.
//!
//! Writers of the model directory call [`point`] between the steps of a write (e.g. after a
//! class's new version is complete but before it is made current). With the environment
//! variable `PMAD_FAULT_POINT` set to a point's name, the process announces the point on
//! stderr (`pmad-fault: <name>`) and waits there to be killed: the test then sends a real
//! SIGKILL, so what it checks is exactly what a crash at that instant leaves on disk. Without
//! the variable, a point is one cached environment lookup.

use std::sync::OnceLock;
use std::time::Duration;

/// The environment variable naming the point to stop at.
pub const ENV: &str = "PMAD_FAULT_POINT";

/// Stops the process at `name` if `PMAD_FAULT_POINT` names it (see the module docs).
pub fn point(name: &str) {
    static WANTED: OnceLock<Option<String>> = OnceLock::new();
    let wanted = WANTED.get_or_init(|| std::env::var(ENV).ok());
    if wanted.as_deref() == Some(name) {
        eprintln!("pmad-fault: {name}");
        // The test kills us now; if nobody does, die as abruptly as a kill would.
        std::thread::sleep(Duration::from_secs(30));
        std::process::abort();
    }
}
