//! The timings that fencing rests on, in one place, because they only work
//! together: an agent kills its primaries [`FENCE_AFTER`] after the last
//! heartbeat the control plane answered was *sent*; the control plane
//! fails a host over only after hearing nothing from it for
//! [`HOST_LEASE`], and the last heartbeat it heard was sent no earlier
//! than the agent's last answered one. So the agent's deadline passes at
//! least `HOST_LEASE - FENCE_AFTER` (1 s) before a promotion may start,
//! which covers the kill itself (a few ms) and the agent's check (a timer
//! of its own, not a heartbeat tick).

use std::time::Duration;

/// How often an agent tells the control plane it is alive.
pub const HEARTBEAT: Duration = Duration::from_millis(250);

/// An agent whose last answered heartbeat was sent this long ago fences
/// (kills) its primaries.
pub const FENCE_AFTER: Duration = Duration::from_millis(1000);

/// A remote agent whose last heartbeat is older than this is taken as
/// down. It is also the HA grace: a primary whose host is silent this long
/// is failed over, so a shorter stall never is.
pub const HOST_LEASE: Duration = Duration::from_millis(2000);
