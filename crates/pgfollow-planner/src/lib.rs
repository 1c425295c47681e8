//! The planner decides; it never acts. Given a database's record, the
//! operation working on it and what its agent last observed, it returns the
//! one next step and a sentence saying why. It is synchronous and has no I/O,
//! so every decision is tested as a table of plain values; the control plane's
//! executor carries the step out and records the result.

mod backup;
mod changeover;
mod decide;
mod failover;
mod ha;
mod logical;
mod protection;
mod transition;

pub use backup::{
    decide_backup, decide_restore, latest_slot, schedule_due, to_prune, BackupAction,
    BackupDecision, MAX_BACKUP_FAILURES,
};
pub use changeover::{
    hand_over_standby, recover_changeover, ChangeoverRecovery, CHANGEOVER_SWITCH,
};
pub use decide::{
    commit_password, decide, follower_fell_off, is_caught_up, reconcile, upgrade_target, Action,
    Decision, Observed, CAUGHT_UP_COMMITS, MAX_STEP_FAILURES, REWIND_FAILED, SLOT_LEFT,
};
pub use failover::{
    decide_failover, is_promoted, orphaned_holds, self_fence_is_certain, switch_roles,
    sync_suspension, FailoverAction, FailoverDecision, FailoverStep, MAX_FAILOVER_TRIES,
};
pub use ha::{
    ha_verdict, is_suspect, HaLimits, HaObservation, HaVerdict, HUNG, MAX_START_FAILURES,
};
pub use logical::logical_problems;
pub use protection::{
    assign_stanzas, base_backup_every, check_rollback_window, desired_stanza, is_rollback,
    orphaned_stanzas, parse_by, parse_to, protection_steps, record_protection, rollback_subject,
    rollback_target, ProtectAction, ProtectStep,
};
pub use transition::{end_billing, forget, step_done};
