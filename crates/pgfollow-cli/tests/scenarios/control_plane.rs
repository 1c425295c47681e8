//! The control plane on etcd: two `serve --etcd` replicas on a three-member
//! etcd cluster and one `pgfollow agent`. Writes sent to the replica that
//! does not lead reach the leader; a leader killed in the middle of adding
//! a follower is replaced within the lease's TTL and the follower is
//! finished; its agent never fences its primary meanwhile; the CLI given
//! both replicas passes over a dead one; losing one etcd member changes
//! nothing. A frozen leader is replaced and steps down when it wakes; a
//! leader stopped in order hands the lease over at once.

use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use pgfollow_testkit::{AgentProcess, EtcdCluster};

use crate::common::*;

/// The leader lease's TTL the replicas run with (the default).
const TTL: Duration = Duration::from_secs(2);

fn replica(etcd: &EtcdCluster, name: &str, env: &[(&str, &str)]) -> Server {
    let urls = etcd.endpoints_arg();
    Server::start_with_env(bin(), &["--etcd", &urls, "--name", name], env)
        .expect("serve --etcd starts")
}

fn leads(s: &Server, name: &str) -> bool {
    s.log()
        .contains(&format!("control plane replica {name} leads"))
}

#[test]
fn cp_two_replicas_survive_the_leaders_death_mid_operation() {
    let mut etcd = EtcdCluster::start().unwrap();
    // a leads (it starts first) and dies right after the follower's base
    // backup is recorded, as abruptly as SIGKILL.
    let mut a = replica(
        &etcd,
        "a",
        &[("PGFOLLOW_CRASH_AFTER", "provision:base-backup")],
    );
    eventually(Duration::from_secs(10), "a leads", || leads(&a, "a"));
    let b = replica(&etcd, "b", &[]);
    assert_eq!(a.token(), b.token(), "the replicas share one API token");
    let both = format!("{},{}", a.url, b.url);
    let agent = AgentProcess::start_with_control(bin(), &both, &b.token(), "h1", None).unwrap();
    eventually(Duration::from_secs(10), "h1 is a host", || {
        b.cli(&["hosts", "--json"]).stdout.contains("\"h1\"")
    });

    // Writes through b, which does not lead, reach a.
    assert!(!leads(&b, "b"));
    let db = app_with_database(&b, "sushi", "standard-0");
    assert!(a.log().contains("sushi"), "a did the work");
    psql(&b, "sushi", &db, "create table t (id bigint primary key)");
    let url = config_get(&b, "sushi", "DATABASE_URL");
    let writer = Writer::start(&url, "t", Duration::from_secs(120));
    writer.warm_up();

    add_follower(&b, "sushi", "standard-0", "DATABASE_URL");
    assert!(
        a.wait_exit(Duration::from_secs(120)).is_some(),
        "a crashed at the crash point"
    );
    let died = Instant::now();
    eventually(TTL * 3, "b leads", || leads(&b, "b"));
    let change = died.elapsed();
    eprintln!(
        "leader change: b led {:.2} s after a died",
        change.as_secs_f64()
    );
    // The lease runs out at most TTL after a's last renewal (which was
    // before it died), etcd finds expired leases every 0.5 s, b looks every
    // 0.1 s; 0.5 s of slack for a busy machine.
    let bound = TTL + Duration::from_millis(500 + 100 + 500);
    assert!(change <= bound, "took {change:?}, more than {bound:?}");
    // b finishes the follower a started.
    wait_available(&b, "sushi");
    let info = info(&b, "sushi");
    assert_eq!(info.len(), 2, "{info:?}");

    let report = writer.finish();
    assert!(
        report.errors.is_empty(),
        "the writer saw {:?}",
        report.errors
    );
    assert!(report.acked.len() > 10, "{} inserts", report.acked.len());
    assert!(
        !agent.log().contains("fencing"),
        "the agent fenced:\n{}",
        agent.log()
    );

    // The CLI given both replicas, the first one dead, goes on with b.
    let env = [
        ("PGFOLLOW_API", both.as_str()),
        ("PGFOLLOW_TOKEN", &b.token()),
    ];
    b.cli_env(&["apps:create", "ramen"], &env).ok();
    let apps = b.cli_env(&["apps", "--json"], &env).ok().stdout;
    assert!(apps.contains("ramen"), "{apps}");

    let size = etcd.value_len("/pgfollow/state").unwrap_or(0);
    eprintln!("state document: {size} bytes");
    assert!(size > 0 && size < 1_000_000, "{size} bytes");

    // One etcd member gone (not etcd's own leader, whose loss holds every
    // request for an election): nothing changes.
    let etcd_leader = etcd.leader().expect("etcd has a leader");
    etcd.kill((etcd_leader + 1) % 3);
    let started = Instant::now();
    b.cli(&["apps:create", "udon"]).ok();
    b.cli(&["config:set", "A=1", "--app", "udon"]).ok();
    eprintln!(
        "writes with one etcd member killed: {:.2} s",
        started.elapsed().as_secs_f64()
    );
    std::thread::sleep(TTL);
    assert!(
        !b.log().contains("stopped leading"),
        "b stopped leading:\n{}",
        b.log()
    );
    assert_eq!(
        config_get(&b, "udon", "A"),
        "1",
        "the write landed and reads still work"
    );
    drop(agent);
}

