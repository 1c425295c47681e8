//! Confirmation of destructive commands: `--confirm NAME` is sent as it is
//! (the server checks it); otherwise a person at a terminal types the name
//! back; a script without `--confirm` is refused.

use std::io::{BufRead, IsTerminal, Write};

/// How a destructive command gets its confirmation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Confirmation {
    /// `--confirm` was given: send it as it is.
    Given(String),
    /// Ask the person at the terminal.
    Ask,
    /// No terminal to ask: refuse.
    Refuse,
}

/// Decides how to confirm, from `--confirm` and whether stdin is a terminal.
pub fn how_to_confirm(flag: Option<&str>, stdin_is_terminal: bool) -> Confirmation {
    match flag {
        Some(name) => Confirmation::Given(name.to_string()),
        None if stdin_is_terminal => Confirmation::Ask,
        None => Confirmation::Refuse,
    }
}

/// The warning shown before asking; `what` says what will happen.
pub fn warning(what: &str, app: &str) -> String {
    format!(
        " !    {what}\n !    This command will affect the app {app}\n !    To proceed, type {app} or run again with --confirm {app}\n"
    )
}

/// Checks the typed answer: the app's name, surrounding spaces ignored.
pub fn check_answer(answer: &str, app: &str) -> anyhow::Result<String> {
    let typed = answer.trim();
    if typed == app {
        Ok(app.to_string())
    } else {
        anyhow::bail!("{typed:?} does not match the app name {app}: nothing was done")
    }
}

/// The whole exchange over the given streams; returns the name to send.
pub fn confirm_with(
    flag: Option<&str>,
    app: &str,
    what: &str,
    stdin_is_terminal: bool,
    input: &mut impl BufRead,
    prompt: &mut impl Write,
) -> anyhow::Result<String> {
    match how_to_confirm(flag, stdin_is_terminal) {
        Confirmation::Given(name) => Ok(name),
        Confirmation::Refuse => {
            anyhow::bail!("this is destructive: run again with --confirm {app}")
        }
        Confirmation::Ask => {
            write!(prompt, "{}\n> ", warning(what, app))?;
            prompt.flush()?;
            let mut line = String::new();
            input.read_line(&mut line)?;
            check_answer(&line, app)
        }
    }
}

/// [`confirm_with`] on the process's stdin, asking on stderr.
pub fn confirm(flag: Option<&str>, app: &str, what: &str) -> anyhow::Result<String> {
    let stdin = std::io::stdin();
    let tty = stdin.is_terminal();
    confirm_with(
        flag,
        app,
        what,
        tty,
        &mut stdin.lock(),
        &mut std::io::stderr(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_is_sent_as_it_is() {
        assert_eq!(
            how_to_confirm(Some("other"), false),
            Confirmation::Given("other".into())
        );
        let mut out = Vec::new();
        let got = confirm_with(Some("x"), "sushi", "w", true, &mut &b""[..], &mut out).unwrap();
        assert_eq!(got, "x");
        assert!(out.is_empty());
    }

    #[test]
    fn a_script_without_the_flag_is_refused() {
        let mut out = Vec::new();
        let e =
            confirm_with(None, "sushi", "w", false, &mut &b"sushi\n"[..], &mut out).unwrap_err();
        assert_eq!(
            e.to_string(),
            "this is destructive: run again with --confirm sushi"
        );
    }

    #[test]
    fn a_person_types_the_name_back() {
        let mut out = Vec::new();
        let got = confirm_with(
            None,
            "sushi",
            "The database WHITE will be destroyed.",
            true,
            &mut &b"  sushi \n"[..],
            &mut out,
        )
        .unwrap();
        assert_eq!(got, "sushi");
        let shown = String::from_utf8(out).unwrap();
        assert!(shown.contains("The database WHITE will be destroyed."));
        assert!(shown.contains("This command will affect the app sushi"));
        assert!(shown.contains("To proceed, type sushi or run again with --confirm sushi"));
    }

    #[test]
    fn a_mistyped_name_does_nothing() {
        let mut out = Vec::new();
        let e = confirm_with(None, "sushi", "w", true, &mut &b"suhsi\n"[..], &mut out).unwrap_err();
        assert!(e.to_string().contains("nothing was done"), "{e}");
        assert!(check_answer("", "sushi").is_err());
    }
}
