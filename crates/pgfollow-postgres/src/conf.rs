//! Pure rendering of a cluster's configuration from its [`ClusterSpec`]:
//! `pgfollow.conf` (included from `postgresql.conf`) and `pg_hba.conf`,
//! plus the checks a spec must pass before it reaches PostgreSQL.
//!
//! A follower's `pgfollow.conf` carries `primary_conninfo`, which holds the
//! leader's replication password: the file is always written mode 0600.

use std::path::Path;

use pgfollow_types::agent::{ClusterSpec, Upstream};

use crate::error::PgError;

/// The file, in the data directory, that holds every setting pgfollow owns.
pub const CONF_FILE: &str = "pgfollow.conf";

/// The line that makes `postgresql.conf` read [`CONF_FILE`]; later lines win.
pub const INCLUDE_LINE: &str = "include 'pgfollow.conf'";

/// `sizeof(sockaddr_un.sun_path)` is 108 on Linux, NUL included; PostgreSQL
/// refuses socket paths that do not fit.
pub const MAX_SOCKET_PATH: usize = 106;

/// WAL kept for followers without a slot (e.g. during a base backup).
const WAL_KEEP_SIZE: &str = "64MB";

/// `sslmode` of a follower's connection to its leader: leaders are
/// reached over the hosts' own network and do not offer TLS yet; `prefer`
/// uses it as soon as they do.
pub const UPSTREAM_SSLMODE: &str = "prefer";

/// Seconds a follower (or `pg_basebackup`) waits for its leader to answer.
pub const UPSTREAM_CONNECT_TIMEOUT_SECS: u32 = 10;

/// Replication slot names PostgreSQL accepts: lower-case letters, digits
/// and `_`, at most 63 bytes.
pub fn slot_name_problem(slot: &str) -> Option<&'static str> {
    if slot.is_empty() || slot.len() > 63 {
        return Some("must be 1 to 63 bytes");
    }
    if !slot
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        return Some("may only contain lower-case letters, digits and `_`");
    }
    None
}

