//! HA across hosts with addresses of their own, partitions made by taking a
//! host's link down: the primary's host cut off from everything fences its
//! primary by itself before the standby is promoted, writes come back on the
//! new primary, and when the link returns the old primary rejoins as a
//! follower.

use std::time::{Duration, Instant};

use crate::common::*;
use crate::ha::{ha_status, host_of_white, wait_ha_available};
use crate::hosts::Hosts;

#[test]
fn ha_a_primary_cut_off_from_everything_stops_writes_itself_before_the_standby_is_promoted() {
    let h = Hosts::start(&["h2", "h3"], &[]);
    let s = &h.server;
    s.cli(&["apps:create", "sushi"]).ok();
    s.cli(&["addons:create", "premium-0", "--app", "sushi"]).ok();
    wait_available(s, "sushi");
    wait_ha_available(s);
    assert_eq!(host_of_white(s), "h2", "the primary goes to the first free host");
    let app_url = config_get(s, "sushi", "DATABASE_URL");
    let old_url = config_get(s, "sushi", "PGFOLLOW_POSTGRESQL_WHITE_URL");
    psql_url(&app_url, "create table w (id bigint primary key)").ok();
    psql_url(&app_url, "create table local_w (id bigint primary key)").ok();

    // One writer through DATABASE_URL from the app's machine, one on the
    // primary's own host writing to it directly: a partition does not cut
    // that one off, only fencing stops it.
    let writer = Writer::start(&app_url, "w", Duration::from_secs(120));
    let local = Writer::start_from(
        Some(h.host("h2")),
        &old_url,
        "local_w",
        Duration::from_secs(120),
    );
    writer.warm_up();
    let cut = Instant::now();
    h.net.cut(h.host("h2")).unwrap();
    eventually(Duration::from_secs(30), "WHITE moves off h2", || {
        host_of_white(s) != "h2"
    });
    eventually(
        Duration::from_secs(30),
        "writes work again through DATABASE_URL",
        || psql_url(&app_url, "insert into w values (-1)").success(),
    );
    let back = cut.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    let report = writer.finish();
    let local_report = local.finish();
    eprintln!(
        "primary's host cut off: writes again after {back:?}; the writer on it was acknowledged {} times",
        local_report.acked.len()
    );

    // The old primary took its last write before the new one took its first.
    let new_url = config_get(s, "sushi", "PGFOLLOW_POSTGRESQL_WHITE_URL");
    assert_ne!(new_url, old_url);
    // After the cut nothing reaches h2 from the app's endpoint: an answer
    // more than a moment later (the ones in flight) is the new primary's.
    let first_on_new = report
        .acked_at
        .iter()
        .copied()
        .find(|at| *at > cut + Duration::from_millis(100))
        .expect("the app writer wrote after the cut");
    let last_on_old = local_report.acked_at.last().copied().expect("it wrote");
    eprintln!(
        "the app writer's first write on the new primary came {:?} after the cut; the old primary's last {:?} after it",
        first_on_new - cut,
        last_on_old - cut
    );
    assert!(
        last_on_old < first_on_new,
        "the old primary acknowledged a write {:?} after the new primary's first",
        last_on_old - first_on_new
    );
    assert!(
        last_on_old - cut < Duration::from_secs(2),
        "the old primary stopped {:?} after the cut",
        last_on_old - cut
    );
    // Asynchronous replication may lose the commits of the last moment
    // before the cut; nothing acknowledged by the new primary is missing.
    let on_new = ids(&new_url, "w");
    let lost: Vec<_> = report
        .acked
        .iter()
        .zip(&report.acked_at)
        .filter(|(id, at)| **at > first_on_new && !on_new.contains(id))
        .collect();
    assert!(lost.is_empty(), "lost after the failover: {lost:?}");
    assert_eq!(ha_status(s), "Temporarily Unavailable");

    // The link comes back: the old primary rejoins as the new one's standby.
    h.net.heal(h.host("h2")).unwrap();
    wait_ha_available(s);
    assert_eq!(
        psql_url(&old_url, "select pg_is_in_recovery()").ok().stdout,
        "t\n",
        "the old primary is a follower now"
    );
    psql_url(&app_url, "insert into w values (-2)").ok();
}
