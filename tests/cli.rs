//! SPEC §2: `--check`, config lookup, exit codes.

mod common;

use std::process::Command;

use common::{bin, TempDir};

fn run(args: &[&str], cwd: &std::path::Path, env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(bin());
    cmd.args(args)
        .current_dir(cwd)
        .env_remove("REDIS_URL")
        .env_remove("STUDIO_RELAY_CONFIG")
        .env_remove("RUST_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_accepts_the_shipped_config_with_one_line() {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let (code, out, _) = run(&["--check", "--config", "relay.toml"], repo, &[]);
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(
        out.contains("127.0.0.1:4456") && out.contains("127.0.0.1:4457"),
        "{out}"
    );
}

#[test]
fn check_reports_file_line_column_key_and_exits_2() {
    let dir = TempDir::new();
    let path = dir.0.join("bad.toml");
    std::fs::write(&path, "[limits]\nsend_queue = 10\nsend_qeue = 3\n").unwrap();
    let (code, out, err) = run(
        &["--check", "--config", path.to_str().unwrap()],
        &dir.0,
        &[],
    );
    assert_eq!(code, 2);
    assert!(out.is_empty());
    let expected = format!("{}:3:1: limits.send_qeue: ", path.display());
    assert!(err.starts_with(&expected), "{err}");

    std::fs::write(&path, "[[listeners]]\nbind = \"127.0.0.1:99999\"\n").unwrap();
    let (code, _, err) = run(
        &["--check", "--config", path.to_str().unwrap()],
        &dir.0,
        &[],
    );
    assert_eq!(code, 2);
    assert!(
        err.contains(":2:8: listeners[0].bind: port 99999 is out of range (0–65535)"),
        "{err}"
    );
}

#[test]
fn check_says_what_is_wrong_where_a_new_user_trips() {
    let dir = TempDir::new();
    let path = dir.0.join("bad.toml");
    for (text, expected) in [
        // EnvFilter would take this as a target and the relay would log nothing.
        (
            "[log]\nlevel = \"verbose!!\"\n",
            ":2:9: log.level: \"verbose!!\" is not a log level",
        ),
        (
            "[[listeners]]\nbind = \"localhost:9311\"\n",
            ":2:8: listeners[0].bind: hostnames are not accepted, use an IP address (e.g. 127.0.0.1:9311 or [::1]:9311)",
        ),
        (
            "[limits]\nsend_queue = = 3\n",
            ":2:14: limits.send_queue: ",
        ),
        ("[redis\nurl = 1\n", ":1:7: redis: "),
        ("= 3\n", ":1:1: syntax: "),
        (
            "[listeners]\nbind = \"127.0.0.1:1\"\n",
            ":1:1: listeners: write [[listeners]]",
        ),
        (
            "[redis]\nurl = \"localhost:6379\"\n",
            ":2:7: redis.url: missing scheme",
        ),
    ] {
        std::fs::write(&path, text).unwrap();
        let (code, out, err) = run(
            &["--check", "--config", path.to_str().unwrap()],
            &dir.0,
            &[],
        );
        assert_eq!(code, 2, "{text:?}: {out}{err}");
        let expected = format!("{}{expected}", path.display());
        assert!(err.starts_with(&expected), "{text:?}: {err}");
    }
    std::fs::write(&path, "[log]\nlevel = \"studio_relay=debug,info\"\n").unwrap();
    let (code, _, err) = run(
        &["--check", "--config", path.to_str().unwrap()],
        &dir.0,
        &[],
    );
    assert_eq!(code, 0, "{err}");
}

#[test]
fn explicit_missing_config_is_exit_2_and_env_path_is_used() {
    let dir = TempDir::new();
    let (code, _, err) = run(
        &["--check", "--config", "/nonexistent/relay.toml"],
        &dir.0,
        &[],
    );
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent/relay.toml"), "{err}");
    let path = dir.0.join("env.toml");
    std::fs::write(&path, "[[listeners]]\nbind = \"127.0.0.1:5999\"\n").unwrap();
    let (code, out, _) = run(
        &["--check"],
        &dir.0,
        &[("STUDIO_RELAY_CONFIG", path.to_str().unwrap())],
    );
    assert_eq!(code, 0);
    assert!(out.contains("127.0.0.1:5999"), "{out}");
}

#[test]
fn relay_toml_in_cwd_is_found_else_defaults() {
    let dir = TempDir::new();
    let (code, out, _) = run(&["--check"], &dir.0, &[]);
    assert_eq!(code, 0);
    // /etc/studio-relay/relay.toml may exist on a machine where it was installed.
    if !std::path::Path::new("/etc/studio-relay/relay.toml").exists() {
        assert!(
            out.contains("built-in defaults") && out.contains("127.0.0.1:4456"),
            "{out}"
        );
    }
    std::fs::write(
        dir.0.join("relay.toml"),
        "[[listeners]]\nbind = \"127.0.0.1:6001\"\n",
    )
    .unwrap();
    let (code, out, _) = run(&["--check"], &dir.0, &[]);
    assert_eq!(code, 0);
    assert!(out.contains("127.0.0.1:6001"), "{out}");
}

#[test]
fn redis_url_env_overrides_and_password_is_redacted() {
    let dir = TempDir::new();
    let (code, out, _) = run(
        &["--check"],
        &dir.0,
        &[("REDIS_URL", "redis://user:hunter2@10.1.2.3:6380/2")],
    );
    assert_eq!(code, 0);
    assert!(out.contains("10.1.2.3:6380"), "{out}");
    assert!(!out.contains("hunter2"), "{out}");
    let (code, _, err) = run(&["--check"], &dir.0, &[("REDIS_URL", "http://nope")]);
    assert_eq!(code, 2);
    assert!(
        err.contains("$REDIS_URL") && err.contains("redis.url"),
        "{err}"
    );
}

#[test]
fn check_warns_about_overlapping_patterns_on_stderr() {
    let dir = TempDir::new();
    let path = dir.0.join("r.toml");
    std::fs::write(
        &path,
        "[redis]\npatterns = [\"claude-studio:*\", \"claude-studio:agent:*\"]\n",
    )
    .unwrap();
    let (code, out, err) = run(
        &["--check", "--config", path.to_str().unwrap()],
        &dir.0,
        &[],
    );
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 1);
    assert!(err.contains("overlap"), "{err}");

    std::fs::write(
        &path,
        "[limits]\nping_interval_ms = 60000\nidle_timeout_ms = 30000\n",
    )
    .unwrap();
    let (code, out, err) = run(
        &["--check", "--config", path.to_str().unwrap()],
        &dir.0,
        &[],
    );
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 1);
    assert!(err.contains("limits.idle_timeout_ms"), "{err}");
}

#[test]
fn port_in_use_is_exit_1_and_names_the_address() {
    let dir = TempDir::new();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let path = dir.0.join("r.toml");
    std::fs::write(
        &path,
        format!("[redis]\nurl = \"redis://127.0.0.1:1\"\n[[listeners]]\nbind = \"{addr}\"\n"),
    )
    .unwrap();
    let (code, _, err) = run(&["--config", path.to_str().unwrap()], &dir.0, &[]);
    assert_eq!(code, 1);
    assert!(err.contains(&addr.to_string()), "{err}");
    assert_eq!(
        err.matches("os error").count(),
        1,
        "the OS error once: {err}"
    );
}
