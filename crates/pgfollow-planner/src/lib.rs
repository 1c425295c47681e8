//! The planner decides; it never acts. Given a database's record, the
//! operation working on it and what its agent last observed, it returns the
//! one next step and a sentence saying why. It is synchronous and has no I/O,
//! so every decision is tested as a table of plain values; the control plane's
//! executor carries the step out and records the result.

mod backup;
mod decide;

pub use backup::{
    decide_backup, decide_restore, latest_slot, schedule_due, to_prune, BackupAction,
    BackupDecision, MAX_BACKUP_FAILURES,
};

pub use decide::{
    decide, follower_fell_off, ha_verdict, is_caught_up, reconcile, Action, Decision,
    HaObservation, HaVerdict, Observed, CAUGHT_UP_COMMITS, MAX_START_FAILURES, MAX_STEP_FAILURES,
    REWIND_FAILED,
};
