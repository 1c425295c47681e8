//! Partitions of the control plane on etcd, every process on a host of its
//! own (a network namespace): three etcd members, two `serve --etcd`
//! replicas, two agents with a premium database and its standby. One etcd
//! member cut off (its link down) changes nothing: the lead stays. The
//! leading replica's host cut off hands the lead to the other within the
//! lease. Either way no agent fences, no database fails over, and a writer
//! through `DATABASE_URL` is never held longer than the lease.

use std::time::{Duration, Instant};

use pgfollow_testkit::{AgentProcess, EtcdCluster, NetHost, Network};

use crate::common::*;
use crate::ha::{host_of_white, wait_ha_available};

/// The leader lease's TTL the replicas run with (the default).
const TTL: Duration = Duration::from_secs(2);

fn leads(s: &Server, name: &str) -> bool {
    s.log()
        .contains(&format!("control plane replica {name} leads"))
}

/// Fields drop in order: processes before the network.
struct Setup {
    agents: Vec<AgentProcess>,
    a: Server,
    b: Server,
    etcd: EtcdCluster,
    members: Vec<NetHost>,
    /// The agents' hosts.
    hosts: Vec<NetHost>,
    cp1: NetHost,
    net: Network,
}

fn setup() -> Setup {
    setup_with(&["h1", "h2"])
}

/// Three etcd members, two replicas and an agent on a host of its own for
/// each of `agents`.
fn setup_with(agents: &[&str]) -> Setup {
    let mut net = Network::new().expect("a test network");
    let members: Vec<NetHost> = (1..=3)
        .map(|i| net.add_host(&format!("e{i}")).unwrap())
        .collect();
    let etcd = EtcdCluster::start_on(&members).expect("etcd starts on its hosts");
    let urls = etcd.endpoints_arg();
    let cp1 = net.add_host("cp1").unwrap();
    let cp2 = net.add_host("cp2").unwrap();
    let a = Server::start_on(bin(), &cp1, &["--etcd", &urls, "--name", "a"]).unwrap();
    eventually(Duration::from_secs(10), "a leads", || leads(&a, "a"));
    let b = Server::start_on(bin(), &cp2, &["--etcd", &urls, "--name", "b"]).unwrap();
    let both = format!("{},{}", a.url, b.url);
    let (mut agents_running, mut hosts) = (Vec::new(), Vec::new());
    for name in agents {
        let h = net.add_host(name).unwrap();
        agents_running
            .push(AgentProcess::start_with_control_on(bin(), &both, &a.token(), name, &h).unwrap());
        hosts.push(h);
    }
    eventually(Duration::from_secs(10), "every host registered", || {
        let out = b.cli(&["hosts", "--json"]).stdout;
        agents.iter().all(|n| out.contains(&format!("\"{n}\"")))
    });
    Setup {
        agents: agents_running,
        hosts,
        a,
        b,
        etcd,
        members,
        cp1,
        net,
    }
}

/// A premium database on the agents, HA available, and a writer through
/// `DATABASE_URL`: the primary's host and the writer.
fn premium_with_writer(b: &Server) -> (String, Writer) {
    b.cli(&["apps:create", "sushi"]).ok();
    b.cli(&["addons:create", "premium-0", "--app", "sushi"])
        .ok();
    wait_available(b, "sushi");
    wait_ha_available(b);
    let primary_host = host_of_white(b);
    let app_url = config_get(b, "sushi", "DATABASE_URL");
    psql_url(&app_url, "create table w (id bigint primary key)").ok();
    let writer = Writer::start(&app_url, "w", Duration::from_secs(120));
    writer.warm_up();
    (primary_host, writer)
}

/// The writer saw no error and no write held past the lease, the primary
/// stayed where it was, and no agent fenced.
fn undisturbed(st: &Setup, report: &WriterReport, primary_host: &str) {
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert!(
        report.longest < TTL,
        "a write was held {:?}, longer than the lease",
        report.longest
    );
    assert_eq!(host_of_white(&st.b), primary_host, "nothing failed over");
    for agent in &st.agents {
        assert!(
            !agent.log().contains("fencing this host's primaries"),
            "agent {} fenced:\n{}",
            agent.name,
            agent.log()
        );
    }
}

#[test]
fn ha_one_etcd_member_cut_off_changes_nothing() {
    let st = setup();
    let (a, b) = (&st.a, &st.b);
    let (primary_host, writer) = premium_with_writer(b);

    // One etcd member (not etcd's own leader) cut off: nothing changes.
    let leader = st.etcd.leader().expect("etcd has a leader");
    let member = (0..3).find(|i| *i != leader).unwrap();
    st.net.cut(&st.members[member]).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    b.cli(&["config:set", "STEP=one-member-cut", "--app", "sushi"])
        .ok();
    assert!(!leads(b, "b"), "the lead did not move:\n{}", b.log());
    st.net.heal(&st.members[member]).unwrap();

    let report = writer.finish();
    undisturbed(&st, &report, &primary_host);
    assert!(leads(a, "a") && !leads(b, "b"), "the lead stayed with a");
}

