//! What an endpoint should be ([`EndpointSpec`]), its validation, and pure
//! rendering of `pgbouncer.ini` and `userlist.txt`.
//!
//! Authentication: clients log in to PgBouncer with SCRAM-SHA-256, checked
//! against the app's password stored in plain text in `userlist.txt` (0600,
//! owned by the OS user). Plain text is what lets PgBouncer log in to *any*
//! target with that password: a stored SCRAM secret only works towards a
//! server whose secret has the same salt and iteration count, which a second
//! cluster (a promoted follower keeps its leader's, a fresh one does not)
//! cannot be relied on to have. The admin console has its own user
//! ([`ADMIN_USER`]) with a random password that only the agent knows.

use std::path::Path;

use crate::error::BouncerError;

/// The admin console's user; never an app's role.
pub const ADMIN_USER: &str = "pgfollow_admin";

/// Longest password the userlist takes (PgBouncer's own limit is larger).
const MAX_PASSWORD_BYTES: usize = 200;

/// Prepared statements PgBouncer keeps per server connection (LRU); a
/// client's statement beyond that is prepared again when next used.
pub const MAX_PREPARED_STATEMENTS: u32 = 200;

/// Longest Unix socket path Linux allows (`sun_path` minus the NUL).
pub const MAX_SOCKET_PATH: usize = 107;

pub use pgfollow_types::agent::{EndpointSpec, EndpointTarget as Target};
pub use pgfollow_types::api::PoolMode;

/// Checks everything that is rendered into a file, so that no value can
/// break out of its place in `pgbouncer.ini` or `userlist.txt`.
pub fn validate(spec: &EndpointSpec) -> Result<(), BouncerError> {
    let bad = |msg: String| Err(BouncerError::InvalidSpec(msg));
    if spec.id.is_empty()
        || !spec
            .id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return bad(format!("endpoint id {:?} must be [a-z0-9-]+", spec.id));
    }
    if let Some(why) = host_problem(&spec.listen_addr) {
        return bad(format!("listen address {:?} {why}", spec.listen_addr));
    }
    if spec.port == 0 {
        return bad("port must not be 0".into());
    }
    for (what, name) in [("database", &spec.dbname), ("user", &spec.user)] {
        if let Some(why) = name_problem(name) {
            return bad(format!("{what} name {name:?} {why}"));
        }
    }
    if spec.user == ADMIN_USER {
        return bad(format!(
            "user name {ADMIN_USER:?} is reserved for the admin console"
        ));
    }
    if spec.password.is_empty()
        || spec.password.len() > MAX_PASSWORD_BYTES
        || spec.password.chars().any(char::is_control)
    {
        return bad(format!(
            "password must be 1 to {MAX_PASSWORD_BYTES} bytes without control characters"
        ));
    }
    if spec.pool_size == 0 || spec.max_client_conn == 0 {
        return bad("pool_size and max_client_conn must be at least 1".into());
    }
    if let Some(t) = &spec.target {
        if let Some(why) = host_problem(&t.host) {
            return bad(format!("target host {:?} {why}", t.host));
        }
        if t.port == 0 {
            return bad("target port must not be 0".into());
        }
        if let Some(why) = name_problem(&t.dbname) {
            return bad(format!("target database name {:?} {why}", t.dbname));
        }
    }
    Ok(())
}

/// Names as the postgres crate allows them, minus what PgBouncer reserves.
fn name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() || name.len() > 63 {
        return Some("must be 1 to 63 bytes");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Some("may only contain letters, digits, `_` and `-`");
    }
    if name == "pgbouncer" {
        return Some("is reserved (PgBouncer's admin console)");
    }
    None
}

/// An IP address or host name (no spaces, quotes or commas).
fn host_problem(host: &str) -> Option<&'static str> {
    if host.is_empty() || host.len() > 253 {
        return Some("must be 1 to 253 bytes");
    }
    if !host
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '-' | '_'))
    {
        return Some("must be an IP address or host name");
    }
    None
}

