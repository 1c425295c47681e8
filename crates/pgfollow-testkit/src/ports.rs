//! Ranges of ports that concurrent tests (nextest runs each test in its own
//! process) never share: a range is held through an exclusive lock on a file
//! for as long as the slot lives.

use std::fs::File;

use nix::fcntl::{Flock, FlockArg};

const SLOTS: u16 = 200;
const FIRST_PORT: u16 = 21000;
const PORTS_PER_SLOT: u16 = 40;

/// A range of ports held by this process.
pub struct PortSlot {
    _lock: Flock<File>,
    pub first: u16,
    pub last: u16,
}

impl PortSlot {
    /// The first free slot; fails when all are held.
    pub fn take() -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join("pgfollow-testkit-ports");
        std::fs::create_dir_all(&dir)?;
        for n in 0..SLOTS {
            let file = File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(dir.join(format!("slot-{n}")))?;
            if let Ok(lock) = Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                let first = FIRST_PORT + n * PORTS_PER_SLOT;
                return Ok(Self {
                    _lock: lock,
                    first,
                    last: first + PORTS_PER_SLOT - 1,
                });
            }
        }
        anyhow::bail!("all {SLOTS} test port slots are taken")
    }

    /// `A-B`, as `--pg-ports` takes it.
    pub fn arg(&self) -> String {
        format!("{}-{}", self.first, self.last)
    }
}