/// Renders `pgfollow.conf` for `spec`, with the Unix socket in `socket_dir`.
pub fn render_conf(spec: &ClusterSpec, socket_dir: &Path, passfile: &Path) -> String {
    let s = &spec.settings;
    let socket_dir = socket_dir.display().to_string();
    let settings: Vec<(&str, String)> = vec![
        ("cluster_name", quote(&spec.id)),
        ("port", spec.port.to_string()),
        ("listen_addresses", quote(&spec.listen_address)),
        ("unix_socket_directories", quote(&socket_dir)),
        ("unix_socket_permissions", "0700".into()),
        ("max_connections", s.max_connections.to_string()),
        (
            "shared_buffers",
            quote(&format!("{}MB", s.shared_buffers_mb)),
        ),
        ("work_mem", quote(&format!("{}MB", s.work_mem_mb))),
        (
            "maintenance_work_mem",
            quote(&format!("{}MB", s.maintenance_work_mem_mb)),
        ),
        (
            "effective_cache_size",
            quote(&format!("{}MB", s.effective_cache_size_mb)),
        ),
        ("password_encryption", quote("scram-sha-256")),
        // `logical` (rather than `replica`) so that any database can have a
        // logical follower on a newer major without a restart; it adds a
        // little to the WAL of UPDATEs and DELETEs.
        ("wal_level", "logical".into()),
        ("max_wal_senders", "10".into()),
        ("max_replication_slots", "10".into()),
        ("hot_standby", "on".into()),
        // pg_rewind (an old primary rejoining as a follower) needs this or checksums.
        ("wal_log_hints", "on".into()),
        ("wal_keep_size", quote(WAL_KEEP_SIZE)),
        (
            "max_slot_wal_keep_size",
            quote(&format!("{}MB", s.max_slot_wal_keep_mb)),
        ),
        // A follower that stops answering is noticed in seconds, so its slot
        // stops holding WAL back and HA sees a dead link quickly.
        ("wal_sender_timeout", quote("5s")),
        ("wal_receiver_timeout", quote("5s")),
        // WAL is archived by pgBackRest once the database is protected
        // (the cluster root's `archive.conf`, included below, says how);
        // until then each segment is let go. `on`, not `always`: pgBackRest
        // backs up no primary with `always`, and an HA standby starts
        // archiving when it is promoted.
        ("archive_mode", "on".into()),
        ("archive_command", quote(NO_ARCHIVE_COMMAND)),
        ("fsync", "on".into()),
        ("logging_collector", "off".into()),
        ("log_destination", quote("stderr")),
        ("log_statement", quote("none")),
        // A failed ALTER ROLE ... PASSWORD must never land in the log.
        ("log_min_error_statement", "panic".into()),
        ("log_line_prefix", quote("%m [%p] %q%u@%d ")),
        // `pg:outliers` reads it; loaded at start, so a running cluster
        // gets it at its next restart.
        ("shared_preload_libraries", quote("pg_stat_statements")),
    ];
    let mut out = String::from(
        "# Written by pgfollow from the cluster's spec; every change here is overwritten.\n",
    );
    for (name, value) in settings {
        out.push_str(&format!("{name} = {value}\n"));
    }
    if let Some(standby) = &spec.synchronous_standby {
        out.push_str("# Commits wait until this standby has them.\n");
        out.push_str(&format!(
            "synchronous_standby_names = {}\n",
            quote(&format!("\"{standby}\""))
        ));
    }
    if let Some(root) = passfile.parent() {
        out.push_str(
            "# Continuous protection, when on (outside the data directory, so no copy takes it).\n",
        );
        out.push_str(&format!(
            "include_if_exists {}\n",
            quote(&root.join(ARCHIVE_CONF).display().to_string())
        ));
    }
    if let Some(up) = &spec.upstream {
        out.push_str("# Follower: streams WAL from its leader (with `standby.signal`).\n");
        for (name, value) in [
            ("primary_conninfo", quote(&conninfo(up, passfile))),
            ("primary_slot_name", quote(&up.slot)),
            // Off, as on a plain standby: with it on, the follower's open
            // snapshots hold back vacuum and HOT pruning on the leader, which
            // cost a write-heavy leader about 8% of its TPS here. A long query
            // on a follower delays replay instead (up to
            // max_standby_streaming_delay), as users of followers expect.
            ("hot_standby_feedback", "off".into()),
        ] {
            out.push_str(&format!("{name} = {value}\n"));
        }
    }
    out
}

/// `archive_command` of an unprotected cluster: every segment counts as
/// archived, so none piles up.
pub const NO_ARCHIVE_COMMAND: &str = "/bin/true";

/// The file, in the cluster root, that sets `archive_command` to
/// pgBackRest's `archive-push` once the database is protected.
pub const ARCHIVE_CONF: &str = "archive.conf";

/// The file, in the cluster root (outside the data directory, so no base
/// backup or rewind copies it), that holds the upstream's password for
/// `primary_conninfo`: PostgreSQL logs that setting whenever it changes,
/// so the password must not be in it.
pub const UPSTREAM_PASSFILE: &str = "upstream.pgpass";

/// The libpq connection string a follower streams with (without the
/// `postgresql.conf` quoting; see [`quote`]). The password is read from
/// `passfile`, never written here.
pub fn conninfo(up: &Upstream, passfile: &Path) -> String {
    let passfile = passfile.display().to_string();
    [
        ("host", up.host.as_str()),
        ("port", &up.port.to_string()),
        ("user", &up.user),
        ("passfile", &passfile),
        ("application_name", &up.application_name),
        ("sslmode", UPSTREAM_SSLMODE),
        (
            "connect_timeout",
            &UPSTREAM_CONNECT_TIMEOUT_SECS.to_string(),
        ),
    ]
    .iter()
    .map(|(k, v)| format!("{k}={}", conninfo_value(v)))
    .collect::<Vec<_>>()
    .join(" ")
}

