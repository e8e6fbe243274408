//! login: sign-in and session issue, redirecting to a front door of the user's cluster.
//!
//! A sign-in routes the user through the member index, checks the password against the hash
//! held by the user's store (the hashing CPU stays here, never on a store), records the login
//! at the store, signs a session token and answers `303` to a healthy front door of the user's
//! cluster (or, for `POST /api/v1/session`, returns the token as JSON). It keeps no state but
//! short-lived failure counters: kill it at any moment and nothing is lost.
//!
//! Tokens, password hashing and the throttle come from the `session` crate, shared with the
//! front doors and mailctl.

pub use role_config::login as config;
pub mod frontdoors;
pub mod metrics;
pub mod pages;
pub mod signin;
pub mod web;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use axum::extract::ConnectInfo;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use hyper::body::Incoming;
use hyper::Request;
use runtime::role::Role;
use runtime::shutdown::Shutdown;
use tokio::net::TcpListener;
use tower::ServiceExt as _;

pub use config::LoginConfig;

/// Connections served at once; the next one waits in the listen backlog.
pub const MAX_CONNECTIONS: usize = 4096;
/// A client must send its request headers within this time.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest one request may take, its body upload included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long open connections get to finish their request once shutdown is triggered.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Bind the configured addresses and serve until `shutdown` triggers.
pub async fn run(cfg: LoginConfig, shutdown: Shutdown) -> anyhow::Result<()> {
    let (listener, admin) = runtime::net::bind_pair("HTTP", cfg.listen, cfg.admin.listen).await?;
    run_with(cfg, listener, admin, shutdown).await
}

/// Serve on listeners already bound.
pub async fn run_with(
    cfg: LoginConfig,
    listener: TcpListener,
    admin: TcpListener,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    metrics::register();
    let keys = cfg.signing_keys().map_err(|e| anyhow!("keys: {e}"))?;
    let role = Role::start("login", admin, &cfg.faults, &shutdown)?;
    let faults = role.faults.clone();

    let identity = cfg
        .internal_tls
        .identity(xfs::Role::Login)
        .map_err(|e| anyhow!("internal TLS: {e}"))?;
    let mserv_client = Arc::new(mserv_client::Client::new(
        cfg.mserv.clone(),
        mserv_client::ClientConfig::for_role(
            identity.clone(),
            Duration::from_secs(cfg.route_cache_secs),
        ),
    ));
    let router = mserv_client::Router::new(
        mserv_client.clone(),
        Duration::from_secs(cfg.store_refresh_secs),
    );
    let xfs = xfs::Client::new(xfs::ClientConfig::for_role(
        identity,
        2,
        faults.call_faults(),
    ));
    let hashing = session::password::Hashing::for_this_machine();
    let dummy_hash = hashing
        .hash("no such user")
        .await
        .context("hashing the stand-in password")?;
    let signin = signin::SignIn {
        router,
        xfs,
        keys,
        throttle: session::throttle::Throttle::new(
            cfg.max_failures_per_user,
            cfg.max_failures_per_client,
            Duration::from_secs(cfg.failure_window_secs),
        ),
        front_doors: frontdoors::FrontDoors::new(mserv_client, (&cfg.front_doors).into()),
        faults,
        session_ttl: Duration::from_secs(cfg.session_ttl_secs),
        hashing,
        dummy_hash,
    };
    let app = Arc::new(web::App {
        signin,
        health: role.health.clone(),
        cookie_secure: cfg.cookie_secure,
        public_url: cfg.public_url.clone(),
        trusted_proxies: cfg.trusted_proxies().map_err(anyhow::Error::msg)?,
    });

    role.health
        .set_info("public_url", cfg.public_url.clone().into());
    tracing::info!(public_url = %cfg.public_url, key = %cfg.current_key, "signing sessions");
    role.ready(listener.local_addr()?);

    let limits = runtime::http::Limits {
        max_connections: MAX_CONNECTIONS,
        header_timeout: HEADER_READ_TIMEOUT,
        drain: DRAIN_TIMEOUT,
    };
    let app = web::router(app);
    let service_for = |peer| service(app.clone(), peer);
    runtime::http::serve(listener, limits, shutdown, service_for, || {
        role.set_draining()
    })
    .await;
    role.finish().await
}

/// The service for one connection from `peer`: the client's address for the handlers (throttling
/// is per client address), and a time limit on each request.
fn service(
    app: axum::Router,
    peer: std::net::SocketAddr,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = axum::response::Response,
    Error = Infallible,
    Future = impl Send,
> + Send {
    hyper::service::service_fn(move |mut req: Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        let app = app.clone();
        async move {
            let res = match tokio::time::timeout(REQUEST_TIMEOUT, app.oneshot(req)).await {
                Ok(Ok(res)) => res,
                Ok(Err(never)) => match never {},
                Err(_) => (StatusCode::REQUEST_TIMEOUT, "request timed out\n").into_response(),
            };
            Ok::<_, Infallible>(res)
        }
    })
}
