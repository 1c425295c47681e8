//! Hosts with addresses of their own: `serve` and each `pgfollow agent` in a
//! network namespace of the test's (10.231.N.0/24), the test itself (the
//! app's machine) on the bridge. Followers, changeovers and the app
//! endpoint work across them.

use std::time::Duration;

use pgfollow_testkit::{AgentProcess, NetHost, Network};

use crate::common::*;

/// `serve` on host `cp` and an agent on each of `agents`, every one in a
/// namespace of its own. Fields drop in order: agents and serve stop
/// before the network goes.
pub(crate) struct Hosts {
    pub agents: Vec<AgentProcess>,
    pub server: Server,
    pub cp: NetHost,
    pub hosts: Vec<NetHost>,
    pub net: Network,
}

impl Hosts {
    pub fn start(agents: &[&str], serve_args: &[&str]) -> Hosts {
        let mut net = Network::new().expect("a test network");
        let cp = net.add_host("cp").unwrap();
        let server = Server::start_on(bin(), &cp, serve_args).expect("serve starts on its host");
        let mut hosts = Vec::new();
        let mut procs = Vec::new();
        for name in agents {
            let h = net.add_host(name).unwrap();
            procs.push(AgentProcess::start_on(bin(), &server, name, None, &h).unwrap());
            hosts.push(h);
        }
        Hosts {
            agents: procs,
            server,
            cp,
            hosts,
            net,
        }
    }

    /// The namespace of host `name` (`local` is serve's).
    pub fn host(&self, name: &str) -> &NetHost {
        if name == pgfollow_control::LOCAL_HOST {
            return &self.cp;
        }
        let i = self
            .agents
            .iter()
            .position(|a| a.name == name)
            .unwrap_or_else(|| panic!("no host {name}"));
        &self.hosts[i]
    }
}