#[test]
fn cp_serve_refuses_an_etcd_it_cannot_use_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let run = |extra: &[&str]| {
        pgfollow_testkit::run_bounded(
            std::process::Command::new(bin())
                .arg("serve")
                .arg("--data-dir")
                .arg(dir.path().join("data"))
                .args(["--listen", "127.0.0.1:0", "--etcd", &dead])
                .args(extra),
            Duration::from_secs(30),
        )
        .unwrap()
        .failed()
    };
    let out = run(&[]);
    let line = out.stderr.lines().last().unwrap_or_default();
    assert!(
        line.starts_with(&format!("error: etcd at {dead} does not answer ("))
            && line.ends_with("check that etcd runs there with a majority of its members"),
        "{}",
        out.stderr
    );
    let out = run(&["--pg-bin", "/usr/lib/postgresql/15/bin"]);
    assert_eq!(
        out.stderr.trim(),
        "error: --pg-bin configures serve's embedded agent, which does not run with --etcd; give it to `pgfollow agent` on each host instead"
    );
}

fn signal(pid: u32, signal: Signal) {
    kill(Pid::from_raw(pid as i32), signal).unwrap();
}

#[test]
fn cp_a_frozen_leader_is_replaced_steps_down_when_it_wakes_and_a_stopped_one_hands_over() {
    let etcd = EtcdCluster::start().unwrap();
    let a = replica(&etcd, "a", &[]);
    eventually(Duration::from_secs(10), "a leads", || leads(&a, "a"));
    let mut b = replica(&etcd, "b", &[]);

    // a frozen (a paused VM, a stalled process): b leads once a's lease
    // runs out, and writes go on through b.
    signal(a.pid().unwrap(), Signal::SIGSTOP);
    let frozen = Instant::now();
    eventually(TTL * 3, "b leads", || leads(&b, "b"));
    eprintln!(
        "b led {:.2} s after a froze",
        frozen.elapsed().as_secs_f64()
    );
    b.cli(&["apps:create", "sushi"]).ok();

    // a wakes believing it leads: it finds b holding the lease and stops
    // at once; a write sent to a is forwarded to b.
    signal(a.pid().unwrap(), Signal::SIGCONT);
    eventually(Duration::from_secs(5), "a steps down", || {
        a.log().contains("control plane replica a stopped leading")
    });
    a.cli(&["apps:create", "ramen"]).ok();
    let apps = b.cli(&["apps", "--json"]).ok().stdout;
    assert!(apps.contains("sushi") && apps.contains("ramen"), "{apps}");
    assert_eq!(
        a.log().matches("control plane replica a leads").count(),
        1,
        "a led again:\n{}",
        a.log()
    );

    // b stopped in order gives the lease up: a leads at once, without
    // waiting for the TTL.
    let stopping = Instant::now();
    b.signal(Signal::SIGTERM).expect("b stops");
    let stopped = stopping.elapsed();
    eventually(Duration::from_secs(1), "a leads again", || {
        a.log().matches("control plane replica a leads").count() == 2
    });
    eprintln!(
        "a led again {:.2} s after b was stopped ({:.2} s to stop)",
        stopping.elapsed().as_secs_f64(),
        stopped.as_secs_f64()
    );
    a.cli(&["apps:create", "udon"]).ok();
}
