//! The etcd catalog against a real three-member etcd cluster (the testkit's).

use super::*;
use pgfollow_testkit::EtcdCluster;

fn catalog(cluster: &EtcdCluster) -> EtcdCatalog {
    EtcdCatalog::connect(&cluster.endpoints(), "/test").unwrap()
}

#[test]
fn etcd_compare_and_swap() {
    let cluster = EtcdCluster::start().unwrap();
    crate::contract::compare_and_swap(&catalog(&cluster));
}

#[test]
fn etcd_leases() {
    let cluster = EtcdCluster::start().unwrap();
    crate::contract::leases(&catalog(&cluster), Duration::from_secs(1));
}

#[test]
fn etcd_ttls_are_whole_seconds() {
    assert_eq!(ttl_secs(Duration::from_millis(1)), 1);
    assert_eq!(ttl_secs(Duration::from_millis(1000)), 1);
    assert_eq!(ttl_secs(Duration::from_millis(1001)), 2);
    assert_eq!(ttl_secs(Duration::ZERO), 1);
}

#[test]
fn etcd_a_deposed_leaders_write_fails() {
    let cluster = EtcdCluster::start().unwrap();
    let a = catalog(&cluster).guard_writes_with("leader");
    let b = catalog(&cluster).guard_writes_with("leader");
    let ttl = Duration::from_secs(1);
    // Nobody leads: nobody writes.
    assert!(matches!(
        a.store(&State::default(), 0),
        Err(CatalogError::NotHolder(_))
    ));
    assert!(a.acquire_lease("leader", "a", ttl).unwrap());
    let rev = a.store(&State::default(), 0).unwrap();
    assert!(!b.acquire_lease("leader", "b", ttl).unwrap());
    // a stops renewing: its lease runs out and b leads.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !b.acquire_lease("leader", "b", ttl).unwrap() {
        assert!(std::time::Instant::now() < deadline, "b never led");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(a.lease_holder("leader").unwrap().as_deref(), Some("b"));
    // a still believes it leads, with the right revision: refused.
    let stale = State {
        next_serial: 5,
        ..Default::default()
    };
    assert!(matches!(
        a.store(&stale, rev),
        Err(CatalogError::NotHolder(_))
    ));
    assert_eq!(b.load().unwrap().0.next_serial, 0);
    let rev2 = b.store(&stale, rev).unwrap();
    assert!(rev2 > rev);
    assert!(!a.acquire_lease("leader", "a", ttl).unwrap());
}

#[test]
fn etcd_sync_calls_work_inside_a_current_thread_runtime() {
    let cluster = EtcdCluster::start().unwrap();
    let c = catalog(&cluster);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let rev = rt.block_on(async {
        let rev = c.store(&State::default(), 0).unwrap();
        c.put("beats", "h1", b"x".to_vec(), None).await.unwrap();
        assert_eq!(
            c.list("beats").await.unwrap(),
            vec![("h1".into(), b"x".to_vec())]
        );
        rev
    });
    assert_eq!(c.load().unwrap().1, rev);
    drop(rt);
    drop(c);
}
