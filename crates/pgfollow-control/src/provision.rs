//! Adding a database to the state: names, port, secrets, attachments, the
//! billing record and its provision operation, all in one catalog write.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use pgfollow_types::agent::{ClusterSpec, PgSettings, RoleSecret, Upstream};
use pgfollow_types::api::DatabaseState;
use pgfollow_types::model::{
    AppRecord, BillingRecord, DatabaseRecord, Desired, HostRecord, OperationKind, OperationRecord,
    State, ENDPOINTS_PER_APP,
};
use pgfollow_types::{Color, Plan};
use rand::Rng;

use crate::error::ApiErr;
use crate::views::MAIN_ATTACHMENT;

/// A random secret of 128 bits, as 32 hex digits.
pub fn secret() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

/// A role or database name: a letter and 14 hex digits.
fn identifier(prefix: char) -> String {
    format!("{prefix}{}", &hex::encode(rand::random::<[u8; 7]>()))
}

const ADJECTIVES: &[&str] = &[
    "amber", "brisk", "calm", "clear", "curved", "deep", "eager", "fair", "fluid", "gentle",
    "quiet", "rapid", "round", "shiny", "silent", "solid", "steady", "swift", "tidy", "vast",
];

fn addon_name(state: &State) -> String {
    let mut rng = rand::thread_rng();
    loop {
        let adj = ADJECTIVES[rng.gen_range(0..ADJECTIVES.len())];
        let name = format!("postgresql-{adj}-{:05}", rng.gen_range(0..100_000));
        if !state.databases.values().any(|d| d.name == name) {
            return name;
        }
    }
}

/// Free ports that each host's agent offered (`OfferPorts`), by host name:
/// the agent of a host owns its ports; the control plane only picks among
/// what it was offered, never tests a port on its own machine.
#[derive(Debug, Clone, Default)]
pub struct PortOffers(pub BTreeMap<String, Vec<u16>>);

/// Ports a provision asks each host for: a database, its standby and an
/// endpoint may land on one host in one change.
pub const OFFERS_PER_HOST: u16 = 4;

/// The first port `host`'s agent offered that no database or endpoint in
/// the state uses at that host's address (hosts that share an address, as
/// agents on one machine do, share its ports).
pub fn pick_port(state: &State, offers: &PortOffers, host: &str) -> Result<u16, ApiErr> {
    let address = host_address(state, host);
    let here = |h: &str| h == host || host_address(state, h) == address;
    let used = |port: u16| {
        state
            .databases
            .values()
            .any(|d| d.port == port && here(&d.host))
            || state.apps.values().any(|a| {
                a.endpoints.iter().any(|e| e.port == port && here(&e.host))
                    || a.read
                        .places
                        .iter()
                        .any(|r| r.port == port && here(&r.host))
            })
    };
    offers
        .0
        .get(host)
        .into_iter()
        .flatten()
        .copied()
        .find(|p| !used(*p))
        .ok_or_else(|| {
            ApiErr::unavailable(format!(
                "host {host} offered no free port (its agent did not answer, or its port range is used up); destroy unused databases there or restart its agent with a wider --pg-ports"
            ))
        })
}

/// The major version of a new leader when none is asked for: the newest
/// that every host whose agent is up has; when they share none, the newest
/// any of them has.
pub fn default_major(state: &State, is_up: &dyn Fn(&str) -> bool) -> Option<u32> {
    let up: Vec<&HostRecord> = state.hosts.values().filter(|h| is_up(&h.name)).collect();
    pgfollow_types::model::newest_common_major(up.iter().copied())
        .or_else(|| up.iter().flat_map(|h| h.installs()).map(|i| i.major).max())
}

