//! The agent owns its host's ports: the control plane asks it for free ones
//! (`OfferPorts`) and picks among them, so a port is only ever tested where
//! it will be used. A port is offered when it is in the agent's range,
//! nothing listens on it at the host's address, and it was not offered in
//! the last [`OFFER_HOLD`] (two provisions at once get different ports).

use std::collections::HashMap;
use std::net::TcpListener;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::Rng;

/// How long an offered port is kept for the one it was offered to.
pub const OFFER_HOLD: Duration = Duration::from_secs(60);

/// The ports a new database or endpoint gets on this host unless told
/// otherwise (`--pg-ports`).
pub const DEFAULT_PORTS: (u16, u16) = (15400, 15999);

pub struct PortBook {
    range: (u16, u16),
    offered: Mutex<HashMap<u16, Instant>>,
}

/// Up to `count` ports of `range`, starting at `start` (an offset into it)
/// and going round, for which `free` holds and that `held` does not list.
pub fn choose(
    range: (u16, u16),
    start: u32,
    count: usize,
    held: &dyn Fn(u16) -> bool,
    free: &mut dyn FnMut(u16) -> bool,
) -> Vec<u16> {
    let (lo, hi) = range;
    if lo > hi {
        return Vec::new();
    }
    let span = u32::from(hi - lo) + 1;
    let mut out = Vec::new();
    for i in 0..span {
        if out.len() >= count {
            break;
        }
        let port = lo + ((start + i) % span) as u16;
        if !held(port) && free(port) {
            out.push(port);
        }
    }
    out
}

impl PortBook {
    pub fn new(range: (u16, u16)) -> Self {
        Self {
            range,
            offered: Mutex::default(),
        }
    }

    pub fn range(&self) -> (u16, u16) {
        self.range
    }

    /// Up to `count` free ports at `address`, each held for [`OFFER_HOLD`].
    pub fn offer(&self, address: &str, count: usize) -> Vec<u16> {
        let mut offered = self.offered.lock().unwrap_or_else(|p| p.into_inner());
        offered.retain(|_, at| at.elapsed() < OFFER_HOLD);
        let (lo, hi) = self.range;
        let span = u32::from(hi.saturating_sub(lo)) + 1;
        let start = rand::thread_rng().gen_range(0..span);
        let ports = choose(
            self.range,
            start,
            count,
            &|p| offered.contains_key(&p),
            &mut |p| TcpListener::bind((address, p)).is_ok(),
        );
        let now = Instant::now();
        for p in &ports {
            offered.insert(*p, now);
        }
        ports
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_chosen_round_the_range_skipping_held_and_busy_ones() {
        let cases: &[(&str, (u16, u16), u32, usize, &[u16], &[u16], &[u16])] = &[
            // name, range, start, count, held, busy, expected
            ("from the start", (100, 104), 0, 2, &[], &[], &[100, 101]),
            ("round the end", (100, 104), 3, 3, &[], &[], &[103, 104, 100]),
            ("skips held", (100, 104), 0, 2, &[100], &[], &[101, 102]),
            ("skips busy", (100, 104), 0, 2, &[], &[101], &[100, 102]),
            ("fewer than asked", (100, 102), 0, 5, &[100], &[102], &[101]),
            ("none free", (100, 100), 0, 1, &[], &[100], &[]),
            ("empty range", (101, 100), 0, 1, &[], &[], &[]),
        ];
        for (name, range, start, count, held, busy, expected) in cases {
            let got = choose(*range, *start, *count, &|p| held.contains(&p), &mut |p| {
                !busy.contains(&p)
            });
            assert_eq!(&got, expected, "{name}");
        }
    }

    #[test]
    fn an_offered_port_is_not_offered_again_while_held() {
        let book = PortBook::new((47100, 47103));
        let first = book.offer("127.0.0.1", 2);
        let second = book.offer("127.0.0.1", 4);
        assert_eq!(first.len(), 2);
        assert!(second.iter().all(|p| !first.contains(p)), "{first:?} {second:?}");
        let _busy = TcpListener::bind(("127.0.0.1", 47104)).unwrap();
        assert!(PortBook::new((47104, 47104)).offer("127.0.0.1", 1).is_empty());
    }
}
