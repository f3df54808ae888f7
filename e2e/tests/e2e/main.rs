//! The end-to-end tests: one test binary (the library and its
//! dependencies linked once, not once per file), a module per subject,
//! each test named `MODULE::TEST` (`cargo test -p trellis-e2e --test e2e
//! -- mesh::` runs one module). The kernel tier is a binary of its own
//! (`tests/kernel/`).
//!
//! Tests that bring labs up need root: they are `#[ignore = "needs root"]`
//! (`make test` runs them with `--include-ignored` when it is root) and
//! fail loudly if run without it. They take their module's turn first
//! ([`module_turn`]).

use std::sync::{Condvar, Mutex, PoisonError};

mod chart;
mod clusters;
mod failover;
mod lab;
mod linked_sites;
mod mesh;
mod nat;
mod peers;
mod real_nodes;
mod sites;

/// The module whose tests run labs now, and how many of its tests do.
static TURN: Mutex<(Option<&'static str>, usize)> = Mutex::new((None, 0));
static TURN_OVER: Condvar = Condvar::new();

/// A test's share of its module's turn, until dropped.
#[must_use = "the turn ends when this is dropped"]
pub(crate) struct ModuleTurn {
    _module: &'static str,
}

/// Waits until no test of another module runs labs, then runs with the
/// tests of `module` (`module_path!()`) alone, as when each module was a
/// test binary of its own (cargo runs those one after the other): two
/// cores cannot carry the labs of several modules, and timing assertions
/// (packets lost while an agent restarts, while a relay switches to a
/// direct path) would fail for the load of another module's labs. Within
/// a module, tests still run in parallel or serialize as they say.
pub(crate) fn module_turn(module: &'static str) -> ModuleTurn {
    let mut turn = TURN.lock().unwrap_or_else(PoisonError::into_inner);
    while turn.0.is_some_and(|m| m != module) {
        turn = TURN_OVER.wait(turn).unwrap_or_else(PoisonError::into_inner);
    }
    *turn = (Some(module), turn.1 + 1);
    ModuleTurn { _module: module }
}

impl Drop for ModuleTurn {
    fn drop(&mut self) {
        let mut turn = TURN.lock().unwrap_or_else(PoisonError::into_inner);
        turn.1 -= 1;
        if turn.1 == 0 {
            turn.0 = None;
            TURN_OVER.notify_all();
        }
    }
}