/// The host part of a postgres URL.
pub(crate) fn url_host(url: &str) -> String {
    let rest = url.split('@').nth(1).unwrap_or(url);
    rest.split([':', '/'])
        .next()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn agents_on_hosts_of_their_own_advertise_their_address_and_run_followers_there() {
    let h = Hosts::start(&["h2", "h3"], &[]);
    let s = &h.server;
    let hosts = s.cli(&["hosts", "--json"]).ok().json();
    for name in ["h2", "h3"] {
        let rec = hosts
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .unwrap_or_else(|| panic!("{name} registered: {hosts}"));
        assert_eq!(rec["address"], h.host(name).address.as_str(), "{rec}");
        assert_eq!(rec["reachable"], true, "{rec}");
    }

    s.cli(&["apps:create", "sushi"]).ok();
    add_database(s, "sushi", "standard-0");
    add_follower(s, "sushi", "standard-0", "WHITE");
    wait_available(s, "sushi");
    let infos = info(s, "sushi");
    let host_of = |color: &str| {
        infos.iter().find(|i| i["color"] == color).unwrap()["host"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (lh, fh) = (host_of("WHITE"), host_of("CHARCOAL"));
    assert_ne!(lh, fh, "the follower is on another host");
    // Each database's URL names its own host's address: the agent there
    // chose the port.
    let leader_url = config_get(s, "sushi", "PGFOLLOW_POSTGRESQL_WHITE_URL");
    let follower_url = config_get(s, "sushi", "PGFOLLOW_POSTGRESQL_CHARCOAL_URL");
    assert_eq!(url_host(&leader_url), h.host(&lh).address);
    assert_eq!(url_host(&follower_url), h.host(&fh).address);

    // The app connects from its own machine (the test's namespace).
    let app_url = config_get(s, "sushi", "DATABASE_URL");
    psql_url(&app_url, "create table t (id int primary key)").ok();
    psql_url(&app_url, "insert into t values (1)").ok();
    eventually(
        Duration::from_secs(30),
        "the follower on the other host has the row",
        || psql_url(&follower_url, "select count(*) from t").stdout == "1\n",
    );
    let text = s
        .cli(&["pg:info", "CHARCOAL", "--app", "sushi"])
        .ok()
        .stdout;
    assert!(text.contains("Behind By:"), "{text}");
}

#[test]
fn a_changeover_between_hosts_keeps_every_write_of_a_writer_through_database_url() {
    let h = Hosts::start(&["h2", "h3"], &[]);
    let s = &h.server;
    s.cli(&["apps:create", "sushi"]).ok();
    add_database(s, "sushi", "standard-0");
    add_follower(s, "sushi", "standard-0", "WHITE");
    wait_available(s, "sushi");
    let app_url = config_get(s, "sushi", "DATABASE_URL");
    psql_url(&app_url, "create table w (id bigint primary key)").ok();
    let writer = Writer::start(&app_url, "w", Duration::from_secs(120));
    writer.warm_up();
    s.cli(&["pg:changeover", "CHARCOAL", "--app", "sushi"]).ok();
    writer.warm_up();
    let report = writer.finish();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert!(
        report.acked.len() > 10,
        "the writer wrote: {}",
        report.acked.len()
    );
    let new_url = config_get(s, "sushi", "PGFOLLOW_POSTGRESQL_CHARCOAL_URL");
    let have = ids(&new_url, "w");
    let lost: Vec<_> = report.acked.iter().filter(|i| !have.contains(i)).collect();
    assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");
    let main = s
        .cli(&["pg:info", "DATABASE", "--app", "sushi", "--json"])
        .ok()
        .json();
    assert_eq!(main["color"], "CHARCOAL", "{main}");
}

/// `host:port` of each endpoint a multi-host `DATABASE_URL` lists.
pub(crate) fn listed(url: &str) -> Vec<String> {
    let rest = url.split('@').nth(1).unwrap();
    rest.split('/')
        .next()
        .unwrap()
        .split(',')
        .map(str::to_string)
        .collect()
}

/// `url` pointing at one `host:port` of its list only.
pub(crate) fn only(url: &str, host_port: &str) -> String {
    let (head, rest) = url.split_once('@').unwrap();
    let tail = &rest[rest.find('/').unwrap()..];
    format!("{head}@{host_port}{}", tail.split('?').next().unwrap())
}

/// Which database answers at `url`: its host's address and port.
fn who(url: &str) -> String {
    psql_url(
        url,
        "select inet_server_addr()::text || ':' || inet_server_port()",
    )
    .ok()
    .stdout
    .trim()
    .replace("/32", "")
}

#[test]
fn the_app_endpoint_runs_on_two_hosts_and_a_changeover_retargets_both() {
    let h = Hosts::start(&["h2", "h3"], &[]);
    let s = &h.server;
    s.cli(&["apps:create", "sushi"]).ok();
    add_database(s, "sushi", "standard-0");
    let app_url = config_get(s, "sushi", "DATABASE_URL");
    let eps = listed(&app_url);
    assert_eq!(eps.len(), 2, "{app_url}");
    assert!(
        eps[0].starts_with(&format!("{}:", h.cp.address)),
        "{app_url}"
    );
    assert!(
        !eps[1].starts_with(&format!("{}:", h.cp.address)),
        "{app_url}"
    );
    assert!(
        app_url.contains("target_session_attrs=read-write"),
        "{app_url}"
    );
    let leader = who(&config_get(s, "sushi", "PGFOLLOW_POSTGRESQL_WHITE_URL"));
    for ep in &eps {
        assert_eq!(
            who(&only(&app_url, ep)),
            leader,
            "endpoint {ep} routes to WHITE"
        );
    }

    // A changeover retargets both.
    add_follower(s, "sushi", "standard-0", "WHITE");
    wait_available(s, "sushi");
    psql_url(&app_url, "create table t (id int)").ok();
    s.cli(&["pg:changeover", "CHARCOAL", "--app", "sushi"]).ok();
    let promoted = who(&config_get(s, "sushi", "PGFOLLOW_POSTGRESQL_CHARCOAL_URL"));
    assert_ne!(promoted, leader);
    for ep in &eps {
        assert_eq!(
            who(&only(&app_url, ep)),
            promoted,
            "endpoint {ep} routes to CHARCOAL"
        );
    }

    // The second endpoint carries writes, and a Rust client takes the
    // multi-host URL (ha_partitions cuts the first endpoint's host off).
    let second = only(&app_url, &eps[1]);
    psql_url(&second, "insert into t values (1)").ok();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let n: i64 = rt.block_on(async {
        let connect = tokio_postgres::connect(&app_url, tokio_postgres::NoTls);
        let (c, conn) = tokio::time::timeout(Duration::from_secs(30), connect)
            .await
            .expect("tokio-postgres connects within 30 s")
            .expect("tokio-postgres takes the multi-host DATABASE_URL");
        tokio::spawn(conn);
        c.execute("insert into t values (2)", &[]).await.unwrap();
        c.query_one("select count(*) from t", &[])
            .await
            .unwrap()
            .get(0)
    });
    assert_eq!(n, 2);
}