/// The major version a new database runs: a follower's is its leader's
/// (another one is refused); a leader's is `asked` or [`default_major`].
pub fn choose_major(
    state: &State,
    leader: Option<&DatabaseRecord>,
    asked: Option<u32>,
    is_up: &dyn Fn(&str) -> bool,
) -> Result<u32, ApiErr> {
    let installed = |m: u32| state.hosts.values().any(|h| h.has_major(m));
    if let Some(l) = leader {
        return match asked {
            Some(m) if m < l.pg_major => Err(ApiErr::bad_request(format!(
                "{} runs PostgreSQL {} and a follower runs its leader's major version or, as a logical follower, a newer one; drop --version {m}",
                l.color, l.pg_major
            ))),
            Some(m) if m > l.pg_major && !installed(m) => Err(ApiErr::bad_request(format!(
                "no host has PostgreSQL {m} (installed: {}); install it and restart the agent, or pick another --version",
                installed_majors(state)
            ))),
            Some(m) if m > l.pg_major && l.plan.tier.has_ha() => Err(ApiErr::bad_request(format!(
                "{} is on an HA plan ({}): a logical follower on PostgreSQL {m} is not supported there yet, as a failover would not carry its replication slot; drop --version {m}, or use pg:upgrade",
                l.color, l.plan.name
            ))),
            // A newer major: a logical follower (publication and subscription).
            Some(m) => Ok(m),
            None => Ok(l.pg_major),
        };
    }
    match asked {
        Some(m) if !installed(m) => Err(ApiErr::bad_request(format!(
            "no host has PostgreSQL {m} (installed: {}); install it and restart the agent, or pick another --version",
            installed_majors(state)
        ))),
        Some(m) => Ok(m),
        None => default_major(state, is_up).ok_or_else(|| {
            ApiErr::unavailable(
                "no host with a running agent can take the database; start `pgfollow agent` on one",
            )
        }),
    }
}

/// `18, 15`: every major some host has, newest first.
fn installed_majors(state: &State) -> String {
    let mut majors: Vec<u32> = state
        .hosts
        .values()
        .flat_map(|h| h.installs())
        .map(|i| i.major)
        .collect();
    majors.sort_unstable_by_key(|m| std::cmp::Reverse(*m));
    majors.dedup();
    majors
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Where a new database goes: for a follower, a host other than its
/// leader's (in another zone when zones are set) whenever one exists; else
/// the host with the fewest databases. A follower needs a host with its
/// leader's major version.
pub fn choose_host(
    state: &State,
    leader: Option<&DatabaseRecord>,
    is_up: &dyn Fn(&str) -> bool,
) -> Result<HostRecord, ApiErr> {
    choose_host_for(state, leader, leader.map(|l| l.pg_major), is_up)
}

/// [`choose_host`] among the hosts that have PostgreSQL `major` (any host
/// when none).
pub fn choose_host_for(
    state: &State,
    leader: Option<&DatabaseRecord>,
    major: Option<u32>,
    is_up: &dyn Fn(&str) -> bool,
) -> Result<HostRecord, ApiErr> {
    if let (Some(l), Some(m)) = (leader, major) {
        if !state.hosts.values().any(|h| h.has_major(m)) {
            return Err(ApiErr::bad_request(format!(
                "{} runs PostgreSQL {m} and no host has that major version; a follower must run its leader's major version",
                l.color
            )));
        }
    }
    if let Some(m) = major {
        let with_major: Vec<&str> = state
            .hosts
            .values()
            .filter(|h| h.has_major(m))
            .map(|h| h.name.as_str())
            .collect();
        if !with_major.is_empty() && !with_major.iter().any(|h| is_up(h)) {
            return Err(ApiErr::unavailable(format!(
                "no host with PostgreSQL {m} is up ({} has it but its agent does not answer); start its agent, or install PostgreSQL {m} on a running host",
                with_major.join(", ")
            )));
        }
    }
    let load = |h: &HostRecord| {
        state
            .databases
            .values()
            .filter(|d| d.is_live() && d.host == h.name)
            .count()
    };
    let leader_host = leader.and_then(|l| state.hosts.get(&l.host));
    let rank = |h: &HostRecord| {
        let same_host = leader_host.is_some_and(|lh| lh.name == h.name);
        let same_zone = leader_host.is_some_and(|lh| lh.zone.is_some() && lh.zone == h.zone);
        (same_host, same_zone, load(h), h.name.clone())
    };
    state
        .hosts
        .values()
        .filter(|h| is_up(&h.name))
        .filter(|h| major.is_none_or(|m| h.has_major(m)))
        .min_by_key(|h| rank(h))
        .cloned()
        .ok_or_else(|| {
            ApiErr::unavailable(
                "no host with a running agent can take the database; start `pgfollow agent` on one",
            )
        })
}

/// What `add_database` needs besides the state.
pub struct NewDatabase<'a> {
    pub app: &'a str,
    pub plan: &'a Plan,
    pub host: &'a HostRecord,
    /// The free ports the hosts' agents offered.
    pub ports: &'a PortOffers,
    pub now: DateTime<Utc>,
    /// The database the new one follows, for a follower.
    pub leader: Option<&'a DatabaseRecord>,
    /// Commits wait for the HA standby (`--sync`), whatever the plan says.
    pub sync: bool,
    /// An HA standby of `leader`: attached to no app, not billed apart.
    pub hidden: bool,
}

