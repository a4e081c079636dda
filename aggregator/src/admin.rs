//! The HTTP API's writes (admin role, see `auth`): tokens, agent revocation, reload.
//!
//! - `GET /api/tokens`: the API tokens (ids, roles, times; never secrets);
//! - `POST /api/tokens` `{"role": "read"|"admin"|"agent", "ttl": "24h"}`: a new token,
//!   shown once in the answer (`agent`: a one-time enrollment token);
//! - `DELETE /api/tokens/{id}`: revoke an API token (refused from its next request);
//! - `POST /api/agents/{name}/revoke`: revoke every certificate of an agent (refused from
//!   its next connection), like `pathpulse-aggregator cert revoke`;
//! - `POST /api/reload`: what SIGHUP does.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde::Deserialize;
use serde_json::json;

use crate::state::StateDb;
use crate::tokens::ApiRole;

pub struct Admin {
    pub state: Arc<StateDb>,
    pub ca_pem: String,
}

fn answer(status: StatusCode, v: serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

fn error(status: StatusCode, e: impl std::fmt::Display) -> Response {
    answer(status, json!({ "error": e.to_string() }))
}

fn internal(e: anyhow::Error) -> Response {
    tracing::error!(error = %format!("{e:#}"), "admin request failed");
    error(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateToken {
    role: String,
    ttl: Option<String>,
}

async fn create_token(State(a): State<Arc<Admin>>, body: Bytes) -> Response {
    let req: CreateToken = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "expected {{\"role\": \"read\"|\"admin\"|\"agent\", \"ttl\": \"24h\"}}: {e}"
                ),
            );
        }
    };
    let ttl = match req
        .ttl
        .as_deref()
        .map(pathpulse_agent::config::parse_duration)
    {
        None => None,
        Some(Ok(d)) if !d.is_zero() => Some(d),
        Some(Ok(_)) => return error(StatusCode::BAD_REQUEST, "ttl: must be more than 0s"),
        Some(Err(e)) => return error(StatusCode::BAD_REQUEST, format!("ttl: {e}")),
    };
    let made = tokio::task::spawn_blocking(move || -> anyhow::Result<serde_json::Value> {
        if req.role == "agent" {
            let ttl = ttl.unwrap_or(crate::state::DEFAULT_TOKEN_TTL);
            let t = a.state.create_token("agent", ttl, &a.ca_pem)?;
            return Ok(
                json!({ "role": "agent", "token": t.to_string(), "ttl_seconds": ttl.as_secs() }),
            );
        }
        let Some(role) = ApiRole::parse(&req.role) else {
            anyhow::bail!("role: `{}` is not one of agent, read, admin", req.role);
        };
        let t = a.state.create_api_token(role, ttl)?;
        Ok(json!({
            "id": t.id,
            "role": role.as_str(),
            "token": t.token,
            "expires_ms": t.record.expires_ms,
        }))
    })
    .await;
    match made {
        Ok(Ok(v)) => {
            tracing::info!(role = %v["role"], id = %v["id"], "token created over the API");
            answer(StatusCode::CREATED, v)
        }
        Ok(Err(e)) if e.to_string().starts_with("role:") => error(StatusCode::BAD_REQUEST, e),
        Ok(Err(e)) => internal(e),
        Err(e) => internal(e.into()),
    }
}

async fn list_tokens(State(a): State<Arc<Admin>>) -> Response {
    match a.state.api_tokens() {
        Ok(list) => answer(
            StatusCode::OK,
            json!({ "tokens": list.into_iter().map(|(id, r)| json!({
                "id": id,
                "role": r.role.as_str(),
                "created_ms": r.created_ms,
                "expires_ms": r.expires_ms,
                "revoked_ms": r.revoked_ms,
            })).collect::<Vec<_>>() }),
        ),
        Err(e) => internal(e),
    }
}

async fn revoke_token(State(a): State<Arc<Admin>>, Path(id): Path<String>) -> Response {
    match a.state.revoke_api_token(&id) {
        Ok(true) => {
            tracing::info!(%id, "API token revoked");
            answer(StatusCode::OK, json!({ "revoked": id }))
        }
        Ok(false) => error(
            StatusCode::NOT_FOUND,
            format!("no API token with id `{id}`"),
        ),
        Err(e) => internal(e),
    }
}

async fn revoke_agent(State(a): State<Arc<Admin>>, Path(name): Path<String>) -> Response {
    let state = a.state.clone();
    let n = name.clone();
    match tokio::task::spawn_blocking(move || state.revoke_name(&n)).await {
        Ok(Ok(serials)) if serials.is_empty() => error(
            StatusCode::NOT_FOUND,
            format!("no certificate issued to `{name}` is known"),
        ),
        Ok(Ok(serials)) => {
            tracing::warn!(agent = %name, count = serials.len(), "agent revoked over the API");
            answer(
                StatusCode::OK,
                json!({ "agent": name, "revoked_serials": serials }),
            )
        }
        Ok(Err(e)) => internal(e),
        Err(e) => internal(e.into()),
    }
}

async fn reload() -> Response {
    match tokio::task::spawn_blocking(|| crate::reload::reload_now("POST /api/reload")).await {
        Ok(Some(o)) => answer(
            if o.reloaded {
                StatusCode::OK
            } else {
                StatusCode::UNPROCESSABLE_ENTITY
            },
            serde_json::to_value(&o).unwrap_or_default(),
        ),
        Ok(None) => answer(
            StatusCode::OK,
            json!({
                "reloaded": false,
                "detail": crate::reload::NOTHING_TO_RELOAD,
            }),
        ),
        Err(e) => internal(e.into()),
    }
}

pub fn routes(admin: Arc<Admin>) -> Router {
    Router::new()
        .route("/api/tokens", get(list_tokens).post(create_token))
        .route("/api/tokens/{id}", delete(revoke_token))
        .route("/api/agents/{name}/revoke", post(revoke_agent))
        .route("/api/reload", post(reload))
        .with_state(admin)
}
