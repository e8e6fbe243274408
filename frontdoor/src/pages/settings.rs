//! Settings: the display name and the password change (which signs out every other session of
//! the account and gives this browser a fresh cookie), and signing out.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::header::SET_COOKIE;
use axum::http::StatusCode;
use axum::response::Response;
use maud::{html, Markup};

use super::layout::{self, csrf_field, Notice};
use super::{error_page, redirect, render, NoticeQuery, WebForm};
use crate::auth::{self, Session, WebSession};
use crate::error::Error;
use crate::password::{self, HashError, Verdict};
use crate::{metrics, Ctx};

/// Longest display name accepted, in characters.
const MAX_DISPLAY_NAME: usize = 100;

fn settings_html(s: &Session, display_name: &str) -> Markup {
    html! {
        h1 { "Settings" }
        section class="card" {
            h2 { "Account" }
            p { "Signed in as " strong { (s.user) } }
            form method="post" action="/settings/name" {
                (csrf_field(s))
                label {
                    "Display name "
                    input type="text" name="display_name" value=(display_name) maxlength=(MAX_DISPLAY_NAME);
                }
                button type="submit" class="primary" { "Save" }
            }
        }
        section class="card" {
            h2 { "Change password" }
            form method="post" action="/settings/password" {
                (csrf_field(s))
                label {
                    "Current password "
                    input type="password" name="current" autocomplete="current-password" required;
                }
                label {
                    "New password "
                    input type="password" name="new" autocomplete="new-password"
                        minlength=(password::MIN_CHARS) required;
                }
                label {
                    "New password again "
                    input type="password" name="confirm" autocomplete="new-password"
                        minlength=(password::MIN_CHARS) required;
                }
                p class="muted" { "Changing your password signs out every other session of this account." }
                button type="submit" class="primary" { "Change password" }
            }
        }
    }
}

pub(super) async fn settings_page(
    State(ctx): State<Arc<Ctx>>,
    WebSession(s): WebSession,
    Query(q): Query<NoticeQuery>,
) -> Response {
    let notices = layout::notices_named(q.n.as_deref());
    let main = settings_html(&s, &s.display_name);
    render(&ctx, &s, StatusCode::OK, "Settings", notices, main).await
}

async fn settings_error(ctx: &Ctx, s: &Session, status: StatusCode, text: &str) -> Response {
    let main = settings_html(s, &s.display_name);
    render(ctx, s, status, "Settings", vec![Notice::error(text)], main).await
}

pub(super) async fn settings_name(
    State(ctx): State<Arc<Ctx>>,
    WebForm(s, form): WebForm,
) -> Response {
    let name = form.get("display_name").unwrap_or("").trim().to_string();
    if name.chars().count() > MAX_DISPLAY_NAME || name.chars().any(char::is_control) {
        return settings_error(
            &ctx,
            &s,
            StatusCode::BAD_REQUEST,
            "A display name is at most 100 characters, on one line.",
        )
        .await;
    }
    match s
        .mailbox(&ctx)
        .update_account(Some(name.clone()), None)
        .await
    {
        Ok(()) => {
            auth::renamed(&ctx, &s, name).await;
            redirect("/settings?n=name_saved")
        }
        Err(e) => error_page(&ctx, &s, e.into()).await,
    }
}

pub(super) async fn settings_password(
    State(ctx): State<Arc<Ctx>>,
    WebForm(s, form): WebForm,
) -> Response {
    let current = form.get("current").unwrap_or("").to_string();
    let new = form.get("new").unwrap_or("").to_string();
    if let Err(why) = password::check_new(&new, form.get("confirm")) {
        return settings_error(&ctx, &s, StatusCode::BAD_REQUEST, why).await;
    }
    let Ok(attempt) = password::admit(&ctx, &s.user).await else {
        return settings_error(
            &ctx,
            &s,
            StatusCode::TOO_MANY_REQUESTS,
            "Too many wrong passwords. Wait a while and try again.",
        )
        .await;
    };
    let mb = s.mailbox(&ctx);
    let auth_rec = match mb.auth().await {
        Ok(a) => a,
        Err(e) => {
            // No verdict: the attempt gives its place back.
            attempt.abandon();
            return error_page(&ctx, &s, e.into()).await;
        }
    };
    let verdict = password::check(
        &ctx.password_throttle,
        &ctx.hashing,
        attempt,
        &s.user,
        &current,
        auth_rec.password_hash.clone(),
    )
    .await;
    match verdict {
        Verdict::Right => {}
        Verdict::Wrong => {
            return settings_error(
                &ctx,
                &s,
                StatusCode::FORBIDDEN,
                "The current password is not right.",
            )
            .await
        }
        Verdict::Busy => return error_page(&ctx, &s, Error::Busy).await,
    }
    let hash = match password::hash(&ctx.hashing, &new).await {
        Ok(h) => h,
        Err(HashError::Refused(e)) => {
            return settings_error(&ctx, &s, StatusCode::BAD_REQUEST, &e).await
        }
        Err(HashError::Busy) => return error_page(&ctx, &s, Error::Busy).await,
    };
    if let Err(e) = mb.update_account(None, Some(hash)).await {
        return error_page(&ctx, &s, e.into()).await;
    }
    // The store moved the generation on: every session of the account, this one too, has
    // ended. Only login makes sessions, so the user signs in again with the new password.
    tracing::info!(user = %s.user, trace = %s.trace, "password changed");
    let to = format!(
        "{}/?password_changed=1",
        ctx.cfg.login_url.trim_end_matches('/')
    );
    let mut resp = redirect(&to);
    resp.headers_mut()
        .insert(SET_COOKIE, auth::clear_cookie(&ctx));
    resp
}

pub(super) async fn logout(State(ctx): State<Arc<Ctx>>, WebForm(s, _): WebForm) -> Response {
    // The store refuses this session from now on: a copy of the token is worth nothing.
    if let Err(e) = auth::end(&ctx, &s).await {
        tracing::warn!(user = %s.user, sid = %s.claims.sid, error = %e, trace = %s.trace,
            "sign-out not recorded at the store; the session stays valid until it expires");
        metrics::AUTH
            .with_label_values(&["signout_unrecorded"])
            .inc();
    }
    // The sign-in page then says the user signed out.
    let to = format!("{}/?signed_out=1", ctx.cfg.login_url.trim_end_matches('/'));
    let mut resp = redirect(&to);
    resp.headers_mut()
        .insert(SET_COOKIE, auth::clear_cookie(&ctx));
    resp
}