/// Adds a database, its attachments, its billing record and its provision
/// operation. Returns (database id, operation id). It runs its leader's
/// major version, else its host's newest.
pub fn add_database(state: &mut State, new: &NewDatabase<'_>) -> Result<(String, String), ApiErr> {
    add_database_of_major(state, new, None)
}

/// [`add_database`] running PostgreSQL `major` (a follower's is always its
/// leader's).
pub fn add_database_of_major(
    state: &mut State,
    new: &NewDatabase<'_>,
    major: Option<u32>,
) -> Result<(String, String), ApiErr> {
    let app = crate::resolve::find_app(state, new.app)?.clone();
    let taken: Vec<Color> = state
        .databases
        .values()
        .filter(|d| d.app == app.name && !d.hidden)
        .map(|d| d.color.clone())
        .collect();
    // An HA standby is invisible: it carries its primary's colour.
    let color = match new.leader.filter(|_| new.hidden) {
        Some(l) => l.color.clone(),
        None => Color::first_free(&taken).ok_or_else(|| {
            ApiErr::conflict(format!(
                "app {} has a database of every colour; destroy one first",
                app.name
            ))
        })?,
    };
    let port = pick_port(state, new.ports, &new.host.name)?;
    state.next_serial += 1;
    let serial = state.next_serial;
    let id = format!("db-{serial:06}-{}", &hex::encode(rand::random::<[u8; 2]>()));
    let op_id = format!("op-{serial:06}-{}", &hex::encode(rand::random::<[u8; 2]>()));
    let db = DatabaseRecord {
        id: id.clone(),
        name: addon_name(state),
        app: app.name.clone(),
        color: color.clone(),
        plan: new.plan.clone(),
        host: new.host.name.clone(),
        port,
        // A follower is a physical copy: its roles and database are the
        // leader's.
        database: new
            .leader
            .map_or_else(|| identifier('d'), |l| l.database.clone()),
        owner: new.leader.map_or_else(
            || RoleSecret {
                name: identifier('u'),
                password: secret(),
            },
            |l| l.owner.clone(),
        ),
        replication: new.leader.map_or_else(
            || RoleSecret {
                name: identifier('r'),
                password: secret(),
            },
            |l| l.replication.clone(),
        ),
        pg_major: major
            .or(new.leader.map(|l| l.pg_major))
            .unwrap_or(new.host.pg_major),
        created_at: new.now,
        desired: Desired::Running,
        state: DatabaseState::Preparing,
        status_detail: None,
        pg_version: None,
        following: new.leader.map(|l| l.id.clone()),
        fork_pending: false,
        ha_standby: None,
        hidden: false,
        sync: new.plan.synchronous_standby || new.sync,
        sync_applied: None,
        sync_strict: new.plan.synchronous_strict,
        sync_suspended: false,
        standby_lag: None,
        timeline: None,
        pending_owner: None,
        ha_released: false,
        // A follower on another major than its leader's can only follow
        // logically.
        logical: new.leader.zip(major).is_some_and(|(l, m)| l.pg_major != m),
    };
    let mut db = db;
    db.hidden = new.hidden;
    // In the state first, so that the endpoint's port is picked around it.
    state.databases.insert(id.clone(), db.clone());
    if new.hidden {
        if let Some(l) = new.leader.and_then(|l| state.databases.get_mut(&l.id)) {
            l.ha_standby = Some(id.clone());
        }
    } else {
        attach_and_bill(state, &app, &db, new)?;
    }
    state.operations.insert(
        op_id.clone(),
        new_operation(&op_id, OperationKind::Provision, &id, new.now),
    );
    Ok((id, op_id))
}