/// The files and directories of an endpoint rooted at `root`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub ini: std::path::PathBuf,
    pub userlist: std::path::PathBuf,
    pub admin_password: std::path::PathBuf,
    pub run_dir: std::path::PathBuf,
    pub pidfile: std::path::PathBuf,
    pub log_dir: std::path::PathBuf,
    pub logfile: std::path::PathBuf,
}

impl Layout {
    pub fn new(root: &Path) -> Self {
        let run_dir = root.join("run");
        let log_dir = root.join("log");
        Self {
            ini: root.join("pgbouncer.ini"),
            userlist: root.join("userlist.txt"),
            admin_password: root.join("admin.password"),
            pidfile: run_dir.join("pgbouncer.pid"),
            logfile: log_dir.join("pgbouncer.log"),
            run_dir,
            log_dir,
        }
    }

    /// The admin console's Unix socket for `port`; an error if too long.
    pub fn socket_path(&self, port: u16) -> Result<String, BouncerError> {
        let path = format!("{}/.s.PGSQL.{port}", self.run_dir.display());
        if path.len() > MAX_SOCKET_PATH {
            return Err(BouncerError::SocketPathTooLong {
                len: path.len(),
                path,
                max: MAX_SOCKET_PATH,
            });
        }
        Ok(path)
    }
}

/// `pgbouncer.ini` for `spec` (validated by the caller).
pub fn render_ini(spec: &EndpointSpec, layout: &Layout) -> String {
    let mut out =
        String::from("; Written by pgfollow; rewritten on every change.\n\n[databases]\n");
    // PgBouncer 1.18 does not accept quoted keys here; validated names
    // ([A-Za-z0-9_-]) need none. Values are single-quoted connstring values.
    match &spec.target {
        Some(t) => out.push_str(&format!(
            "{} = host={} port={} dbname={}\n",
            spec.dbname,
            connstr_value(&t.host),
            t.port,
            connstr_value(&t.dbname)
        )),
        None => out.push_str("; no target yet: clients get \"no such database\"\n"),
    }
    let settings: [(&str, String); 22] = [
        ("listen_addr", spec.listen_addr.clone()),
        ("listen_port", spec.port.to_string()),
        ("unix_socket_dir", layout.run_dir.display().to_string()),
        ("auth_type", "scram-sha-256".into()),
        ("auth_file", layout.userlist.display().to_string()),
        ("admin_users", ADMIN_USER.into()),
        ("pool_mode", spec.pool_mode.as_str().into()),
        ("default_pool_size", spec.pool_size.to_string()),
        ("max_client_conn", spec.max_client_conn.to_string()),
        // Transaction pooling: nothing session-level to reset. Session
        // pooling: the next client gets a clean server connection.
        (
            "server_reset_query",
            match spec.pool_mode {
                PoolMode::Transaction => String::new(),
                PoolMode::Session => "DISCARD ALL".into(),
            },
        ),
        // Protocol-level named prepared statements in transaction pooling
        // (PgBouncer 1.21+): a client's statement is prepared again, under
        // PgBouncer's own name, on whichever server connection (and
        // server, after a retarget) runs it; this many are kept per server
        // connection. In session pooling a client keeps its server
        // connection, so its statements need no help.
        (
            "max_prepared_statements",
            match spec.pool_mode {
                PoolMode::Transaction => MAX_PREPARED_STATEMENTS,
                PoolMode::Session => 0,
            }
            .to_string(),
        ),
        (
            "ignore_startup_parameters",
            "extra_float_digits,options".into(),
        ),
        // After a failed server login PgBouncer refuses clients for this
        // long before the next try (default 15 s). A crashed server is back,
        // or replaced by a failover, within a second or two: try every 0.2 s
        // so clients are not refused long after it is.
        ("server_login_retry", "0.2".into()),
        ("server_connect_timeout", "5".into()),
        ("client_login_timeout", "30".into()),
        // Server connections are checked after idling this long (default 30 s).
        ("server_check_delay", "10".into()),
        ("logfile", layout.logfile.display().to_string()),
        ("pidfile", layout.pidfile.display().to_string()),
        ("log_connections", "0".into()),
        ("log_disconnections", "0".into()),
        ("log_pooler_errors", "1".into()),
        ("stats_period", "300".into()),
    ];
    out.push_str("\n[pgbouncer]\n");
    // Several PgBouncers on one port (the read endpoint's slots): the
    // kernel spreads new connections over them.
    let reuseport = spec.so_reuseport.then(|| ("so_reuseport", "1".to_string()));
    for (key, value) in settings.into_iter().chain(reuseport) {
        if value.is_empty() {
            out.push_str(&format!("{key} =\n"));
        } else {
            out.push_str(&format!("{key} = {value}\n"));
        }
    }
    out
}

