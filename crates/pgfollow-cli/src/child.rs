//! Running a child program in the foreground (`run`, `pg:psql`): stdio is
//! inherited, Ctrl-C is left to the child, SIGTERM and SIGHUP are passed on,
//! and the child's exit status becomes ours.

use std::process::{ExitCode, ExitStatus};

use anyhow::Context;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::process::Command;
use tokio::signal::unix::{signal, SignalKind};

/// Runs `cmd` to completion and returns its exit code (128 + signal when a
/// signal killed it). `name` is what the user called it, for errors.
pub async fn run_foreground(mut cmd: Command, name: &str) -> anyhow::Result<ExitCode> {
    // Listening for SIGINT replaces its default action (exit), so a Ctrl-C
    // reaches the child (same process group) while we wait for its result.
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            anyhow::bail!("command not found: {name}")
        }
        Err(e) => return Err(e).with_context(|| format!("cannot run {name}")),
    };
    let pid = child.id();
    let status = loop {
        tokio::select! {
            st = child.wait() => break st.with_context(|| format!("waiting for {name}"))?,
            _ = int.recv() => {}
            _ = term.recv() => pass_on(pid, Signal::SIGTERM),
            _ = hup.recv() => pass_on(pid, Signal::SIGHUP),
        }
    };
    Ok(ExitCode::from(exit_code(status)))
}

fn pass_on(pid: Option<u32>, sig: Signal) {
    if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
        let _ = kill(Pid::from_raw(pid), sig);
    }
}

/// The shell's convention: the exit code, or 128 + the signal that killed it.
pub fn exit_code(status: ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code).unwrap_or(1),
        (None, Some(sig)) => u8::try_from(128 + sig).unwrap_or(255),
        (None, None) => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn exit_codes_follow_the_shell() {
        assert_eq!(exit_code(ExitStatus::from_raw(0)), 0);
        assert_eq!(exit_code(ExitStatus::from_raw(3 << 8)), 3);
        assert_eq!(exit_code(ExitStatus::from_raw(9)), 137);
        assert_eq!(exit_code(ExitStatus::from_raw(15)), 143);
    }

    #[tokio::test]
    async fn a_missing_program_is_named() {
        let cmd = Command::new("pgfollow-no-such-program");
        let e = run_foreground(cmd, "pgfollow-no-such-program")
            .await
            .unwrap_err();
        assert_eq!(e.to_string(), "command not found: pgfollow-no-such-program");
    }

    #[tokio::test]
    async fn the_exit_code_is_passed_on() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "exit 7"]);
        let code = run_foreground(cmd, "sh").await.unwrap();
        assert_eq!(code, ExitCode::from(7));
    }
}