/// Attaches a new database to its app (its colour var, and `DATABASE_URL`
/// when the app has none, with an endpoint) and starts its bill.
fn attach_and_bill(
    state: &mut State,
    app: &pgfollow_types::model::AppRecord,
    db: &DatabaseRecord,
    new: &NewDatabase<'_>,
) -> Result<(), ApiErr> {
    let (id, color) = (db.id.clone(), db.color.clone());
    state.billing.push(BillingRecord {
        app: app.name.clone(),
        database: db.name.clone(),
        color: color.clone(),
        plan: new.plan.name.clone(),
        price_per_month: new.plan.price_per_month,
        started_at: new.now,
        ended_at: None,
    });
    let app_rec = state
        .apps
        .get_mut(app.name.as_str())
        .ok_or_else(|| ApiErr::internal("app vanished"))?;
    app_rec.attachments.insert(
        format!("{}{}", pgfollow_types::names::COLOR_VAR_PREFIX, color),
        id.clone(),
    );
    let needs_endpoint =
        !app_rec.attachments.contains_key(MAIN_ATTACHMENT) && !app_rec.has_endpoint();
    if !app_rec.attachments.contains_key(MAIN_ATTACHMENT) {
        app_rec
            .attachments
            .insert(MAIN_ATTACHMENT.to_string(), id.clone());
    }
    if needs_endpoint {
        add_endpoints(state, app.name.as_str(), new.ports)?;
    }
    Ok(())
}

/// The hosts `app`'s new endpoints may go to, best first: among the hosts
/// that offered ports and have none of its endpoints, the control plane's
/// own host first (where an app's endpoint has always been), then the
/// hosts with the fewest endpoints.
pub fn endpoint_hosts(state: &State, app: &AppRecord, offers: &PortOffers) -> Vec<String> {
    let load = |h: &str| {
        state
            .apps
            .values()
            .flat_map(|a| &a.endpoints)
            .filter(|e| e.host == h)
            .count()
    };
    let mut hosts: Vec<&String> = offers
        .0
        .iter()
        .filter(|(h, ports)| !ports.is_empty() && app.endpoint_on(h).is_none())
        .map(|(h, _)| h)
        .collect();
    hosts.sort_by_key(|h| {
        (
            h.as_str() != crate::server::LOCAL_HOST,
            load(h),
            h.to_string(),
        )
    });
    hosts.into_iter().cloned().collect()
}

/// Gives `app` the endpoints it lacks, up to [`ENDPOINTS_PER_APP`], on the
/// best hosts (see [`endpoint_hosts`]) that still have an offered port: a
/// port on each, and a directory name. Answers how many were added; an app
/// left with none is an error.
pub fn add_endpoints(state: &mut State, app: &str, offers: &PortOffers) -> Result<usize, ApiErr> {
    let Some(rec) = state.apps.get(app) else {
        return Ok(0);
    };
    let want = ENDPOINTS_PER_APP.saturating_sub(rec.endpoints.len());
    let mut added = 0;
    for host in endpoint_hosts(state, rec, offers) {
        if added >= want {
            break;
        }
        let Ok(port) = pick_port(state, offers, &host) else {
            continue;
        };
        if let Some(a) = state.apps.get_mut(app) {
            a.endpoints.push(pgfollow_types::model::EndpointRecord {
                id: format!("ep-{app}"),
                host,
                port,
                applied: None,
                held_by: None,
            });
            added += 1;
        }
    }
    if state.apps.get(app).is_some_and(|a| a.endpoints.is_empty()) {
        return Err(ApiErr::unavailable(format!(
            "no host offered a free port for the endpoint of {app}; start an agent, or restart one with a wider --pg-ports"
        )));
    }
    Ok(added)
}

