//! Every monitorctl subcommand given wrong values: bad durations, negative and huge numbers,
//! unknown enum values, missing files, directories where files go and files where directories
//! go. Each gets a clear message on stderr (or, for a scan, in its report) and its exit code:
//! 2 for clap's usage errors and for a scan that could not be done, 1 for a daemon command
//! with no daemon, 125/126/127 for `run`; never a panic.

use std::process::Command;

/// Where no daemon listens.
const NO_SOCKET: &str = "/nonexistent/monitord.sock";

struct Case {
    args: Vec<String>,
    code: i32,
    /// Must appear in stderr (or stdout: a scan's report says why it failed).
    says: &'static str,
}

fn case(args: &[&str], code: i32, says: &'static str) -> Case {
    Case {
        args: args.iter().map(|s| s.to_string()).collect(),
        code,
        says,
    }
}

fn cases(file: &str, dir: &str) -> Vec<Case> {
    let scan = |extra: &[&str], code, says| {
        let mut args = vec!["scan", "--local"];
        args.extend_from_slice(extra);
        case(&args, code, says)
    };
    let run = |extra: &[&str], code, says| {
        let mut args = vec!["run"];
        args.extend_from_slice(extra);
        case(&args, code, says)
    };
    vec![
        // Durations.
        scan(&["--timeout", "5x", file], 2, "unknown unit `x`"),
        scan(&["--linger", "2x", file], 2, "unknown unit `x`"),
        scan(&["--linger", "10m", file], 2, "at most 1m"),
        scan(&["--linger", "-1", file], 2, "unexpected argument '-1'"),
        scan(&["--no-audit", "--audit", file], 2, "cannot be used with"),
        scan(
            &["--no-exercise", "--exercise", file],
            2,
            "cannot be used with",
        ),
        scan(&["--timeout", "0", file], 2, "greater than zero"),
        scan(&["--timeout", "-3", file], 2, "unexpected argument '-3'"),
        scan(&["--timeout", "soon", file], 2, "is not a duration"),
        scan(
            &["--timeout", "99999999999999999999", file],
            2,
            "longer than any",
        ),
        scan(&["--timeout", "1e400", file], 2, "--timeout"),
        scan(&["--timeout", "", file], 2, "--timeout"),
        run(&["--timeout", "1h2", "--", "true"], 2, "unknown unit `h2`"),
        run(&["--timeout", "NaN", "--", "true"], 2, "--timeout"),
        // Numbers.
        scan(
            &["--max-size-mib", "-1", file],
            2,
            "unexpected argument '-1'",
        ),
        scan(&["--max-size-mib", "lots", file], 2, "--max-size-mib"),
        scan(
            &["--max-size-mib", "99999999999999999999999", file],
            2,
            "--max-size-mib",
        ),
        scan(&["--ring-buffer-kib", "3", file], 2, "power of two"),
        scan(&["--ring-buffer-kib", "abc", file], 2, "--ring-buffer-kib"),
        run(&["--ring-buffer-kib", "0", "--", "true"], 2, "power of two"),
        run(
            &["--ring-buffer-kib", "4294967296", "--", "true"],
            2,
            "--ring-buffer-kib",
        ),
        // Enumerations.
        scan(
            &["--format", "xml", file],
            2,
            "possible values: text, json, sarif",
        ),
        scan(&["--fail-on", "loud", file], 2, "one of: info, low"),
        run(&["--trace", "nonsense", "--", "true"], 2, "unknown class"),
        case(&["completions", "tcsh"], 2, "possible values"),
        case(
            &[
                "reports",
                "list",
                "--verdict",
                "evil",
                "--socket",
                NO_SOCKET,
            ],
            2,
            "one of: clean",
        ),
        case(
            &[
                "reports",
                "export",
                "--verdict",
                "evil",
                "--socket",
                NO_SOCKET,
            ],
            2,
            "one of: clean",
        ),
        case(
            &[
                "reports", "show", "x", "--format", "pdf", "--socket", NO_SOCKET,
            ],
            2,
            "possible values",
        ),
        case(
            &["reports", "list", "--limit", "-1", "--socket", NO_SOCKET],
            2,
            "unexpected argument",
        ),
        case(
            &["watch", "add", "--pid", "-5", "--socket", NO_SOCKET],
            2,
            "unexpected argument",
        ),
        case(
            &["watch", "add", "--pid", "abc", "--socket", NO_SOCKET],
            2,
            "--pid",
        ),
        case(
            &[
                "watch",
                "add",
                "--pid",
                "2",
                "--kill-at",
                "loud",
                "--socket",
                NO_SOCKET,
            ],
            2,
            "one of info",
        ),
        // Unknown and missing arguments.
        case(&["bogus"], 2, "unrecognized subcommand"),
        case(&["scan"], 2, "required arguments"),
        case(&["run"], 2, "required arguments"),
        scan(
            &["--bogus-flag", file],
            2,
            "unexpected argument '--bogus-flag'",
        ),
        // Files that are missing, or directories, or files where a directory goes.
        scan(&["/no/such/model.pkl"], 2, "no such file or directory"),
        scan(&["/dev/null"], 2, "character device"),
        // A directory is searched for artifacts (a snapshot); one with none is an error.
        scan(&[dir], 2, "no model artifact to scan"),
        scan(&["--rules", "/no/such.yaml", file], 2, "/no/such.yaml"),
        scan(&["--rules", dir, file], 2, "Is a directory"),
        scan(
            &["--report-file", "/no/dir/r.json", file],
            2,
            "/no/dir/r.json",
        ),
        scan(&["--report-file", dir, file], 2, "Is a directory"),
        run(
            &["--output", "/no/dir/trace", "--", "true"],
            125,
            "/no/dir/trace",
        ),
        run(&["--rules", file, "--", "true"], 125, ":1:"),
        run(&["--cwd", file, "--", "true"], 126, "Not a directory"),
        run(
            &["--", "/no/such/program"],
            127,
            "No such file or directory",
        ),
        // Daemon commands with no daemon: exit 1, saying so.
        case(&["status", "--socket", NO_SOCKET], 1, "no daemon answers"),
        case(&["status", "--socket", dir], 1, "no daemon answers"),
        case(
            &["rules", "reload", "--socket", file],
            1,
            "no daemon answers",
        ),
        case(
            &["watch", "list", "--socket", NO_SOCKET],
            1,
            "no daemon answers",
        ),
        case(
            &["scan", "--socket", NO_SOCKET, file],
            2,
            "no daemon answers",
        ),
    ]
}

#[test]
fn wrong_values_get_a_clear_error_and_their_exit_code_never_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("notes.txt");
    std::fs::write(&file, "not a model, not a rule file\n").unwrap();
    let (file, dir_path) = (file.display().to_string(), dir.path().display().to_string());
    let mut wrong = Vec::new();
    for Case { args, code, says } in cases(&file, &dir_path) {
        let out = Command::new(env!("CARGO_BIN_EXE_monitorctl"))
            .args(&args)
            .env_remove("MONITOR_SOCKET")
            .output()
            .expect("start monitorctl");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        if stderr.contains("panicked at") || out.status.code() == Some(101) {
            wrong.push(format!("{args:?} panicked: {stderr}"));
        } else if out.status.code() != Some(code) {
            wrong.push(format!(
                "{args:?}: exit {:?}, not {code}: {stderr}",
                out.status.code()
            ));
        } else if !stderr.contains(says) && !stdout.contains(says) {
            wrong.push(format!("{args:?}: no `{says}` in\n{stderr}{stdout}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n\n"));
}