#[test]
fn ha_the_leading_replicas_host_cut_off_hands_over_and_fails_nothing_over() {
    let st = setup();
    let b = &st.b;
    let (primary_host, writer) = premium_with_writer(b);
    let cut = Instant::now();
    st.net.cut(&st.cp1).unwrap();
    eventually(TTL * 4, "b leads", || leads(b, "b"));
    let change = cut.elapsed();
    // Past HA's 2 s grace: had b missed the agents' heartbeats, it would
    // have failed the primary over by now.
    std::thread::sleep(Duration::from_secs(4));
    let report = writer.finish();
    eprintln!(
        "leading replica's host cut off: b led {:.2} s later; the writer's longest insert {:?}",
        change.as_secs_f64(),
        report.longest
    );
    undisturbed(&st, &report, &primary_host);
}

/// Connects with tokio-postgres to `url` (its host list as libpq reads
/// it), writes a row to `t` and answers how long the connection took.
fn tokio_postgres_insert(url: &str, id: i64) -> Duration {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let start = Instant::now();
        let connect = tokio_postgres::connect(url, tokio_postgres::NoTls);
        let (c, conn) = tokio::time::timeout(Duration::from_secs(30), connect)
            .await
            .expect("tokio-postgres connects within 30 s")
            .expect("tokio-postgres goes on to the next host of DATABASE_URL");
        let took = start.elapsed();
        tokio::spawn(conn);
        c.execute("insert into t values ($1)", &[&id])
            .await
            .unwrap();
        took
    })
}

/// Losing the host of an app's first endpoint (its link down) leaves
/// `DATABASE_URL` working: psql and tokio-postgres go on to the second
/// endpoint after the URL's connect timeout, and every write arrives.
#[test]
fn ha_the_first_endpoints_host_cut_off_leaves_database_url_working() {
    let st = setup_with(&["h1", "h2", "h3"]);
    let b = &st.b;
    // Placement is least loaded first: an app made before puts its
    // database on h1 and its endpoints on h1 and h2, so sushi's database
    // goes to h2 and its endpoints to h3 (first), then h1.
    b.cli(&["apps:create", "other"]).ok();
    add_database(b, "other", "hobby-dev");
    b.cli(&["apps:create", "sushi"]).ok();
    add_database(b, "sushi", "hobby-dev");
    let app_url = config_get(b, "sushi", "DATABASE_URL");
    let db_addr = crate::hosts::url_host(&config_get(b, "sushi", "PGFOLLOW_POSTGRESQL_WHITE_URL"));
    let first = crate::hosts::url_host(&app_url);
    assert_ne!(
        first, db_addr,
        "the first endpoint is not on the database's host: {app_url}"
    );
    let cut = st
        .hosts
        .iter()
        .find(|h| h.address == first)
        .expect("the first endpoint runs on an agent's host");
    psql_url(&app_url, "create table t (id bigint primary key)").ok();
    psql_url(&app_url, "insert into t values (1)").ok();

    st.net.cut(cut).unwrap();
    for id in [2, 3] {
        let start = Instant::now();
        psql_url(&app_url, &format!("insert into t values ({id})")).ok();
        eprintln!(
            "first endpoint's host cut off: psql through DATABASE_URL wrote in {:.2} s",
            start.elapsed().as_secs_f64()
        );
    }
    for id in [4, 5] {
        let took = tokio_postgres_insert(&app_url, id);
        eprintln!(
            "first endpoint's host cut off: tokio-postgres connected through DATABASE_URL in {:.2} s",
            took.as_secs_f64()
        );
        assert!(took < Duration::from_secs(10), "connecting took {took:?}");
    }
    let count = psql_url(&app_url, "select count(*) from t").ok().stdout;
    assert_eq!(count.trim(), "5", "every write arrived");

    // Back on its link, the endpoint serves again.
    st.net.heal(cut).unwrap();
    let direct = crate::hosts::only(&app_url, &crate::hosts::listed(&app_url)[0]);
    eventually(
        Duration::from_secs(20),
        "the first endpoint answers again",
        || psql_url(&direct, "select count(*) from t").status.success(),
    );
}