/// Gives `app`'s read endpoint (`DATABASE_FOLLOWER_URL`) a place on the
/// host of each of its endpoints that lacks one (see
/// [`crate::reads::layout`]): a port that host offered. Answers how many
/// it was given now; a host that offered no free port gets its place later.
pub fn add_read_places(state: &mut State, app: &str, offers: &PortOffers) -> Result<usize, ApiErr> {
    let Some(rec) = state.apps.get(app) else {
        return Ok(0);
    };
    let hosts: Vec<String> = rec.endpoints.iter().map(|e| e.host.clone()).collect();
    let (missing, _) = crate::reads::layout(&hosts, &rec.read.places);
    let mut added = 0;
    let mut last_err = None;
    for host in missing {
        match pick_port(state, offers, &host) {
            Ok(port) => {
                if let Some(a) = state.apps.get_mut(app) {
                    a.read.places.push(pgfollow_types::reads::ReadPlace {
                        host,
                        port,
                        applied: Default::default(),
                    });
                    added += 1;
                }
            }
            Err(e) => last_err = Some(e),
        }
    }
    match (added, last_err) {
        (0, Some(e)) => Err(e),
        _ => Ok(added),
    }
}

pub fn new_operation(
    id: &str,
    kind: OperationKind,
    database: &str,
    now: DateTime<Utc>,
) -> OperationRecord {
    OperationRecord::new(id, kind, database, now)
}

/// A fresh operation id (`op-000042-3f9a`), never used before.
pub fn next_operation_id(state: &mut State) -> String {
    state.next_serial += 1;
    format!(
        "op-{:06}-{}",
        state.next_serial,
        hex::encode(rand::random::<[u8; 2]>())
    )
}

/// Marks a database for removal: detaches it everywhere, stops its bill,
/// cancels other operations on it and adds a destroy operation.
pub fn remove_database(state: &mut State, id: &str, now: DateTime<Utc>) -> Result<String, ApiErr> {
    let db = state
        .databases
        .get_mut(id)
        .ok_or_else(|| ApiErr::not_found("no such database"))?;
    db.desired = Desired::Absent;
    db.state = DatabaseState::Deprovisioning;
    let name = db.name.clone();
    for app in state.apps.values_mut() {
        app.attachments.retain(|_, d| d != id);
    }
    for b in state.billing.iter_mut() {
        if b.database == name && b.ended_at.is_none() {
            b.ended_at = Some(now);
        }
    }
    state.next_serial += 1;
    let op_id = format!(
        "op-{:06}-{}",
        state.next_serial,
        &hex::encode(rand::random::<[u8; 2]>())
    );
    state.operations.insert(
        op_id.clone(),
        new_operation(&op_id, OperationKind::Destroy, id, now),
    );
    Ok(op_id)
}

/// The standby whose confirmation `db`'s commits wait for: its HA
/// standby, when `db` is in sync mode and the standby has caught up (until
/// then commits do not wait, or they would hang).
pub fn synchronous_standby(state: &State, db: &DatabaseRecord) -> Option<String> {
    if !db.sync || db.sync_suspended || db.is_follower() {
        return None;
    }
    db.ha_standby
        .as_ref()
        .and_then(|id| state.databases.get(id))
        .filter(|s| s.is_live() && s.state == DatabaseState::Available)
        .map(|s| s.id.clone())
}

/// The address of `host`'s databases.
pub fn host_address(state: &State, host: &str) -> String {
    state
        .hosts
        .get(host)
        .map(|h| h.address.clone())
        .unwrap_or_else(|| "127.0.0.1".to_string())
}

