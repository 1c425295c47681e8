//! Logical backups: `pg_dump` in its custom format into a file, and
//! `pg_restore` of such a file into a database, both run as the OS user over
//! TCP with a role's password (in the environment, never on a command line).
//! The file is written by the calling process (root), mode 0600, under a
//! temporary name renamed only when the dump is complete.

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::binaries::PgBinaries;
use crate::error::PgError;
use crate::process;
use crate::user::OsUser;

/// Where to connect and as whom.
pub use pgfollow_types::backup::DumpTarget as Target;

/// How long one dump or restore may take.
pub const DUMP_TIMEOUT: Duration = Duration::from_secs(6 * 3600);

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> PgError + 'a {
    move |source| PgError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

fn tool(bin: &PgBinaries, user: &OsUser, name: &str, target: &Target) -> tokio::process::Command {
    let mut cmd = process::command(bin, user, name, Path::new("/"));
    cmd.env("PGPASSWORD", &target.password)
        .env("PGCONNECT_TIMEOUT", "10")
        .env("PGAPPNAME", "pgfollow-backup")
        // A cancelled dump's process is killed; this makes its session end
        // within a second even while it waits for a lock.
        .env("PGOPTIONS", "-c client_connection_check_interval=1000")
        .args(["-h", &target.host, "-p", &target.port.to_string()])
        .args(["-U", &target.user]);
    cmd
}

/// `pg_dump -Fc` of `target` into `out` (mode 0600). Returns its size.
/// A failed dump leaves no file behind.
pub async fn dump(
    bin: &PgBinaries,
    user: &OsUser,
    target: &Target,
    out: &Path,
) -> Result<u64, PgError> {
    dump_with(bin, user, target, out, &[]).await
}

/// [`dump`] of the schema alone (no rows, publications or subscriptions):
/// what a logical follower starts from.
pub async fn dump_schema(
    bin: &PgBinaries,
    user: &OsUser,
    target: &Target,
    out: &Path,
) -> Result<u64, PgError> {
    let only = ["--schema-only", "--no-publications", "--no-subscriptions"];
    dump_with(bin, user, target, out, &only).await
}

async fn dump_with(
    bin: &PgBinaries,
    user: &OsUser,
    target: &Target,
    out: &Path,
    extra: &[&str],
) -> Result<u64, PgError> {
    let tmp = PathBuf::from(format!("{}.partial", out.display()));
    let result = dump_into(bin, user, target, &tmp, extra).await;
    match result {
        Ok(size) => {
            tokio::fs::rename(&tmp, out)
                .await
                .map_err(io("moving the finished dump to", out))?;
            Ok(size)
        }
        Err(e) => {
            let _ = tokio::fs::remove_file(&tmp).await;
            Err(e)
        }
    }
}

async fn dump_into(
    bin: &PgBinaries,
    user: &OsUser,
    target: &Target,
    tmp: &Path,
    extra: &[&str],
) -> Result<u64, PgError> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(tmp)
        .map_err(io("creating", tmp))?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(io("setting the mode of", tmp))?;
    let mut file = tokio::fs::File::from_std(file);
    let mut cmd = tool(bin, user, "pg_dump", target);
    cmd.args(["--format=custom", "--no-password", "-d", &target.database]);
    cmd.args(extra);
    let program = bin.tool("pg_dump");
    let mut child = cmd.spawn().map_err(|source| PgError::Spawn {
        program: program.clone(),
        source,
    })?;
    let mut stdout = child.stdout.take().ok_or_else(|| PgError::Tool {
        what: "pg_dump".into(),
        status: "no stdout".into(),
        stderr: String::new(),
    })?;
    let mut stderr = child.stderr.take();
    let copy = async {
        let mut buf = vec![0u8; 256 * 1024];
        let mut total = 0u64;
        loop {
            let n = stdout
                .read(&mut buf)
                .await
                .map_err(io("reading pg_dump's output for", tmp))?;
            if n == 0 {
                break;
            }
            file.write_all(&buf[..n])
                .await
                .map_err(io("writing", tmp))?;
            total += n as u64;
        }
        file.sync_all().await.map_err(io("syncing", tmp))?;
        let mut err = String::new();
        if let Some(e) = stderr.as_mut() {
            let _ = e.read_to_string(&mut err).await;
        }
        let status = child.wait().await.map_err(|source| PgError::Spawn {
            program: program.clone(),
            source,
        })?;
        if !status.success() {
            return Err(PgError::Tool {
                what: format!("pg_dump of {}", target.database),
                status: status.to_string(),
                stderr: err.trim().to_string(),
            });
        }
        Ok(total)
    };
    match tokio::time::timeout(DUMP_TIMEOUT, copy).await {
        Ok(r) => r,
        Err(_) => Err(PgError::Timeout {
            program,
            secs: DUMP_TIMEOUT.as_secs(),
        }),
    }
}