/// A conninfo value, single-quoted with `\` and `'` backslash-escaped.
pub fn conninfo_value(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// Renders `pg_hba.conf`: trust only over the agent's own Unix socket
/// (its directory is mode 0700, owned by the cluster's OS user), passwords
/// (scram-sha-256) for everything over TCP, replication only for the
/// replication role.
pub fn render_hba(spec: &ClusterSpec) -> String {
    format!(
        "# Written by pgfollow; every change here is overwritten.\n\
         # TYPE  DATABASE     USER  ADDRESS  METHOD\n\
         local   all          all            trust\n\
         host    all          all   all      scram-sha-256\n\
         host    replication  \"{}\"  all  scram-sha-256\n",
        spec.replication.name
    )
}

/// `postgresql.conf` with [`INCLUDE_LINE`] appended, or `None` if it is
/// there already.
pub fn with_include(postgresql_conf: &str) -> Option<String> {
    if postgresql_conf.lines().any(|l| l.trim() == INCLUDE_LINE) {
        return None;
    }
    let mut out = postgresql_conf.to_string();
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str("\n# Settings managed by pgfollow.\n");
    out.push_str(INCLUDE_LINE);
    out.push('\n');
    Some(out)
}

/// The path of the Unix socket PostgreSQL creates for `port` in `socket_dir`,
/// or an error if it is too long for a Unix socket.
pub fn socket_path(socket_dir: &Path, port: u16) -> Result<String, PgError> {
    let path = format!("{}/.s.PGSQL.{port}", socket_dir.display());
    if path.len() > MAX_SOCKET_PATH {
        return Err(PgError::SocketPathTooLong {
            len: path.len(),
            path,
            max: MAX_SOCKET_PATH,
        });
    }
    Ok(path)
}

/// The value of `name` in a configuration file's text (last one wins),
/// without quotes. Only for files this crate wrote.
pub fn read_setting(conf: &str, name: &str) -> Option<String> {
    conf.lines()
        .rev()
        .filter_map(|l| l.split_once('='))
        .find(|(k, _)| k.trim() == name)
        .map(|(_, v)| v.trim().trim_matches('\'').to_string())
}

/// A string setting, single-quoted as `postgresql.conf` wants it.
pub fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
}

/// Checks what goes into configuration files and SQL identifiers.
pub fn validate(spec: &ClusterSpec) -> Result<(), PgError> {
    let bad = |msg: String| Err(PgError::InvalidSpec(msg));
    if spec.id.is_empty()
        || !spec
            .id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return bad(format!("cluster id {:?} must be [a-z0-9-]+", spec.id));
    }
    if spec.port == 0 {
        return bad("port must not be 0".into());
    }
    if spec.listen_address.is_empty()
        || spec
            .listen_address
            .chars()
            .any(|c| c.is_control() || c == '\'' || c == '\\')
    {
        return bad(format!(
            "listen address {:?} is not valid",
            spec.listen_address
        ));
    }
    for (what, name) in [
        ("database", &spec.database),
        ("owner role", &spec.owner.name),
        ("replication role", &spec.replication.name),
    ] {
        if let Some(why) = name_problem(name) {
            return bad(format!("{what} name {name:?} {why}"));
        }
    }
    if matches!(
        spec.database.as_str(),
        "postgres" | "template0" | "template1"
    ) {
        return bad(format!("database name {:?} is reserved", spec.database));
    }
    if spec.owner.name == spec.replication.name {
        return bad("owner and replication roles must differ".into());
    }
    for (what, pw) in [
        ("owner", &spec.owner.password),
        ("replication", &spec.replication.password),
    ] {
        if pw.is_empty() || pw.contains('\0') {
            return bad(format!(
                "{what} password must be non-empty and contain no NUL"
            ));
        }
    }
    if spec.settings.max_connections < 5 {
        return bad("max_connections must be at least 5".into());
    }
    if let Some(up) = &spec.upstream {
        validate_upstream(up)?;
    }
    Ok(())
}

