//! Enrollment and revocation with the real binaries: a one-time token exchanged for a
//! certificate, reused / expired / unknown / foreign tokens refused with a clear error and
//! counted, a revoked agent refused at its next connection.

use std::path::PathBuf;
use std::time::Duration;

use pathpulse_tests::{bin, run, wait_for};

use crate::setup::{Deployment, value};

fn token(d: &Deployment, ttl: &str) -> String {
    let (code, text) = run(
        &bin("pathpulse-aggregator"),
        &[
            "token",
            "create",
            "--ttl",
            ttl,
            "--state-dir",
            d.state().to_str().expect("utf-8"),
        ],
    );
    assert_eq!(code, 0, "token create: {text}");
    text.lines()
        .find(|l| l.starts_with("pp1."))
        .unwrap_or_else(|| panic!("no token in:\n{text}"))
        .to_string()
}

/// `pathpulse-agent enroll`: (exit code, output, the agent's state directory).
fn enroll(d: &Deployment, name: &str, token: &str) -> (i32, String, PathBuf) {
    let state = d.dir.path().join(format!("{name}-state"));
    let (code, text) = run(
        &bin("pathpulse-agent"),
        &[
            "enroll",
            "--aggregator",
            &format!("127.0.0.1:{}", d.quic),
            "--token",
            token,
            "--name",
            name,
            "--state-dir",
            state.to_str().expect("utf-8"),
            "--force",
        ],
    );
    (code, text, state)
}

fn refused(d: &Deployment, reason: &str) -> f64 {
    value(
        &d.metrics(),
        "pathpulse_ingest_refused_total",
        &[("reason", reason)],
    )
    .unwrap_or(0.0)
}

#[test]
fn an_agent_enrolled_with_a_token_reports() {
    let d = Deployment::start();
    let t = token(&d, "10m");
    let (code, text, state) = enroll(&d, "enr-1", &t);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("enrolled as `enr-1`"), "{text}");
    use std::os::unix::fs::PermissionsExt;
    let key = state.join("identity/agent.key");
    let mode = std::fs::metadata(&key).expect("key").permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the key is private");
    let target = format!("tcp:127.0.0.1:{}", d.http);
    let a = d.agent("enr-1", &state, &[&target], &[]);
    wait_for(Duration::from_secs(20), || {
        value(
            &d.metrics(),
            "pathpulse_probes_sent_total",
            &[("src", "enr-1")],
        )
        .filter(|v| *v >= 5.0)
    })
    .unwrap_or_else(|| panic!("enrolled agent reporting; log:\n{}", a.log()));
    assert_eq!(
        value(&d.metrics(), "pathpulse_enrollments_total", &[]),
        Some(1.0)
    );
}

#[test]
fn reused_expired_unknown_and_foreign_tokens_are_refused_and_counted() {
    let d = Deployment::start();
    let t = token(&d, "10m");
    let (code, text, _) = enroll(&d, "enr-a", &t);
    assert_eq!(code, 0, "{text}");

    let (code, text, state) = enroll(&d, "enr-b", &t);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("token_reused") && text.contains("already used") && text.contains("enr-a"),
        "{text}"
    );
    assert!(
        !state.join("identity/agent.crt").exists(),
        "nothing written"
    );
    assert_eq!(refused(&d, "token_reused"), 1.0);

    let short = token(&d, "1s");
    std::thread::sleep(Duration::from_millis(1500));
    let (code, text, _) = enroll(&d, "enr-c", &short);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("token_expired") && text.contains("expired"),
        "{text}"
    );
    assert_eq!(refused(&d, "token_expired"), 1.0);

    let fp = t.rsplit('.').next().expect("fingerprint");
    let unknown = format!("pp1.{}.{fp}", "0".repeat(32));
    let (code, text, _) = enroll(&d, "enr-d", &unknown);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("token_unknown"), "{text}");
    assert_eq!(refused(&d, "token_unknown"), 1.0);

    // A token naming another CA: the agent refuses the aggregator before sending anything,
    // so the token's secret stays unused.
    let fresh = token(&d, "10m");
    let secret = fresh.split('.').nth(1).expect("secret");
    let foreign = format!("pp1.{secret}.{}", "ab".repeat(32));
    let (code, text, _) = enroll(&d, "enr-e", &foreign);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("does not match the token's fingerprint"),
        "{text}"
    );
    let (code, text, _) = enroll(&d, "enr-e", &fresh);
    assert_eq!(code, 0, "the secret was not spent: {text}");

    // Not a token at all: a usage error, exit 78, nothing sent.
    let (code, text, _) = enroll(&d, "enr-f", "hello");
    assert_eq!(code, 78, "{text}");
    assert!(text.contains("not a pathpulse enrollment token"), "{text}");
    assert_eq!(
        value(&d.metrics(), "pathpulse_enrollments_total", &[]),
        Some(2.0)
    );
    // No token secret in the aggregator's log, used, reused, expired or refused.
    let log = d.aggregator.as_ref().expect("aggregator").log();
    for tok in [&t, &short, &fresh] {
        let secret = tok.split('.').nth(1).expect("secret");
        assert!(!log.contains(secret), "a token secret was logged:\n{log}");
    }
}