/// `pg_restore` of the archive `file` into `target`, in one transaction
/// (a failed restore changes nothing), objects owned by `target.user`
/// (`--no-owner --no-acl`), existing ones of the same names replaced
/// (`--clean --if-exists`). `progress(done, total)` in bytes of the archive
/// read so far.
///
/// pg_restore writes the SQL and psql runs it (`--single-transaction`,
/// stopping at the first error), with [`ColumnStamps`] between the two:
/// PostgreSQL 15.20 stamps every column with an attribute option
/// `pg_attver`, which pg_dump copies and older or newer majors (18.6)
/// refuse, failing the whole restore; the stamp is left out (a server that
/// stamps gives the restored columns stamps of its own).
pub async fn restore(
    bin: &PgBinaries,
    user: &OsUser,
    target: &Target,
    file: &Path,
    progress: impl Fn(u64, u64) + Send + Sync,
) -> Result<(), PgError> {
    let mut input = tokio::fs::File::open(file)
        .await
        .map_err(io("opening", file))?;
    let total = input
        .metadata()
        .await
        .map_err(io("reading the size of", file))?
        .len();
    // Extensions only a superuser manages (pg_stat_statements, made in
    // every database by pgfollow) are left out: the owner that restores
    // could neither drop nor create them, and the target has its own.
    let toc = list(bin, user, file).await?;
    let kept = without_superuser_extensions(&toc);
    let list_file = if kept.len() == toc.len() {
        None
    } else {
        Some(toc_file(&kept)?)
    };
    let mut restore = process::command(bin, user, "pg_restore", Path::new("/"));
    if let Some(f) = &list_file {
        restore.arg("-L").arg(f.path());
    }
    restore
        .args([
            "--no-owner",
            "--no-acl",
            "--clean",
            "--if-exists",
            "-f",
            "-",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    let mut psql = tool(bin, user, "psql", target);
    psql.args([
        "--no-password",
        "--no-psqlrc",
        "--quiet",
        "--single-transaction",
        "--set",
        "ON_ERROR_STOP=1",
        "-d",
        &target.database,
    ])
    .stdin(Stdio::piped())
    .stdout(Stdio::null());
    let (restore_program, psql_program) = (bin.tool("pg_restore"), bin.tool("psql"));
    let spawn = |cmd: &mut tokio::process::Command, program: &PathBuf| {
        cmd.spawn().map_err(|source| PgError::Spawn {
            program: program.clone(),
            source,
        })
    };
    let mut restorer = spawn(&mut restore, &restore_program)?;
    let mut runner = spawn(&mut psql, &psql_program)?;
    let no_pipe = |what: &str| PgError::Tool {
        what: what.into(),
        status: "no pipe".into(),
        stderr: String::new(),
    };
    let mut to_restore = restorer.stdin.take().ok_or_else(|| no_pipe("pg_restore"))?;
    let mut sql = restorer
        .stdout
        .take()
        .ok_or_else(|| no_pipe("pg_restore"))?;
    let mut to_psql = runner.stdin.take().ok_or_else(|| no_pipe("psql"))?;
    let (mut restore_err, mut psql_err) = (restorer.stderr.take(), runner.stderr.take());
    let run = async {
        let feed = async {
            let mut buf = vec![0u8; 256 * 1024];
            let mut done = 0u64;
            loop {
                let n = input.read(&mut buf).await.map_err(io("reading", file))?;
                if n == 0 {
                    break;
                }
                // pg_restore stops reading when it fails; its exit says why.
                if to_restore.write_all(&buf[..n]).await.is_err() {
                    break;
                }
                done += n as u64;
                progress(done, total);
            }
            drop(to_restore);
            Ok::<(), PgError>(())
        };
        let pass = async {
            let mut stamps = ColumnStamps::default();
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                let n = match sql.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                // psql stops reading when it fails; its exit says why.
                if to_psql.write_all(&stamps.filter(&buf[..n])).await.is_err() {
                    return;
                }
            }
            let _ = to_psql.write_all(&stamps.finish()).await;
            drop(to_psql);
        };
        let read_all = |e: Option<tokio::process::ChildStderr>| async move {
            let mut text = String::new();
            if let Some(mut e) = e {
                let _ = e.read_to_string(&mut text).await;
            }
            text
        };
        let (fed, (), restore_text, psql_text) = tokio::join!(
            feed,
            pass,
            read_all(restore_err.take()),
            read_all(psql_err.take())
        );
        fed?;
        let wait = |program: PathBuf| move |source| PgError::Spawn { program, source };
        let restored = restorer
            .wait()
            .await
            .map_err(wait(restore_program.clone()))?;
        let ran = runner.wait().await.map_err(wait(psql_program.clone()))?;
        // psql's error is the first cause; pg_restore then only saw its
        // output closed.
        let failed = match (ran.success(), restored.success()) {
            (true, true) => None,
            (false, _) => Some((ran, psql_text)),
            (true, false) => Some((restored, restore_text)),
        };
        if let Some((status, err)) = failed {
            return Err(PgError::Tool {
                what: format!("pg_restore into {}", target.database),
                status: status.to_string(),
                stderr: first_lines(&err, 3),
            });
        }
        Ok(())
    };
    match tokio::time::timeout(DUMP_TIMEOUT, run).await {
        Ok(r) => r,
        Err(_) => Err(PgError::Timeout {
            program: restore_program,
            secs: DUMP_TIMEOUT.as_secs(),
        }),
    }
}

/// The attribute option PostgreSQL 15.20 puts on every column.
const COLUMN_STAMP: &str = "pg_attver";

/// Takes PostgreSQL 15.20's column stamps out of the SQL pg_restore writes,
/// as it streams past: a statement `ALTER TABLE ONLY t ALTER COLUMN c SET
/// (pg_attver=N);` goes, and from one that sets other options too only
/// the stamp goes. The rows of `COPY ... FROM stdin;` pass untouched.
#[derive(Default)]
pub struct ColumnStamps {
    /// The start of a line not yet complete.
    partial: Vec<u8>,
    in_copy: bool,
}

impl ColumnStamps {
    /// The complete lines of what came so far, filtered.
    pub fn filter(&mut self, chunk: &[u8]) -> Vec<u8> {
        self.partial.extend_from_slice(chunk);
        let Some(last) = self.partial.iter().rposition(|b| *b == b'\n') else {
            return Vec::new();
        };
        let rest = self.partial.split_off(last + 1);
        let lines = std::mem::replace(&mut self.partial, rest);
        let mut out = Vec::with_capacity(lines.len());
        for line in lines.split_inclusive(|b| *b == b'\n') {
            self.line(line, &mut out);
        }
        out
    }

    /// What is left after the last chunk (a last line without a newline).
    pub fn finish(&mut self) -> Vec<u8> {
        let line = std::mem::take(&mut self.partial);
        let mut out = Vec::new();
        self.line(&line, &mut out);
        out
    }

    fn line(&mut self, line: &[u8], out: &mut Vec<u8>) {
        let text = String::from_utf8_lossy(line);
        let bare = text.trim_end_matches(['\n', '\r']);
        if self.in_copy {
            self.in_copy = bare != "\\.";
            out.extend_from_slice(line);
            return;
        }
        if bare.starts_with("COPY ") && bare.ends_with("FROM stdin;") {
            self.in_copy = true;
        }
        match without_stamp(bare) {
            None => out.extend_from_slice(line),
            Some(None) => {}
            Some(Some(kept)) => {
                out.extend_from_slice(kept.as_bytes());
                out.push(b'\n');
            }
        }
    }
}

/// For a statement setting column options that include the stamp: None
/// when it is not one, `Some(None)` when nothing else is set, else the
/// statement without the stamp.
fn without_stamp(stmt: &str) -> Option<Option<String>> {
    let (head, options) = stmt.strip_suffix(");")?.split_once(" SET (")?;
    if !head.starts_with("ALTER TABLE ") || !head.contains(" ALTER COLUMN ") {
        return None;
    }
    let all: Vec<&str> = options.split(", ").collect();
    let kept: Vec<&str> = all
        .iter()
        .copied()
        .filter(|o| o.split_once('=').map(|(k, _)| k) != Some(COLUMN_STAMP))
        .collect();
    match kept.len() {
        n if n == all.len() => None,
        0 => Some(None),
        _ => Some(Some(format!("{head} SET ({});", kept.join(", ")))),
    }
}

/// `pg_restore -l`: the archive's table of contents, which also proves it is
/// a readable custom-format dump.
pub async fn list(bin: &PgBinaries, user: &OsUser, file: &Path) -> Result<String, PgError> {
    let mut input = tokio::fs::File::open(file)
        .await
        .map_err(io("opening", file))?;
    let mut cmd = process::command(bin, user, "pg_restore", Path::new("/"));
    cmd.arg("-l").stdin(Stdio::piped());
    let program = bin.tool("pg_restore");
    let mut child = cmd.spawn().map_err(|source| PgError::Spawn {
        program: program.clone(),
        source,
    })?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = tokio::io::copy(&mut input, &mut stdin).await;
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|source| PgError::Spawn { program, source })?;
    if !out.status.success() {
        return Err(PgError::Tool {
            what: "pg_restore -l".into(),
            status: out.status.to_string(),
            stderr: process::output_text(&out),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Extensions that pgfollow creates as the superuser in every database.
const SUPERUSER_EXTENSIONS: &[&str] = &["pg_stat_statements"];

/// A `pg_restore -l` table of contents without the entries (the extension
/// and its comment) of [`SUPERUSER_EXTENSIONS`]; the order is kept, so a
/// restore from a stream can follow it.
pub fn without_superuser_extensions(toc: &str) -> String {
    let mut out = String::with_capacity(toc.len());
    for line in toc.split_inclusive('\n') {
        let of_one = SUPERUSER_EXTENSIONS.iter().any(|e| {
            let words: Vec<&str> = line.split_whitespace().collect();
            words.windows(2).any(|w| w[0] == "EXTENSION" && w[1] == "-") && words.last() == Some(e)
                || words.windows(3).any(|w| w == ["COMMENT", "-", "EXTENSION"])
                    && words.iter().any(|w| w == e)
        });
        if !of_one {
            out.push_str(line);
        }
    }
    out
}

/// `toc` in a file the OS user postgres runs as can read (a table of
/// contents: names of objects, no data).
fn toc_file(toc: &str) -> Result<tempfile::NamedTempFile, PgError> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir();
    let mut f = tempfile::Builder::new()
        .prefix("pgfollow-restore-")
        .suffix(".list")
        .tempfile_in(&dir)
        .map_err(io("creating a restore list in", &dir))?;
    f.write_all(toc.as_bytes())
        .map_err(io("writing", f.path()))?;
    std::fs::set_permissions(f.path(), std::fs::Permissions::from_mode(0o644))
        .map_err(io("setting the mode of", f.path()))?;
    Ok(f)
}

/// The first `n` non-empty lines of `text`, joined by `; ` (one line).
fn first_lines(text: &str, n: usize) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .take(n)
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restore_leaves_out_the_extensions_only_a_superuser_manages() {
        let toc = "; Archive created at 2026-12-02\n\
                   3; 3079 16385 EXTENSION - pg_stat_statements \n\
                   4; 0 0 COMMENT - EXTENSION pg_stat_statements \n\
                   5; 3079 16400 EXTENSION - hstore \n\
                   6; 1259 16500 TABLE public t u1\n";
        let kept = without_superuser_extensions(toc);
        assert_eq!(
            kept,
            "; Archive created at 2026-12-02\n\
             5; 3079 16400 EXTENSION - hstore \n\
             6; 1259 16500 TABLE public t u1\n"
        );
        assert_eq!(
            without_superuser_extensions("6; 1 2 TABLE public t u\n").len(),
            24
        );
    }

    #[test]
    fn column_stamps_are_left_out_of_the_sql_and_rows_pass_untouched() {
        let sql = "CREATE TABLE public.w (\n    id bigint NOT NULL\n);\n\
                   ALTER TABLE ONLY public.w ALTER COLUMN id SET (pg_attver=22158952);\n\
                   ALTER TABLE ONLY public.w ALTER COLUMN v SET (n_distinct=5, pg_attver=1);\n\
                   ALTER TABLE ONLY public.w ALTER COLUMN v SET (n_distinct=5);\n\
                   COPY public.w (id, v) FROM stdin;\n\
                   ALTER TABLE ONLY public.w ALTER COLUMN id SET (pg_attver=1);\n\
                   \\.\n\
                   ALTER TABLE ONLY public.w ALTER COLUMN id SET (pg_attver=7);";
        let want = "CREATE TABLE public.w (\n    id bigint NOT NULL\n);\n\
                    ALTER TABLE ONLY public.w ALTER COLUMN v SET (n_distinct=5);\n\
                    ALTER TABLE ONLY public.w ALTER COLUMN v SET (n_distinct=5);\n\
                    COPY public.w (id, v) FROM stdin;\n\
                    ALTER TABLE ONLY public.w ALTER COLUMN id SET (pg_attver=1);\n\
                    \\.\n";
        // In chunks of every size, lines cut anywhere.
        for size in [1, 2, 7, 64, sql.len()] {
            let mut f = ColumnStamps::default();
            let mut out = Vec::new();
            for chunk in sql.as_bytes().chunks(size) {
                out.extend(f.filter(chunk));
            }
            out.extend(f.finish());
            assert_eq!(String::from_utf8(out).unwrap(), want, "chunks of {size}");
        }
    }

    #[test]
    fn errors_are_kept_to_one_line() {
        assert_eq!(
            first_lines("pg_restore: error: a\n\n  b  \nc\nd\n", 3),
            "pg_restore: error: a; b; c"
        );
    }
}