/// Checks a follower's upstream: everything in it lands in `primary_conninfo`.
fn validate_upstream(up: &Upstream) -> Result<(), PgError> {
    let bad = |msg: String| Err(PgError::InvalidSpec(msg));
    if up.host.is_empty() || up.host.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return bad(format!("upstream host {:?} is not valid", up.host));
    }
    if up.port == 0 {
        return bad("upstream port must not be 0".into());
    }
    if let Some(why) = name_problem(&up.user) {
        return bad(format!("upstream user name {:?} {why}", up.user));
    }
    // A raw line break cannot appear inside a quoted `postgresql.conf` value.
    if up.password.is_empty() || up.password.chars().any(|c| c.is_control()) {
        return bad("upstream password must be non-empty and contain no control characters".into());
    }
    if let Some(why) = slot_name_problem(&up.slot) {
        return bad(format!("replication slot name {:?} {why}", up.slot));
    }
    if up.application_name.is_empty()
        || up.application_name.len() > 63
        || up.application_name.chars().any(|c| c.is_control())
    {
        return bad(format!(
            "upstream application_name {:?} must be 1 to 63 bytes without control characters",
            up.application_name
        ));
    }
    Ok(())
}

/// Why `name` is not a usable role or database name, if it is not.
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
    if name.starts_with("pg_") || name == "postgres" || name == "public" || name == "all" {
        return Some("is reserved");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgfollow_types::agent::{PgSettings, RoleSecret};

    fn spec() -> ClusterSpec {
        ClusterSpec {
            id: "white-1".into(),
            port: 54321,
            listen_address: "127.0.0.1".into(),
            settings: PgSettings {
                max_connections: 25,
                shared_buffers_mb: 128,
                work_mem_mb: 4,
                maintenance_work_mem_mb: 64,
                effective_cache_size_mb: 512,
                max_slot_wal_keep_mb: 1024,
            },
            database: "d_white".into(),
            owner: RoleSecret {
                name: "u_white".into(),
                password: "s3cr'et".into(),
            },
            replication: RoleSecret {
                name: "r_white".into(),
                password: "r3pl".into(),
            },
            upstream: None,
            synchronous_standby: None,
            pg_major: None,
        }
    }

    fn follower() -> ClusterSpec {
        ClusterSpec {
            upstream: Some(Upstream {
                host: "10.0.0.7".into(),
                port: 5433,
                user: "r_white".into(),
                password: "it's a \\ pass word".into(),
                slot: "follower_charcoal_1".into(),
                application_name: "charcoal-1".into(),
            }),
            ..spec()
        }
    }

    /// What PostgreSQL's configuration file parser makes of a quoted value.
    fn guc_unquote(value: &str) -> String {
        let inner = value
            .strip_prefix('\'')
            .and_then(|v| v.strip_suffix('\''))
            .unwrap();
        let mut out = String::new();
        let mut chars = inner.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '\\' => out.push(chars.next().unwrap()),
                '\'' => {
                    assert_eq!(chars.next(), Some('\''), "lone quote in {value}");
                    out.push('\'');
                }
                c => out.push(c),
            }
        }
        out
    }

    fn setting<'a>(conf: &'a str, name: &str) -> Option<&'a str> {
        conf.lines()
            .filter_map(|l| l.split_once(" = "))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    }

    #[test]
    fn conf_carries_spec_and_fixed_settings() {
        let conf = render_conf(
            &spec(),
            Path::new("/srv/c/run"),
            Path::new("/srv/c/upstream.pgpass"),
        );
        for (name, want) in [
            ("port", "54321"),
            ("listen_addresses", "'127.0.0.1'"),
            ("unix_socket_directories", "'/srv/c/run'"),
            ("unix_socket_permissions", "0700"),
            ("max_connections", "25"),
            ("shared_buffers", "'128MB'"),
            ("work_mem", "'4MB'"),
            ("maintenance_work_mem", "'64MB'"),
            ("effective_cache_size", "'512MB'"),
            ("max_slot_wal_keep_size", "'1024MB'"),
            ("password_encryption", "'scram-sha-256'"),
            ("wal_level", "logical"),
            ("max_wal_senders", "10"),
            ("max_replication_slots", "10"),
            ("hot_standby", "on"),
            ("fsync", "on"),
            ("logging_collector", "off"),
            ("log_statement", "'none'"),
            ("log_min_error_statement", "panic"),
            ("shared_preload_libraries", "'pg_stat_statements'"),
            ("archive_mode", "on"),
            ("archive_command", "'/bin/true'"),
        ] {
            assert_eq!(setting(&conf, name), Some(want), "{name} in\n{conf}");
        }
        // Protection's archive_command comes from the cluster root, which
        // no copy of the data directory carries, and wins (included last
        // but for a follower's own settings).
        assert!(
            conf.contains("\ninclude_if_exists '/srv/c/archive.conf'\n"),
            "{conf}"
        );
    }

    #[test]
    fn conf_never_contains_passwords() {
        let conf = render_conf(
            &spec(),
            Path::new("/srv/c/run"),
            Path::new("/srv/c/upstream.pgpass"),
        );
        assert!(!conf.contains("s3cr"));
        assert!(!conf.contains("r3pl"));
    }

    #[test]
    fn hba_trusts_only_the_local_socket() {
        let hba = render_hba(&spec());
        let rules: Vec<Vec<&str>> = hba
            .lines()
            .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(
            rules,
            vec![
                vec!["local", "all", "all", "trust"],
                vec!["host", "all", "all", "all", "scram-sha-256"],
                vec!["host", "replication", "\"r_white\"", "all", "scram-sha-256"],
            ]
        );
    }

    #[test]
    fn include_is_added_once() {
        let first = with_include("max_connections = 100").unwrap();
        assert!(first.starts_with("max_connections = 100\n"));
        assert!(first.ends_with("include 'pgfollow.conf'\n"));
        assert_eq!(with_include(&first), None);
    }

    #[test]
    fn settings_read_back() {
        let conf = render_conf(
            &spec(),
            Path::new("/srv/c/run"),
            Path::new("/srv/c/upstream.pgpass"),
        );
        assert_eq!(read_setting(&conf, "port").as_deref(), Some("54321"));
        assert_eq!(
            read_setting(&conf, "listen_addresses").as_deref(),
            Some("127.0.0.1")
        );
        assert_eq!(read_setting(&conf, "nonexistent"), None);
    }

    #[test]
    fn a_leader_has_no_standby_settings() {
        let conf = render_conf(
            &spec(),
            Path::new("/srv/c/run"),
            Path::new("/srv/c/upstream.pgpass"),
        );
        for name in [
            "primary_conninfo",
            "primary_slot_name",
            "hot_standby_feedback",
        ] {
            assert_eq!(setting(&conf, name), None, "{name}");
        }
    }

    #[test]
    fn a_follower_streams_from_its_upstream_through_its_slot() {
        let conf = render_conf(
            &follower(),
            Path::new("/srv/c/run"),
            Path::new("/srv/c/upstream.pgpass"),
        );
        assert_eq!(
            setting(&conf, "primary_slot_name"),
            Some("'follower_charcoal_1'")
        );
        assert_eq!(setting(&conf, "hot_standby_feedback"), Some("off"));
        assert_eq!(setting(&conf, "hot_standby"), Some("on"));
        let raw = guc_unquote(setting(&conf, "primary_conninfo").unwrap());
        for part in [
            "host='10.0.0.7'",
            "port='5433'",
            "user='r_white'",
            "passfile='/srv/c/upstream.pgpass'",
            "application_name='charcoal-1'",
        ] {
            assert!(raw.contains(part), "no {part} in {raw}");
        }
        assert!(!raw.contains("password="), "{raw}");
        assert!(
            !conf.contains("pass word"),
            "the password is never in the config"
        );
    }

    #[test]
    fn conninfo_values_escape_quotes_and_backslashes() {
        assert_eq!(conninfo_value("a b"), "'a b'");
        assert_eq!(conninfo_value("it's\\x"), "'it\\'s\\\\x'");
        let up = follower().upstream.unwrap();
        let text = conninfo(&up, Path::new("/srv/it's/x"));
        assert!(text.contains("passfile='/srv/it\\'s/x'"), "{text}");
        assert!(text.contains("sslmode='prefer'"), "{text}");
        // And as a postgresql.conf literal: quotes doubled, backslashes doubled.
        assert_eq!(guc_unquote(&quote(&text)), text);
    }

    #[test]
    fn quoting_doubles_single_quotes_and_backslashes() {
        assert_eq!(quote("a'b\\c"), "'a''b\\\\c'");
    }

    #[test]
    fn socket_path_length_is_checked() {
        assert_eq!(
            socket_path(Path::new("/r/run"), 5432).unwrap(),
            "/r/run/.s.PGSQL.5432"
        );
        let long = format!("/{}", "x".repeat(100));
        let err = socket_path(Path::new(&long), 5432).unwrap_err();
        assert!(matches!(err, PgError::SocketPathTooLong { .. }), "{err}");
    }

    #[test]
    fn valid_spec_passes() {
        validate(&spec()).unwrap();
    }

    #[test]
    fn bad_specs_are_refused() {
        type Mutation = Box<dyn Fn(&mut ClusterSpec)>;
        let cases: Vec<(&str, Mutation)> = vec![
            ("id", Box::new(|s| s.id = "White".into())),
            ("port", Box::new(|s| s.port = 0)),
            ("listen", Box::new(|s| s.listen_address = "x'; y".into())),
            ("db quote", Box::new(|s| s.database = "a\"b".into())),
            ("db reserved", Box::new(|s| s.database = "template1".into())),
            ("role pg_", Box::new(|s| s.owner.name = "pg_monitor".into())),
            (
                "same roles",
                Box::new(|s| s.replication.name = s.owner.name.clone()),
            ),
            ("empty pw", Box::new(|s| s.owner.password.clear())),
            (
                "nul pw",
                Box::new(|s| s.replication.password = "a\0b".into()),
            ),
            ("long", Box::new(|s| s.database = "d".repeat(64))),
            ("conns", Box::new(|s| s.settings.max_connections = 2)),
        ];
        type UpMutation = Box<dyn Fn(&mut Upstream)>;
        let upstream_cases: Vec<(&str, UpMutation)> = vec![
            ("slot upper", Box::new(|u| u.slot = "Slot".into())),
            ("slot dash", Box::new(|u| u.slot = "a-b".into())),
            ("slot long", Box::new(|u| u.slot = "s".repeat(64))),
            ("host space", Box::new(|u| u.host = "a b".into())),
            ("host empty", Box::new(|u| u.host.clear())),
            ("up port", Box::new(|u| u.port = 0)),
            ("up user", Box::new(|u| u.user = "x'y".into())),
            ("up pw newline", Box::new(|u| u.password = "a\nb".into())),
            ("up pw empty", Box::new(|u| u.password.clear())),
            ("app name", Box::new(|u| u.application_name.clear())),
        ];
        validate(&follower()).unwrap();
        for (what, mutate) in upstream_cases {
            let mut s = follower();
            if let Some(up) = s.upstream.as_mut() {
                mutate(up);
            }
            assert!(validate(&s).is_err(), "{what} should be refused");
        }
        for (what, mutate) in cases {
            let mut s = spec();
            mutate(&mut s);
            assert!(validate(&s).is_err(), "{what} should be refused");
        }
    }
}