#[test]
fn a_revoked_agent_is_refused_at_its_next_connection_and_can_enroll_again() {
    let d = Deployment::start();
    let (code, text, state) = enroll(&d, "enr-r", &token(&d, "10m"));
    assert_eq!(code, 0, "{text}");
    let target = format!("tcp:127.0.0.1:{}", d.http);
    let mut a = d.agent("enr-r", &state, &[&target], &[]);
    wait_for(Duration::from_secs(20), || {
        value(&d.metrics(), "pathpulse_agent_up", &[("agent", "enr-r")]).filter(|v| *v == 1.0)
    })
    .expect("reporting");
    // Revoked while the aggregator runs (another process writes its state).
    let (code, text) = run(
        &bin("pathpulse-aggregator"),
        &[
            "cert",
            "revoke",
            "--name",
            "enr-r",
            "--state-dir",
            d.state().to_str().expect("utf-8"),
        ],
    );
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("revoked 1 certificate"), "{text}");
    // The next connection: restart the agent.
    a.kill9();
    let b = d.agent("enr-r", &state, &[&target], &[]);
    wait_for(Duration::from_secs(20), || {
        (refused(&d, "revoked") >= 1.0 && b.log().contains("refused (revoked)")).then_some(())
    })
    .unwrap_or_else(|| panic!("revoked agent refused; log:\n{}", b.log()));
    drop(b);
    // Revoking a name nobody has is an error, not a silent success.
    let (code, text) = run(
        &bin("pathpulse-aggregator"),
        &[
            "cert",
            "revoke",
            "--name",
            "nobody",
            "--state-dir",
            d.state().to_str().expect("utf-8"),
        ],
    );
    assert_eq!(code, 1, "{text}");
    // A new token, a new certificate (new serial): accepted again.
    let (code, text, state) = enroll(&d, "enr-r", &token(&d, "10m"));
    assert_eq!(code, 0, "{text}");
    let before = value(
        &d.metrics(),
        "pathpulse_probes_sent_total",
        &[("src", "enr-r")],
    )
    .unwrap_or(0.0);
    let c = d.agent("enr-r", &state, &[&target], &[]);
    wait_for(Duration::from_secs(20), || {
        value(
            &d.metrics(),
            "pathpulse_probes_sent_total",
            &[("src", "enr-r")],
        )
        .filter(|v| *v >= before + 5.0)
    })
    .unwrap_or_else(|| panic!("re-enrolled agent reporting; log:\n{}", c.log()));
}

#[test]
fn cert_issue_certificates_can_be_revoked_too() {
    let d = Deployment::start();
    let state = d.issue("enr-ci", &d.state());
    let (code, text) = run(
        &bin("pathpulse-aggregator"),
        &[
            "cert",
            "revoke",
            "--name",
            "enr-ci",
            "--state-dir",
            d.state().to_str().expect("utf-8"),
        ],
    );
    assert_eq!(code, 0, "{text}");
    let target = format!("tcp:127.0.0.1:{}", d.http);
    let a = d.agent("enr-ci", &state, &[&target], &[]);
    wait_for(Duration::from_secs(20), || {
        (refused(&d, "revoked") >= 1.0).then_some(())
    })
    .unwrap_or_else(|| panic!("refused; log:\n{}", a.log()));
    assert!(
        value(&d.metrics(), "pathpulse_agent_up", &[("agent", "enr-ci")]).is_none(),
        "no report from a revoked certificate"
    );
}

#[test]
fn a_certificate_near_expiry_is_renewed_and_the_new_one_is_used() {
    let d = Deployment::start();
    let state = d.dir.path().join("enr-n");
    let (code, text) = run(
        &bin("pathpulse-aggregator"),
        &[
            "cert",
            "issue",
            "--name",
            "enr-n",
            "--out",
            state.join("identity").to_str().expect("utf-8"),
            "--valid-for",
            "10m",
            "--state-dir",
            d.state().to_str().expect("utf-8"),
        ],
    );
    assert_eq!(code, 0, "{text}");
    let crt = state.join("identity/agent.crt");
    let old = std::fs::read_to_string(&crt).expect("crt");
    let target = format!("tcp:127.0.0.1:{}", d.http);
    let mut a = d.agent("enr-n", &state, &[&target], &[]);
    wait_for(Duration::from_secs(20), || {
        (a.log().contains("certificate renewed")
            && std::fs::read_to_string(&crt).is_ok_and(|c| c != old))
        .then_some(())
    })
    .unwrap_or_else(|| panic!("renewed; log:\n{}", a.log()));
    assert_eq!(
        value(&d.metrics(), "pathpulse_certificates_renewed_total", &[]),
        Some(1.0)
    );
    // The new certificate and key work: a restarted agent connects with them.
    a.kill9();
    let before = value(
        &d.metrics(),
        "pathpulse_probes_sent_total",
        &[("src", "enr-n")],
    )
    .unwrap_or(0.0);
    let b = d.agent("enr-n", &state, &[&target], &[]);
    wait_for(Duration::from_secs(20), || {
        value(
            &d.metrics(),
            "pathpulse_probes_sent_total",
            &[("src", "enr-n")],
        )
        .filter(|v| *v >= before + 5.0)
    })
    .unwrap_or_else(|| panic!("reporting with the renewed certificate; log:\n{}", b.log()));
    assert!(!b.log().contains("certificate renewed"), "not due any more");
    assert_eq!(
        value(&d.metrics(), "pathpulse_certificates_renewed_total", &[]),
        Some(1.0)
    );
    // A renewed certificate is revoked with the others of its name.
    let (code, text) = run(
        &bin("pathpulse-aggregator"),
        &[
            "cert",
            "revoke",
            "--name",
            "enr-n",
            "--state-dir",
            d.state().to_str().expect("utf-8"),
        ],
    );
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("revoked 2 certificate"), "{text}");
}

