//! HTTP API roles with the real binary: no token, an unknown, a revoked or a too-weak token
//! are refused (401 / 403, JSON error, `pathpulse_http_refused_total{reason}`); a read
//! token reads, an admin token writes (tokens, agent revocation, reload); the page signs in
//! once with `/?token=` and works from its cookie; `/metrics` open or protected by config.

use std::time::Duration;

use pathpulse_tests::{bin, free_port, parse_metrics, run, wait_for};

use crate::setup::{Deployment, value};

struct Answer {
    status: u16,
    body: String,
    headers: ureq::http::HeaderMap,
}

impl Answer {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

/// One request: `auth` becomes `Authorization: Bearer …`, `cookie` a `Cookie` header.
fn call(method: &str, url: &str, auth: Option<&str>, cookie: Option<&str>, body: &str) -> Answer {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(5)))
        .http_status_as_error(false)
        .max_redirects(0)
        .build()
        .into();
    let mut req = ureq::http::Request::builder().method(method).uri(url);
    if let Some(t) = auth {
        req = req.header("Authorization", format!("Bearer {t}"));
    }
    if let Some(c) = cookie {
        req = req.header("Cookie", c);
    }
    let mut resp = if body.is_empty() {
        agent.run(req.body(()).expect("request"))
    } else {
        agent.run(req.body(body.to_string()).expect("request"))
    }
    .expect("HTTP exchange");
    Answer {
        status: resp.status().as_u16(),
        headers: resp.headers().clone(),
        body: resp.body_mut().read_to_string().unwrap_or_default(),
    }
}

fn cli_token(d: &Deployment, role: &str) -> String {
    let (code, text) = run(
        &bin("pathpulse-aggregator"),
        &[
            "token",
            "create",
            "--role",
            role,
            "--state-dir",
            d.state().to_str().expect("utf-8"),
        ],
    );
    assert_eq!(code, 0, "{text}");
    let token = text
        .lines()
        .find(|l| l.starts_with("ppapi_"))
        .unwrap_or_else(|| panic!("no token printed: {text}"))
        .to_string();
    assert!(text.contains(role), "{text}");
    token
}

fn refused(d: &Deployment, reason: &str) -> f64 {
    value(
        &d.metrics(),
        "pathpulse_http_refused_total",
        &[("reason", reason)],
    )
    .unwrap_or(-1.0)
}