/// `userlist.txt`: the app's user and the admin user, each with its
/// password in plain text (see the module docs for why).
pub fn render_userlist(spec: &EndpointSpec, admin_password: &str) -> String {
    format!(
        "{} {}\n{} {}\n",
        userlist_field(&spec.user),
        userlist_field(&spec.password),
        userlist_field(ADMIN_USER),
        userlist_field(admin_password)
    )
}

/// A double-quoted userlist field; `"` is written twice.
fn userlist_field(value: &str) -> String {
    format!("\"{}\"", value.replace('"', "\"\""))
}

/// A single-quoted connstring value; `'` is written twice.
fn connstr_value(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// A database name as an admin console argument: double-quoted (1.18
/// takes `"name"`, which keeps case and `-`).
pub fn admin_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The value of `key` in the `[pgbouncer]` section of an ini text we wrote.
pub fn read_setting(ini: &str, key: &str) -> Option<String> {
    let mut in_section = false;
    for line in ini.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_section = line == "[pgbouncer]";
            continue;
        }
        if !in_section {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            if k.trim() == key {
                return Some(v.trim().to_string());
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> EndpointSpec {
        EndpointSpec {
            id: "app-1".into(),
            listen_addr: "127.0.0.1".into(),
            port: 6500,
            dbname: "app_db".into(),
            target: Some(Target {
                host: "127.0.0.1".into(),
                port: 5433,
                dbname: "app_db".into(),
            }),
            user: "app_owner".into(),
            password: "pa\"ss'w\\rd".into(),
            pool_size: 5,
            max_client_conn: 100,
            pool_mode: PoolMode::Transaction,
            so_reuseport: false,
        }
    }

    fn layout() -> Layout {
        Layout::new(Path::new("/srv/pgfollow/endpoints/app-1"))
    }

    #[test]
    fn renders_target_and_settings() {
        let ini = render_ini(&spec(), &layout());
        assert!(
            ini.contains("\napp_db = host='127.0.0.1' port=5433 dbname='app_db'\n"),
            "{ini}"
        );
        for line in [
            "listen_addr = 127.0.0.1",
            "listen_port = 6500",
            "unix_socket_dir = /srv/pgfollow/endpoints/app-1/run",
            "auth_type = scram-sha-256",
            "auth_file = /srv/pgfollow/endpoints/app-1/userlist.txt",
            "admin_users = pgfollow_admin",
            "pool_mode = transaction",
            "default_pool_size = 5",
            "max_client_conn = 100",
            "server_reset_query =",
            "max_prepared_statements = 200",
            "ignore_startup_parameters = extra_float_digits,options",
            "logfile = /srv/pgfollow/endpoints/app-1/log/pgbouncer.log",
            "pidfile = /srv/pgfollow/endpoints/app-1/run/pgbouncer.pid",
        ] {
            assert!(ini.lines().any(|l| l == line), "missing {line:?} in\n{ini}");
        }
        assert!(!ini.contains("pa\"ss"), "the password stays out of the ini");
        assert_eq!(read_setting(&ini, "listen_port").as_deref(), Some("6500"));
        assert_eq!(
            read_setting(&ini, "server_reset_query").as_deref(),
            Some("")
        );
        assert_eq!(read_setting(&ini, "app_db"), None);
    }

    #[test]
    fn session_mode_resets_connections_and_leaves_statements_to_the_server() {
        let mut s = spec();
        s.pool_mode = PoolMode::Session;
        let ini = render_ini(&s, &layout());
        assert_eq!(read_setting(&ini, "pool_mode").as_deref(), Some("session"));
        assert_eq!(
            read_setting(&ini, "server_reset_query").as_deref(),
            Some("DISCARD ALL")
        );
        assert_eq!(
            read_setting(&ini, "max_prepared_statements").as_deref(),
            Some("0")
        );
        for mode in [PoolMode::Transaction, PoolMode::Session] {
            assert_eq!(mode.as_str().parse::<PoolMode>().ok(), Some(mode));
        }
        assert!("statement".parse::<PoolMode>().is_err());
    }

    #[test]
    fn a_read_endpoint_slot_shares_its_port() {
        assert_eq!(
            read_setting(&render_ini(&spec(), &layout()), "so_reuseport"),
            None
        );
        let mut s = spec();
        s.so_reuseport = true;
        let ini = render_ini(&s, &layout());
        assert_eq!(read_setting(&ini, "so_reuseport").as_deref(), Some("1"));
    }

    #[test]
    fn no_target_leaves_the_database_out() {
        let mut s = spec();
        s.target = None;
        let ini = render_ini(&s, &layout());
        let dbs = ini.split("[pgbouncer]").next().unwrap_or_default();
        assert!(!dbs.lines().any(|l| l.starts_with("app_db")), "{ini}");
    }

    #[test]
    fn userlist_doubles_quotes() {
        let text = render_userlist(&spec(), "adm\"in");
        assert_eq!(
            text,
            "\"app_owner\" \"pa\"\"ss'w\\rd\"\n\"pgfollow_admin\" \"adm\"\"in\"\n"
        );
    }

    #[test]
    fn connstr_and_admin_quoting() {
        assert_eq!(connstr_value("it's"), "'it''s'");
        assert_eq!(admin_ident("app-Db"), "\"app-Db\"");
    }

    #[test]
    fn validation_rejects_what_could_break_a_file() {
        assert!(validate(&spec()).is_ok());
        type Change = Box<dyn Fn(&mut EndpointSpec)>;
        let cases: Vec<(&str, Change)> = vec![
            ("id", Box::new(|s| s.id = "App 1".into())),
            (
                "listen",
                Box::new(|s| s.listen_addr = "127.0.0.1 evil".into()),
            ),
            ("port", Box::new(|s| s.port = 0)),
            (
                "dbname",
                Box::new(|s| s.dbname = "db\nlisten_port = 1".into()),
            ),
            ("dbname", Box::new(|s| s.dbname = "pgbouncer".into())),
            ("user", Box::new(|s| s.user = ADMIN_USER.into())),
            ("user", Box::new(|s| s.user = "a\"b".into())),
            ("password", Box::new(|s| s.password = "a\nb".into())),
            ("password", Box::new(|s| s.password = String::new())),
            ("pool", Box::new(|s| s.pool_size = 0)),
            (
                "target host",
                Box::new(|s| {
                    if let Some(t) = s.target.as_mut() {
                        t.host = "h' port='1".into();
                    }
                }),
            ),
        ];
        for (what, change) in cases {
            let mut s = spec();
            change(&mut s);
            assert!(validate(&s).is_err(), "{what} should be rejected: {s:?}");
        }
    }

    #[test]
    fn debug_hides_the_password() {
        let text = format!("{:?}", spec());
        assert!(!text.contains("pa\\\"ss"), "{text}");
        assert!(text.contains("<redacted>"), "{text}");
    }

    #[test]
    fn socket_path_is_bounded() {
        assert!(layout().socket_path(6500).is_ok());
        let long = Layout::new(&Path::new("/tmp").join("x".repeat(100)));
        assert!(matches!(
            long.socket_path(6500),
            Err(BouncerError::SocketPathTooLong { .. })
        ));
    }
}