/// `openssl ARGS` in `dir`; panics with its output when it fails.
fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An operator's CA made by another tool (openssl) is imported before the first start and
/// signs the agents' certificates; a leaf certificate, a key that is not the CA's and a
/// second CA over the first are refused naming why.
#[test]
fn an_operators_ca_is_imported_and_signs_the_agents_certificates() {
    if !pathpulse_tests::require_program("an_operators_ca_is_imported", "openssl") {
        return;
    }
    let mut d = Deployment::unstarted_shared();
    let ops = d.dir.path().join("ops");
    std::fs::create_dir_all(&ops).expect("dir");
    for (name, ca) in [("ca", true), ("other", true)] {
        let mut args = vec![
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "30",
            "-keyout",
        ];
        let (key, crt, subj) = (
            format!("{name}.key"),
            format!("{name}.crt"),
            format!("/CN=ops {name}"),
        );
        args.extend([key.as_str(), "-out", crt.as_str(), "-subj", subj.as_str()]);
        if ca {
            args.extend([
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ]);
        }
        openssl(&ops, &args);
    }
    // A leaf certificate signed by the CA: not a CA itself.
    openssl(
        &ops,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "leaf.key",
            "-out",
            "leaf.csr",
            "-subj",
            "/CN=leaf",
        ],
    );
    openssl(
        &ops,
        &[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-days",
            "30",
            "-out",
            "leaf.crt",
            "-extfile",
            "/dev/null",
        ],
    );
    let state = d.state();
    let import = |crt: &str, key: &str| {
        run(
            &bin("pathpulse-aggregator"),
            &[
                "cert",
                "import-ca",
                "--cert",
                ops.join(crt).to_str().expect("utf-8"),
                "--key",
                ops.join(key).to_str().expect("utf-8"),
                "--state-dir",
                state.to_str().expect("utf-8"),
            ],
        )
    };
    let (code, text) = import("leaf.crt", "leaf.key");
    assert_eq!(code, 78, "{text}");
    assert!(text.contains("not a CA"), "{text}");
    let (code, text) = import("ca.crt", "other.key");
    assert_eq!(code, 78, "{text}");
    assert!(
        text.contains("private key is not the CA certificate's"),
        "{text}"
    );
    assert!(
        !state.join("ca").exists(),
        "nothing written after a refusal"
    );
    let (code, text) = import("ca.crt", "ca.key");
    assert_eq!(code, 0, "{text}");
    // The fingerprint printed is openssl's, in another spelling.
    let fp = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(ops.join("ca.crt"))
        .output()
        .expect("openssl");
    let fp = String::from_utf8_lossy(&fp.stdout)
        .to_lowercase()
        .replace(':', "");
    let fp = fp
        .trim()
        .rsplit('=')
        .next()
        .expect("fingerprint")
        .to_string();
    assert!(text.contains(&fp), "{text} vs {fp}");
    let (code, text) = import("ca.crt", "ca.key");
    assert_eq!(code, 0, "the same CA again is a no-op: {text}");
    let (code, text) = import("other.crt", "other.key");
    assert_eq!(code, 78, "{text}");
    assert!(text.contains("another CA is already installed"), "{text}");

    d.start_aggregator();
    let agent_state = d.issue("ops-1", &state);
    openssl(
        &ops,
        &[
            "verify",
            "-CAfile",
            "ca.crt",
            agent_state
                .join("identity/agent.crt")
                .to_str()
                .expect("utf-8"),
        ],
    );
    let target = format!("tcp:127.0.0.1:{}", d.http);
    let a = d.agent("ops-1", &agent_state, &[&target], &[]);
    wait_for(Duration::from_secs(20), || {
        value(
            &d.metrics(),
            "pathpulse_probes_sent_total",
            &[("src", "ops-1")],
        )
        .filter(|v| *v >= 3.0)
    })
    .unwrap_or_else(|| {
        panic!(
            "agent with a certificate from the operator's CA reporting; log:\n{}",
            a.log()
        )
    });
}
