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

    pub fn agent(&mut self, name: &str) -> &mut AgentProcess {
        self.agents
            .iter_mut()
            .find(|a| a.name == name)
            .unwrap_or_else(|| panic!("no agent {name}"))
    }
}

/// The host part of a postgres URL.
pub(crate) fn url_host(url: &str) -> String {
    let rest = url.split('@').nth(1).unwrap_or(url);
    rest.split([':', '/']).next().unwrap_or_default().to_string()
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
    assert!(report.acked.len() > 10, "the writer wrote: {}", report.acked.len());
    let new_url = config_get(s, "sushi", "PGFOLLOW_POSTGRESQL_CHARCOAL_URL");
    let have = ids(&new_url, "w");
    let lost: Vec<_> = report.acked.iter().filter(|i| !have.contains(i)).collect();
    assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");
    let main = s.cli(&["pg:info", "DATABASE", "--app", "sushi", "--json"]).ok().json();
    assert_eq!(main["color"], "CHARCOAL", "{main}");
}