/// The read endpoint on a control plane on etcd (the leading replica runs
/// its loop) has a place beside each of the app's endpoints, so
/// `DATABASE_FOLLOWER_URL` lists two hosts, and every slot at either reads
/// from a follower. Losing the host of the first place, a follower's host
/// too (its link down), leaves reads working: psql goes on to the second
/// host after the URL's connect timeout, the follower cut off is taken out,
/// and the slot that routed to it moves to the one that serves. When the
/// link returns, both serve again.
#[test]
fn ha_the_read_endpoint_has_a_place_beside_each_endpoint_and_outlives_a_host() {
    let st = setup_with(&["h1", "h2", "h3"]);
    let b = &st.b;
    // As in the test above: sushi's database goes to h2, its endpoints to
    // h3 (first) and h1, and its followers to h3 and h1.
    b.cli(&["apps:create", "other"]).ok();
    add_database(b, "other", "hobby-dev");
    b.cli(&["apps:create", "sushi"]).ok();
    add_database(b, "sushi", "standard-0");
    add_follower(b, "sushi", "standard-0", "WHITE");
    add_follower(b, "sushi", "standard-0", "WHITE");
    b.cli(&["pg:wait", "--app", "sushi", "--timeout", "180"])
        .ok();
    let infos = info(b, "sushi");
    let host_of = |color: &str| -> String {
        infos.iter().find(|i| i["color"] == color).unwrap()["host"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let serving = || -> Vec<String> {
        let white = b
            .cli(&["pg:info", "WHITE", "--app", "sushi", "--json"])
            .ok()
            .json();
        let mut v: Vec<String> = white["serving_reads"]
            .as_array()
            .map(|a| a.iter().map(|c| c.as_str().unwrap().to_string()).collect())
            .unwrap_or_default();
        v.sort();
        v
    };
    let mut followers: Vec<String> = infos
        .iter()
        .filter(|i| i["color"] != "WHITE" && i["app"] == "sushi")
        .map(|i| i["color"].as_str().unwrap().to_string())
        .collect();
    followers.sort();
    assert_eq!(followers.len(), 2, "{infos:?}");
    eventually(
        Duration::from_secs(30),
        "both followers serve reads",
        || serving() == followers,
    );

    let url = config_get(b, "sushi", "DATABASE_FOLLOWER_URL");
    let places = crate::hosts::listed(&url);
    let app_url = config_get(b, "sushi", "DATABASE_URL");
    let endpoints = crate::hosts::listed(&app_url);
    let place_hosts: Vec<String> = places
        .iter()
        .map(|p| p.split(':').next().unwrap().to_string())
        .collect();
    let endpoint_hosts: Vec<String> = endpoints
        .iter()
        .map(|p| p.split(':').next().unwrap().to_string())
        .collect();
    assert_eq!(
        place_hosts, endpoint_hosts,
        "a place beside each endpoint, in the same order: {url} / {app_url}"
    );
    assert!(url.ends_with("?connect_timeout=2"), "{url}");
    // Every slot at either place reads from a follower.
    for place in &places {
        let direct = crate::hosts::only(&url, place);
        for _ in 0..6 {
            let out = psql_url(&direct, "select pg_is_in_recovery()").ok().stdout;
            assert_eq!(
                out.trim(),
                "t",
                "a read through {place} came from a follower"
            );
        }
    }

    let first = st
        .hosts
        .iter()
        .find(|h| h.address == place_hosts[0])
        .expect("the first place is on an agent's host");
    let first_name = st
        .hosts
        .iter()
        .zip(&st.agents)
        .find(|(h, _)| h.address == first.address)
        .map(|(_, a)| a.name.clone())
        .unwrap();
    let cut_follower = followers
        .iter()
        .find(|c| host_of(c) == first_name)
        .cloned()
        .expect("a follower runs on the first place's host");
    assert_ne!(host_of("WHITE"), first_name, "the leader is elsewhere");
    let kept: Vec<String> = followers
        .iter()
        .filter(|c| **c != cut_follower)
        .cloned()
        .collect();

    st.net.cut(first).unwrap();
    let cut = Instant::now();
    eventually(
        Duration::from_secs(30),
        "only the follower on a host with its link up serves",
        || serving() == kept,
    );
    eprintln!(
        "read endpoint: {cut_follower} out {:.1} s after its host was cut off",
        cut.elapsed().as_secs_f64()
    );
    // Then every new connection through the URL reads from that follower,
    // by the second place.
    let kept_port = crate::hosts::listed(&config_get(
        b,
        "sushi",
        &format!("PGFOLLOW_POSTGRESQL_{}_URL", kept[0]),
    ))[0]
        .split(':')
        .nth(1)
        .unwrap()
        .to_string();
    let mut tries = 0;
    eventually(
        Duration::from_secs(30),
        "reads through DATABASE_FOLLOWER_URL all land on the follower that serves",
        || {
            tries += 1;
            (0..4).all(|_| {
                let start = Instant::now();
                let out = psql_url(
                    &url,
                    "select pg_is_in_recovery()::text || inet_server_port()",
                );
                let took = start.elapsed();
                assert!(took < Duration::from_secs(20), "a read took {took:?}");
                out.status.success() && out.stdout.trim() == format!("true{kept_port}")
            })
        },
    );
    eprintln!(
        "read endpoint: reads all on {} {:.1} s after the cut ({tries} rounds)",
        kept[0],
        cut.elapsed().as_secs_f64()
    );

    st.net.heal(first).unwrap();
    eventually(
        Duration::from_secs(40),
        "both followers serve reads again",
        || serving() == followers,
    );
    let direct = crate::hosts::only(&url, &places[0]);
    eventually(
        Duration::from_secs(20),
        "the first place answers again",
        || {
            psql_url(&direct, "select pg_is_in_recovery()")
                .stdout
                .trim()
                == "t"
        },
    );
}