/// The cluster the agent should make of `db`.
pub fn cluster_spec(state: &State, db: &DatabaseRecord) -> ClusterSpec {
    let listen_address = host_address(state, &db.host);
    let upstream = db
        .following
        .as_ref()
        .and_then(|id| state.databases.get(id))
        // A logical follower runs as a primary: it subscribes instead.
        .filter(|_| !db.logical)
        .map(|leader| Upstream {
            host: host_address(state, &leader.host),
            port: leader.port,
            user: leader.replication.name.clone(),
            password: leader.replication.password.clone(),
            slot: db.slot_name(),
            application_name: db.id.clone(),
        });
    ClusterSpec {
        id: db.id.clone(),
        port: db.port,
        listen_address,
        settings: PgSettings::for_plan(&db.plan),
        database: db.database.clone(),
        owner: db.owner.clone(),
        replication: db.replication.clone(),
        upstream,
        synchronous_standby: synchronous_standby(state, db),
        pg_major: Some(db.pg_major),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_have_128_bits() {
        let s = secret();
        assert_eq!(s.len(), 32);
        assert!(s.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(s, secret());
    }

    #[test]
    fn identifiers_are_safe_sql_names() {
        let u = identifier('u');
        assert_eq!(u.len(), 15);
        assert!(u.starts_with('u'));
        assert!(u[1..].chars().all(|c| c.is_ascii_hexdigit()));
    }

    fn offers(ports: &[(&str, &[u16])]) -> PortOffers {
        PortOffers(
            ports
                .iter()
                .map(|(h, p)| (h.to_string(), p.to_vec()))
                .collect(),
        )
    }

    #[test]
    fn a_port_is_picked_from_its_hosts_offers_and_not_used_there() {
        let a = host("a", None, 15);
        let mut state = state_with(&[a.clone(), host("b", None, 15)]);
        let o = offers(&[("a", &[40000, 40001]), ("b", &[40000])]);
        assert_eq!(pick_port(&state, &o, "a").unwrap(), 40000);
        let d = leader_on_with(&mut state, &a, &o);
        assert_eq!(d.port, 40000);
        // The leader took 40000 on a; the app's endpoints went to the
        // control plane's host and to a, the first of the others.
        let eps: Vec<(String, u16)> = state.apps["sushi"]
            .endpoints
            .iter()
            .map(|e| (e.host.clone(), e.port))
            .collect();
        assert_eq!(eps, [(LOCAL.to_string(), 41000), ("a".to_string(), 40001)]);
        assert!(pick_port(&state, &o, "a").is_err());
        // Another host on the same address may not use the same number;
        // one with an address of its own may.
        assert_eq!(pick_port(&state, &o, "b").unwrap_err().status.as_u16(), 503);
        state.hosts.get_mut("b").unwrap().address = "10.231.0.3".into();
        assert_eq!(pick_port(&state, &o, "b").unwrap(), 40000);
        let e = pick_port(&state, &o, "c").unwrap_err();
        assert!(e.message.contains("host c offered no free port"), "{e}");
    }

    fn host(name: &str, zone: Option<&str>, major: u32) -> HostRecord {
        HostRecord {
            name: name.into(),
            zone: zone.map(str::to_string),
            address: "127.0.0.1".into(),
            pg_bin: "/usr/lib/postgresql/15/bin".into(),
            pg_major: major,
            pg_version: format!("{major}.1"),
            agent_url: None,
            majors: Vec::new(),
        }
    }

    fn state_with(hosts: &[HostRecord]) -> State {
        let mut s = State::default();
        for h in hosts {
            s.hosts.insert(h.name.clone(), h.clone());
        }
        s.apps.insert(
            "sushi".into(),
            pgfollow_types::model::AppRecord {
                name: pgfollow_types::AppName::parse("sushi").unwrap(),
                created_at: Utc::now(),
                config: Default::default(),
                attachments: Default::default(),
                endpoints: Vec::new(),
                maintenance: false,
                pool_mode: Default::default(),
                read: Default::default(),
            },
        );
        s
    }

    fn leader_on(state: &mut State, host: &HostRecord) -> DatabaseRecord {
        let o = offers(&[(&host.name, &[40000, 40001, 40002]), (LOCAL, &[41000])]);
        leader_on_with(state, host, &o)
    }

    const LOCAL: &str = crate::server::LOCAL_HOST;

    fn leader_on_with(state: &mut State, host: &HostRecord, o: &PortOffers) -> DatabaseRecord {
        let plan = pgfollow_types::plan::builtin_plans()[2].clone();
        let mut o = o.clone();
        o.0.entry(LOCAL.to_string()).or_insert_with(|| vec![41000]);
        let (id, _) = add_database(
            state,
            &NewDatabase {
                app: "sushi",
                plan: &plan,
                host,
                ports: &o,
                now: Utc::now(),
                leader: None,
                sync: false,
                hidden: false,
            },
        )
        .unwrap();
        state.databases[&id].clone()
    }

    #[test]
    fn a_follower_goes_to_another_host_and_zone_when_there_is_one() {
        let all_up = |_: &str| true;
        let (a, b, c) = (
            host("a", Some("z1"), 15),
            host("b", Some("z1"), 15),
            host("c", Some("z2"), 15),
        );
        let mut state = state_with(&[a.clone(), b.clone(), c.clone()]);
        let leader = leader_on(&mut state, &a);
        assert_eq!(
            choose_host(&state, Some(&leader), &all_up).unwrap().name,
            "c"
        );
        // Without another zone, another host.
        let mut state = state_with(&[a.clone(), b.clone()]);
        let leader = leader_on(&mut state, &a);
        assert_eq!(
            choose_host(&state, Some(&leader), &all_up).unwrap().name,
            "b"
        );
        // A host that is down takes nothing; with one host left, it is used.
        let only_a = |h: &str| h == "a";
        assert_eq!(
            choose_host(&state, Some(&leader), &only_a).unwrap().name,
            "a"
        );
        assert!(choose_host(&state, Some(&leader), &|_| false).is_err());
    }

    #[test]
    fn a_follower_needs_a_host_of_its_leaders_major_version() {
        let (a, b) = (host("a", None, 15), host("b", None, 16));
        let mut state = state_with(&[a.clone(), b]);
        let leader = leader_on(&mut state, &a);
        assert_eq!(
            choose_host(&state, Some(&leader), &|_| true).unwrap().name,
            "a"
        );
        let mut other = state_with(&[host("b", None, 16)]);
        let mut l = leader.clone();
        l.pg_major = 15;
        other.databases.insert(l.id.clone(), l.clone());
        let e = choose_host(&other, Some(&l), &|_| true).unwrap_err();
        assert!(e.message.contains("major version"), "{e}");
    }

    fn host_with(name: &str, majors: &[u32]) -> HostRecord {
        let mut h = host(name, None, majors[0]);
        h.majors = majors
            .iter()
            .map(|m| pgfollow_types::model::PgInstall {
                major: *m,
                version: format!("{m}.1"),
                bin: format!("/pg/{m}/bin"),
            })
            .collect();
        h
    }

    #[test]
    fn the_default_major_is_the_newest_every_up_host_has() {
        let state = state_with(&[host_with("a", &[18, 15]), host_with("b", &[15])]);
        assert_eq!(default_major(&state, &|_| true), Some(15));
        assert_eq!(default_major(&state, &|h| h == "a"), Some(18));
        let disjoint = state_with(&[host_with("a", &[18]), host_with("b", &[15])]);
        assert_eq!(default_major(&disjoint, &|_| true), Some(18));
        assert_eq!(default_major(&disjoint, &|_| false), None);
    }

    #[test]
    fn a_leader_of_a_major_goes_to_a_host_that_has_it() {
        let mut state = state_with(&[host_with("a", &[18, 15]), host_with("b", &[15])]);
        // b is emptier, but only a has 18.
        let a = state.hosts["a"].clone();
        leader_on(&mut state, &a);
        assert_eq!(
            choose_host_for(&state, None, Some(18), &|_| true)
                .unwrap()
                .name,
            "a"
        );
        assert_eq!(
            choose_host_for(&state, None, Some(15), &|_| true)
                .unwrap()
                .name,
            "b"
        );
        assert_eq!(choose_major(&state, None, Some(18), &|_| true).unwrap(), 18);
        let e = choose_major(&state, None, Some(17), &|_| true).unwrap_err();
        assert!(
            e.message
                .contains("no host has PostgreSQL 17 (installed: 18, 15)"),
            "{e}"
        );
        let e = choose_host_for(&state, None, Some(18), &|h| h == "b").unwrap_err();
        assert!(
            e.message
                .contains("no host with PostgreSQL 18 is up (a has it"),
            "{e}"
        );
    }

    #[test]
    fn a_follower_has_its_leaders_major() {
        let mut state = state_with(&[host_with("a", &[18, 15]), host_with("b", &[15])]);
        let a = state.hosts["a"].clone();
        let (id, _) = add_database_of_major(
            &mut state,
            &NewDatabase {
                app: "sushi",
                plan: &pgfollow_types::plan::builtin_plans()[2].clone(),
                host: &a,
                ports: &offers(&[("a", &[40000]), (LOCAL, &[41000])]),
                now: Utc::now(),
                leader: None,
                sync: false,
                hidden: false,
            },
            Some(18),
        )
        .unwrap();
        let leader = state.databases[&id].clone();
        assert_eq!(leader.pg_major, 18);
        assert_eq!(
            choose_major(&state, Some(&leader), None, &|_| true).unwrap(),
            18
        );
        let e = choose_major(&state, Some(&leader), Some(15), &|_| true).unwrap_err();
        assert!(e.message.contains("runs PostgreSQL 18"), "{e}");
        // b (another host, usually preferred) has no 18: the follower stays on a.
        assert_eq!(
            choose_host(&state, Some(&leader), &|_| true).unwrap().name,
            "a"
        );
        assert_eq!(cluster_spec(&state, &leader).pg_major, Some(18));
    }

    #[test]
    fn a_newer_major_makes_a_logical_follower_except_of_an_ha_leader() {
        use pgfollow_types::plan::{builtin_plans, Tier};
        let mut state = state_with(&[host_with("a", &[18, 15])]);
        let a = state.hosts["a"].clone();
        let plans = builtin_plans();
        let standard = plans.iter().find(|p| p.tier == Tier::Standard).unwrap();
        let premium = plans.iter().find(|p| p.tier == Tier::Premium).unwrap();
        let ports = offers(&[
            ("a", &[40000, 40001, 40002, 40003, 40004, 40005]),
            (LOCAL, &[41000, 41001]),
        ]);
        let new = |plan, leader| NewDatabase {
            app: "sushi",
            plan,
            host: &a,
            ports: &ports,
            now: Utc::now(),
            leader,
            sync: false,
            hidden: false,
        };
        let (id, _) = add_database_of_major(&mut state, &new(standard, None), Some(15)).unwrap();
        let leader = state.databases[&id].clone();
        assert_eq!(
            choose_major(&state, Some(&leader), Some(18), &|_| true).unwrap(),
            18
        );
        let (f, _) =
            add_database_of_major(&mut state, &new(standard, Some(&leader)), Some(18)).unwrap();
        let f = state.databases[&f].clone();
        assert!(f.logical && f.is_logical_follower() && f.pg_major == 18);
        // It runs as a primary: it subscribes, it does not stream WAL.
        assert!(cluster_spec(&state, &f).upstream.is_none());
        // Its leader's major: physical, as always.
        let (p, _) =
            add_database_of_major(&mut state, &new(standard, Some(&leader)), Some(15)).unwrap();
        assert!(!state.databases[&p].logical);
        assert!(cluster_spec(&state, &state.databases[&p])
            .upstream
            .is_some());
        let mut ha = leader.clone();
        ha.plan = premium.clone();
        let e = choose_major(&state, Some(&ha), Some(18), &|_| true).unwrap_err();
        assert!(e.message.contains("on an HA plan"), "{e}");
    }

    #[test]
    fn leaders_spread_over_the_least_loaded_hosts() {
        let (a, b) = (host("a", None, 15), host("b", None, 15));
        let mut state = state_with(&[a.clone(), b]);
        leader_on(&mut state, &a);
        assert_eq!(choose_host(&state, None, &|_| true).unwrap().name, "b");
    }

    #[test]
    fn the_endpoint_and_the_database_never_share_a_port() {
        let a = host("a", None, 15);
        let plan = pgfollow_types::plan::builtin_plans()[2].clone();
        // The control plane's host runs both, and offered the same two
        // ports for each: they must take one each.
        let mut a = a;
        a.name = LOCAL.to_string();
        let mut state = state_with(std::slice::from_ref(&a));
        let o = offers(&[(LOCAL, &[40000, 40001])]);
        let new = NewDatabase {
            app: "sushi",
            plan: &plan,
            host: &a,
            ports: &o,
            now: Utc::now(),
            leader: None,
            sync: false,
            hidden: false,
        };
        let (id, _) = add_database(&mut state, &new).unwrap();
        let ep = state.apps["sushi"].endpoints[0].clone();
        assert_eq!((state.databases[&id].port, ep.port), (40000, 40001));
    }
}
