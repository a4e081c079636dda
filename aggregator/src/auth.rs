//! Who may use the HTTP side. Bearer tokens with a role (`read`, `admin`; see `tokens`):
//! the page and `/api/*` reads need `read` or `admin` when `auth = "token"`, every write
//! needs `admin` whatever the mode, and `/metrics` needs a token when `metrics_auth =
//! "token"`. `/healthz` and `/readyz` stay open (liveness probes). Refusals answer 401
//! (no token, unknown, expired or revoked) or 403 (a role too low) with a JSON error, and
//! are counted in `pathpulse_http_refused_total{reason}`. Tokens are never logged.
//!
//! A browser cannot put a header on the page's own requests (`EventSource` cannot at all),
//! so `/?token=…` checks a token once, stores it in an `HttpOnly`, `SameSite=Strict`
//! cookie and redirects to `/`. The cookie counts for reads only: a write always needs the
//! `Authorization` header, so a page from elsewhere cannot make the browser write.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::state::StateDb;
use crate::tokens::ApiRole;

pub const COOKIE: &str = "pathpulse_token";

/// Whether a part of the HTTP side needs a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    Open,
    Token,
}

impl AuthMode {
    pub fn parse(s: &str) -> Option<AuthMode> {
        match s {
            "open" => Some(AuthMode::Open),
            "token" => Some(AuthMode::Token),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AuthMode::Open => "open",
            AuthMode::Token => "token",
        }
    }
}

/// `pathpulse_http_refused_total{reason}`.
pub type Refused = pathpulse_metrics::http_limit::Refused;

/// Reasons counted (all present from the start, at 0).
pub const REASONS: [&str; 6] = [
    "missing_token",
    "unknown_token",
    "expired_token",
    "revoked_token",
    "forbidden",
    "error",
];

pub struct HttpAuth {
    pub api: AuthMode,
    pub metrics: AuthMode,
    pub state: Arc<StateDb>,
    pub refused: Refused,
}

impl HttpAuth {
    pub fn new(api: AuthMode, metrics: AuthMode, state: Arc<StateDb>) -> HttpAuth {
        let refused = Refused::default();
        for r in REASONS {
            let _ = refused.get_or_create(&vec![("reason".into(), r.into())]);
        }
        HttpAuth {
            api,
            metrics,
            state,
            refused,
        }
    }

    fn refuse(&self, status: StatusCode, reason: &str, error: String) -> Response {
        self.refused
            .get_or_create(&vec![("reason".into(), reason.into())])
            .inc();
        let body = serde_json::json!({ "error": error, "reason": reason }).to_string();
        let mut r = (status, [(header::CONTENT_TYPE, "application/json")], body).into_response();
        if status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"pathpulse\""),
            );
        }
        r
    }

    /// The role of `token`, or the refusal to answer.
    fn role_of(&self, token: &str) -> Result<ApiRole, Box<Response>> {
        match self.state.check_api_token(token) {
            Ok(Ok(role)) => Ok(role),
            Ok(Err(e)) => Err(Box::new(self.refuse(
                StatusCode::UNAUTHORIZED,
                e.reason(),
                format!("{e}: make one with `pathpulse-aggregator token create --role read`"),
            ))),
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "cannot read the API tokens");
                Err(Box::new(self.refuse(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "error",
                    "the aggregator cannot check tokens now".into(),
                )))
            }
        }
    }
}

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// The page and `/api/*` reads: `read` or `admin` when `auth = "token"`.
    Read,
    /// Writes: `admin`, in every mode, from the `Authorization` header only.
    Admin,
    /// `/metrics`: `read` or `admin` when `metrics_auth = "token"`.
    Metrics,
}

#[derive(Clone)]
pub struct Guard {
    pub auth: Arc<HttpAuth>,
    pub need: Need,
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
}

fn cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(COOKIE)?.strip_prefix('='))
}

fn query_token(req: &Request) -> Option<&str> {
    req.uri()
        .query()?
        .split('&')
        .find_map(|kv| kv.strip_prefix("token="))
}

/// The middleware (`axum::middleware::from_fn_with_state(guard, check)`).
pub async fn check(State(g): State<Guard>, req: Request, next: Next) -> Response {
    let auth = &g.auth;
    let mode = match g.need {
        Need::Read => auth.api,
        Need::Metrics => auth.metrics,
        Need::Admin => AuthMode::Token,
    };
    // The page's sign-in: check once, keep in a cookie, drop the token from the address.
    if g.need == Need::Read
        && req.uri().path() == "/"
        && let Some(t) = query_token(&req)
    {
        if let Err(refused) = auth.role_of(t) {
            return *refused;
        }
        let set = format!("{COOKIE}={t}; HttpOnly; SameSite=Strict; Path=/");
        let Ok(set) = HeaderValue::from_str(&set) else {
            return auth.refuse(
                StatusCode::UNAUTHORIZED,
                "unknown_token",
                "unknown token".into(),
            );
        };
        return (
            StatusCode::SEE_OTHER,
            [
                (header::LOCATION, HeaderValue::from_static("/")),
                (header::SET_COOKIE, set),
            ],
        )
            .into_response();
    }
    if mode == AuthMode::Open {
        return next.run(req).await;
    }
    let presented = bearer(req.headers()).or(match g.need {
        Need::Admin => None,
        _ => cookie(req.headers()),
    });
    let Some(token) = presented else {
        let how = match g.need {
            Need::Admin => "this needs an admin token: `Authorization: Bearer TOKEN`",
            Need::Read => {
                "this needs a read or admin token: `Authorization: Bearer TOKEN`, or open /?token=TOKEN once in a browser"
            }
            Need::Metrics => "metrics_auth is \"token\": `Authorization: Bearer TOKEN`",
        };
        return auth.refuse(StatusCode::UNAUTHORIZED, "missing_token", how.into());
    };
    let role = match auth.role_of(token) {
        Ok(r) => r,
        Err(refused) => return *refused,
    };
    if g.need == Need::Admin && role != ApiRole::Admin {
        return auth.refuse(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "a {} token cannot do this: it needs the admin role",
                role.as_str()
            ),
        );
    }
    next.run(req).await
}

/// Wrap every route of `router` in the guard for `need`.
pub fn guard(router: axum::Router, auth: &Arc<HttpAuth>, need: Need) -> axum::Router {
    router.route_layer(axum::middleware::from_fn_with_state(
        Guard {
            auth: auth.clone(),
            need,
        },
        check,
    ))
}