#[test]
fn api_roles_refuse_without_the_right_token_and_admin_writes() {
    let d = Deployment::start_with(&["--http-auth", "token"]);
    let url = |p: &str| d.url(p);
    let admin = cli_token(&d, "admin");

    // No token, a made-up one: 401 with a JSON reason and a challenge.
    let a = call("GET", &url("/api/mesh"), None, None, "");
    assert_eq!(a.status, 401, "{}", a.body);
    assert_eq!(a.json()["reason"], "missing_token");
    assert!(a.headers.contains_key("www-authenticate"));
    let fake = "ppapi_00000000_00000000000000000000000000000000";
    let a = call("GET", &url("/api/agents"), Some(fake), None, "");
    assert_eq!(
        (a.status, a.json()["reason"].clone()),
        (401, "unknown_token".into())
    );

    // The admin makes a read token over the API; it reads and cannot write.
    let a = call(
        "POST",
        &url("/api/tokens"),
        Some(&admin),
        None,
        r#"{"role":"read"}"#,
    );
    assert_eq!(a.status, 201, "{}", a.body);
    let (read, read_id) = (
        a.json()["token"].as_str().expect("token").to_string(),
        a.json()["id"].as_str().expect("id").to_string(),
    );
    for p in ["/api/mesh", "/api/agents", "/api/alerts", "/"] {
        let a = call("GET", &url(p), Some(&read), None, "");
        assert_eq!(a.status, 200, "{p}: {}", a.body);
    }
    for (m, p, body) in [
        ("POST", "/api/tokens", r#"{"role":"admin"}"#),
        ("POST", "/api/reload", ""),
        ("DELETE", "/api/tokens/whatever", ""),
        ("POST", "/api/agents/x/revoke", ""),
    ] {
        let a = call(m, &url(p), Some(&read), None, body);
        assert_eq!(a.status, 403, "{m} {p}: {}", a.body);
        assert_eq!(a.json()["reason"], "forbidden");
        assert!(a.json()["error"].as_str().expect("error").contains("admin"));
    }
    let a = call("POST", &url("/api/reload"), None, None, "");
    assert_eq!(a.status, 401, "a write without any token");
    let a = call("POST", &url("/api/reload"), Some(&admin), None, "");
    assert_eq!((a.status, a.json()["reloaded"].clone()), (200, true.into()));
    let a = call(
        "POST",
        &url("/api/tokens"),
        Some(&admin),
        None,
        r#"{"role":"root"}"#,
    );
    assert_eq!(a.status, 400, "{}", a.body);

    // The page: sign in once, then the cookie carries reads (never writes).
    let signin = call("GET", &url(&format!("/?token={read}")), None, None, "");
    assert_eq!(signin.status, 303, "{}", signin.body);
    let set = signin.headers["set-cookie"]
        .to_str()
        .expect("ascii")
        .to_string();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    let cookie = set.split(';').next().expect("cookie").to_string();
    for p in ["/", "/api/mesh", "/assets/app.js"] {
        let a = call("GET", &url(p), None, Some(&cookie), "");
        assert_eq!(a.status, 200, "{p} with the cookie: {}", a.body);
    }
    let admin_cookie = format!("pathpulse_token={admin}");
    let a = call("POST", &url("/api/reload"), None, Some(&admin_cookie), "");
    assert_eq!(a.status, 401, "a cookie never writes");
    let bad = call("GET", &url("/?token=nope"), None, None, "");
    assert_eq!(bad.status, 401, "a bad token does not sign in");

    // Revoking the read token: refused from its next request, header or cookie.
    let a = call(
        "DELETE",
        &url(&format!("/api/tokens/{read_id}")),
        Some(&admin),
        None,
        "",
    );
    assert_eq!(a.status, 200, "{}", a.body);
    let a = call("GET", &url("/api/mesh"), Some(&read), None, "");
    assert_eq!(
        (a.status, a.json()["reason"].clone()),
        (401, "revoked_token".into())
    );
    let a = call("GET", &url("/api/mesh"), None, Some(&cookie), "");
    assert_eq!(a.status, 401);
    let a = call("DELETE", &url("/api/tokens/nope"), Some(&admin), None, "");
    assert_eq!(a.status, 404);
    let a = call("GET", &url("/api/tokens"), Some(&admin), None, "");
    let listed = a.json()["tokens"].as_array().expect("tokens").len();
    assert!(
        listed >= 2 && !a.body.contains(&read),
        "ids, never secrets: {}",
        a.body
    );

    // Revoking an agent over the API: its next connection is refused.
    let state = d.issue("auth-a", &d.state());
    let a = call(
        "POST",
        &url("/api/agents/auth-a/revoke"),
        Some(&admin),
        None,
        "",
    );
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(
        a.json()["revoked_serials"].as_array().map(Vec::len),
        Some(1)
    );
    let a = call(
        "POST",
        &url("/api/agents/nobody/revoke"),
        Some(&admin),
        None,
        "",
    );
    assert_eq!(a.status, 404);
    let agent = d.agent("auth-a", &state, &["tcp:127.0.0.1:9"], &[]);
    wait_for(Duration::from_secs(20), || {
        (value(
            &d.metrics(),
            "pathpulse_ingest_refused_total",
            &[("reason", "revoked")],
        )? >= 1.0)
            .then_some(())
    })
    .unwrap_or_else(|| panic!("revoked agent not refused; log:\n{}", agent.log()));

    // Every refusal counted by reason (/metrics is open by default).
    assert!(refused(&d, "missing_token") >= 2.0);
    assert!(refused(&d, "unknown_token") >= 2.0);
    assert!(refused(&d, "forbidden") >= 4.0);
    assert!(refused(&d, "revoked_token") >= 2.0);
    // No secret in the log.
    let log = d.aggregator.as_ref().expect("aggregator").log();
    assert!(
        !log.contains(&admin) && !log.contains(&read),
        "a token was logged"
    );
}

#[test]
fn metrics_open_or_token_protected_by_config_and_bad_modes_exit_78() {
    let mut d = Deployment::start_with(&["--metrics-auth", "token"]);
    let read = cli_token(&d, "read");
    let a = call("GET", &d.url("/metrics"), None, None, "");
    assert_eq!(
        (a.status, a.json()["reason"].clone()),
        (401, "missing_token".into())
    );
    let a = call("GET", &d.url("/metrics"), Some(&read), None, "");
    assert_eq!(a.status, 200);
    let m = parse_metrics(&a.body);
    assert_eq!(
        value(
            &m,
            "pathpulse_http_refused_total",
            &[("reason", "missing_token")]
        ),
        Some(1.0)
    );
    // The page and API stay open on loopback by default; health always.
    assert_eq!(call("GET", &d.url("/api/mesh"), None, None, "").status, 200);
    assert_eq!(call("GET", &d.url("/healthz"), None, None, "").status, 200);
    // Back to the default: open.
    d.args.clear();
    drop(d.aggregator.take());
    d.start_aggregator();
    assert_eq!(call("GET", &d.url("/metrics"), None, None, "").status, 200);

    let (code, text) = run(
        &bin("pathpulse-aggregator"),
        &[
            "run",
            "--http",
            &format!("127.0.0.1:{}", free_port()),
            "--http-auth",
            "maybe",
            "--state-dir",
            d.state().to_str().expect("utf-8"),
        ],
    );
    assert_eq!(code, 78, "{text}");
    assert!(text.contains("http.auth"), "{text}");
}
