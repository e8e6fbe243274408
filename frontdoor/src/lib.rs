//! frontdoor: webmail (server-rendered HTML that needs no scripts) and a JSON API, acting for the
//! signed-in user against the user's store. It keeps no state: a session is a signed token any
//! front door checks by itself, and every page is built from the user's store on each request,
//! so any front door can be killed at any moment and nothing is lost.
//!
//! The user always comes from the session token, never from the request: a message id names a
//! message only within the signed-in user's mailbox.

pub mod api;
pub mod auth;
pub mod compose;
pub use role_config::frontdoor as config;
pub mod error;
pub mod form;
pub mod layers;
pub mod mailbox;
pub mod metrics;
pub mod mime;
pub mod pages;
pub mod password;
pub mod sanitize;
pub mod text;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Router;
use runtime::faults::Faults;
use runtime::health::Health;
use runtime::role::Role;
use runtime::shutdown::Shutdown;
use tokio::net::TcpListener;

pub use config::FrontdoorConfig;
pub use layers::csp;

/// What every request shares.
pub struct Ctx {
    pub cfg: FrontdoorConfig,
    /// Login's public session keys: sessions are checked here, never made.
    pub keys: session::token::VerifyingKeys,
    pub router: mserv_client::Router,
    pub xfs: xfs::Client,
    pub faults: Arc<Faults>,
    pub health: Arc<Health>,
    /// Per user: the account's session generation and display name, with when they were read.
    /// Sessions the store confirmed, by token (dropped when a store refuses one).
    pub confirmed: moka::future::Cache<String, auth::Confirmed>,
    /// Wrong current passwords on the settings page, per user (`password::throttle`).
    pub password_throttle: session::throttle::Throttle,
    /// The bounded pool password checks and hashes run on (login's `Hashing`).
    pub hashing: session::password::Hashing,
    pub store_timeout: Duration,
    /// The origin (scheme, host, port) of the sign-in page, allowed as a form target (sign-out
    /// redirects there).
    pub login_origin: String,
}

pub use runtime::http::RequestId;

/// Bind the configured addresses and serve until `shutdown` triggers.
pub async fn run(cfg: FrontdoorConfig, shutdown: Shutdown) -> anyhow::Result<()> {
    let (listener, admin) = runtime::net::bind_pair("HTTP", cfg.listen, cfg.admin.listen).await?;
    run_with(cfg, listener, admin, shutdown).await
}

/// The scheme, host and port of an http(s) URL.
fn origin_of(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("https", url));
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    format!("{scheme}://{host}")
}

/// Build the shared state from a checked config.
pub fn context(
    cfg: FrontdoorConfig,
    faults: Arc<Faults>,
    health: Arc<Health>,
) -> anyhow::Result<Ctx> {
    let keys = cfg
        .verifying_keys()
        .map_err(|e| anyhow::anyhow!("session keys: {e}"))?;
    let identity = cfg
        .internal_tls
        .identity(xfs::Role::Frontdoor)
        .map_err(|e| anyhow::anyhow!("internal TLS: {e}"))?;
    let mserv_client = mserv_client::Client::new(
        cfg.mserv.clone(),
        mserv_client::ClientConfig::for_role(
            identity.clone(),
            Duration::from_secs(cfg.route_cache_secs),
        ),
    );
    let router = mserv_client::Router::new(
        Arc::new(mserv_client),
        Duration::from_secs(cfg.store_refresh_secs),
    );
    let store_timeout = Duration::from_millis(cfg.store_timeout_ms);
    let xfs = xfs::Client::new(xfs::ClientConfig {
        request_timeout: store_timeout,
        ..xfs::ClientConfig::for_role(identity, 2, faults.call_faults())
    });
    let confirmed = moka::future::Cache::builder()
        .max_capacity(1_000_000)
        // Older than the grace period, an entry is of no use.
        .time_to_live(Duration::from_secs(cfg.session_grace_secs.max(1)))
        .build();
    Ok(Ctx {
        password_throttle: password::throttle(),
        hashing: session::password::Hashing::for_this_machine(),
        login_origin: origin_of(&cfg.login_url),
        keys,
        router,
        xfs,
        faults,
        health,
        confirmed,
        store_timeout,
        cfg,
    })
}

/// The whole HTTP application: webmail, the JSON API, static files and `/healthz`.
pub fn app(ctx: Arc<Ctx>) -> anyhow::Result<Router> {
    let limit = ctx.cfg.max_upload_bytes;
    let routes = Router::new()
        .merge(pages::routes())
        .nest("/api/v1", api::routes())
        .route("/healthz", axum::routing::get(healthz))
        .route("/static/app.css", axum::routing::get(pages::stylesheet))
        .fallback(fallback)
        .layer(DefaultBodyLimit::max(limit));
    Ok(layers::wrap(routes, &ctx)?.with_state(ctx))
}

/// The front door's own health, probed by the login servers on the main port.
async fn healthz(State(ctx): State<Arc<Ctx>>) -> Response {
    if ctx.health.state().is_serving() {
        (StatusCode::OK, "ok").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "draining").into_response()
    }
}

async fn fallback(req: Request) -> Response {
    if req.uri().path().starts_with("/api/") {
        error::Error::NotFound("no such endpoint").api()
    } else {
        (
            StatusCode::NOT_FOUND,
            [(
                axum::http::header::CONTENT_TYPE,
                "text/plain; charset=utf-8",
            )],
            "not found\n",
        )
            .into_response()
    }
}

/// Serve on listeners already bound.
pub async fn run_with(
    cfg: FrontdoorConfig,
    listener: TcpListener,
    admin: TcpListener,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    metrics::register();
    let role = Role::start("frontdoor", admin, &cfg.faults, &shutdown)?;
    let drain = Duration::from_secs(cfg.drain_timeout_secs);
    let max_connections = cfg.max_connections;
    let header_timeout = Duration::from_secs(cfg.header_timeout_secs);
    let ctx = Arc::new(context(cfg, role.faults.clone(), role.health.clone())?);
    role.health
        .set_info("public_url", ctx.cfg.public_url.clone().into());
    tracing::info!(public_url = %ctx.cfg.public_url, login_url = %ctx.cfg.login_url,
        "serving webmail");
    let app = app(ctx)?;
    role.ready(listener.local_addr()?);

    let limits = runtime::http::Limits {
        max_connections,
        header_timeout,
        drain,
    };
    let service_for = |_peer| hyper_util::service::TowerToHyperService::new(app.clone());
    runtime::http::serve(listener, limits, shutdown, service_for, || {
        role.set_draining()
    })
    .await;
    role.finish().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins() {
        assert_eq!(
            origin_of("http://127.0.0.1:8080/login?x"),
            "http://127.0.0.1:8080"
        );
        assert_eq!(
            origin_of("https://mail.example.test"),
            "https://mail.example.test"
        );
    }
}
