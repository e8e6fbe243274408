//! Webmail pages: server-rendered HTML that needs no scripts, one module per page family. Every
//! state change is a form POST carrying the session's CSRF token, answered with a redirect
//! (post/redirect/get) whose notice is named by a fixed code. When the user's store cannot be
//! reached, pages still render, with a notice and status 503, and composing and sending still
//! work.
//!
//! Pages are `maud` templates: text is escaped wherever it is spliced in, so a page cannot
//! forget to; the one exception, sanitized message HTML, is marked where [`message`] inserts it.

mod compose;
mod folders;
pub mod layout;
mod message;
mod search;
mod settings;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, LOCATION};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use maud::{html, Markup};
use serde::Deserialize;
use xfs::FolderInfo;

use crate::auth::{Session, WebSession};
use crate::error::Error;
use crate::form::FormData;
use crate::mailbox::StoreError;
use crate::Ctx;
use layout::{Chrome, Notice, UNAVAILABLE};

pub fn routes() -> Router<Arc<Ctx>> {
    Router::new()
        .route("/", get(home))
        .route("/folder/{name}", get(folders::folder_page))
        .route("/folder/{name}/empty", post(folders::empty_folder))
        .route("/message/{id}", get(message::message_page))
        .route("/message/{id}/attachment/{n}", get(message::attachment))
        .route("/message/{id}/inline/{n}", get(message::inline_image))
        .route("/message/{id}/raw", get(message::raw))
        .route("/messages", post(folders::message_action))
        .route(
            "/compose",
            get(compose::compose_page).post(compose::compose_send),
        )
        .route("/folders", get(folders::folders_page))
        .route("/folders/create", post(folders::folder_create))
        .route("/folders/rename", post(folders::folder_rename))
        .route("/folders/delete", post(folders::folder_delete))
        .route("/search", get(search::search_page))
        .route("/settings", get(settings::settings_page))
        .route("/settings/name", post(settings::settings_name))
        .route("/settings/password", post(settings::settings_password))
        .route("/logout", post(settings::logout))
}

/// The one stylesheet.
pub async fn stylesheet() -> Response {
    (
        [
            (CONTENT_TYPE, "text/css; charset=utf-8"),
            (CACHE_CONTROL, "public, max-age=3600"),
        ],
        include_str!("static/app.css"),
    )
        .into_response()
}

fn html_response(status: StatusCode, body: Markup) -> Response {
    let r = (
        status,
        [(CONTENT_TYPE, "text/html; charset=utf-8")],
        body.into_string(),
    )
        .into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        // Unavailable or busy: tell the browser (and any proxy) when to come back.
        return crate::error::with_retry_after(r);
    }
    r
}

fn redirect(to: &str) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(LOCATION, v);
    }
    r
}

/// `url` with the notice `code` added to its query.
fn with_notice(url: &str, code: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}n={code}")
}

/// The `?n=` of a page: the notice a redirect named.
#[derive(Debug, Deserialize)]
struct NoticeQuery {
    n: Option<String>,
}

/// The folder list for the sidebar, or the notice that says why there is none.
async fn sidebar(ctx: &Ctx, s: &Session) -> (Option<Vec<FolderInfo>>, Option<Notice>) {
    match s.mailbox(ctx).folders().await {
        Ok(f) => (Some(f), None),
        Err(e) => (None, Some(store_notice(&e))),
    }
}

fn store_notice(e: &StoreError) -> Notice {
    match e {
        StoreError::Unavailable(_) | StoreError::Corrupt(_) | StoreError::NoSuchUser => {
            Notice::error(UNAVAILABLE)
        }
        other => Notice::error(Error::from(other.clone()).to_string()),
    }
}

/// Put `notice` first unless it is there already.
fn add_first(notices: &mut Vec<Notice>, notice: Notice) {
    if !notices.contains(&notice) {
        notices.insert(0, notice);
    }
}

/// A page with the sidebar; reads the folders itself. A sidebar that cannot be read makes an
/// OK page a 503.
async fn render(
    ctx: &Ctx,
    s: &Session,
    status: StatusCode,
    title: &str,
    mut notices: Vec<Notice>,
    main: Markup,
) -> Response {
    let (folders, problem) = sidebar(ctx, s).await;
    let mut status = status;
    if let Some(p) = problem {
        add_first(&mut notices, p);
        if status == StatusCode::OK {
            status = StatusCode::SERVICE_UNAVAILABLE;
        }
    }
    let chrome = Chrome::new(s, folders.as_deref());
    html_response(status, layout::page(title, &chrome, &notices, main))
}

/// An error as a page.
async fn error_page(ctx: &Ctx, s: &Session, e: Error) -> Response {
    if matches!(e, Error::SessionEnded) {
        return signed_out(ctx);
    }
    let (title, text) = match &e {
        Error::NotFound(what) => ("Not found", format!("Not found: {what}.")),
        Error::Csrf => (
            "Form expired",
            "This form has expired or did not come from this site. Go back, reload the page \
             and try again."
                .to_string(),
        ),
        Error::Unavailable(_) => ("Mailbox unavailable", UNAVAILABLE.to_string()),
        Error::Busy => ("Busy, try again", crate::error::BUSY.to_string()),
        other => ("Something went wrong", other.to_string()),
    };
    let main = html! { h1 { (title) } };
    let notices = vec![Notice::error(text)];
    if matches!(e, Error::Csrf | Error::Busy) {
        // Nothing is read from the store for a refused form, nor from a store shedding load
        // (a short page, at once).
        let chrome = Chrome::new(s, None);
        return html_response(e.status(), layout::page(title, &chrome, &notices, main));
    }
    render(ctx, s, e.status(), title, notices, main).await
}

/// The answer to a page whose session the store refused mid-request: to sign in again, the
/// cookie cleared.
pub(super) fn signed_out(ctx: &Ctx) -> Response {
    let mut resp = redirect(&ctx.cfg.login_url);
    resp.headers_mut().insert(
        axum::http::header::SET_COOKIE,
        crate::auth::clear_cookie(ctx),
    );
    resp
}

/// A form POST: its session (else the redirect to sign in) and its fields, checked against the
/// session's CSRF token (else the error page) before the handler runs.
pub(super) struct WebForm(pub Session, pub FormData);

impl FromRequest<Arc<Ctx>> for WebForm {
    type Rejection = Response;

    async fn from_request(req: Request, ctx: &Arc<Ctx>) -> Result<Self, Response> {
        let (mut parts, body) = req.into_parts();
        let WebSession(s) = WebSession::from_request_parts(&mut parts, ctx).await?;
        let body = Bytes::from_request(Request::from_parts(parts, body), ctx)
            .await
            .map_err(IntoResponse::into_response)?;
        let form = FormData::parse(&body);
        if s.csrf_ok(ctx, form.get("csrf")) {
            Ok(WebForm(s, form))
        } else {
            Err(error_page(ctx, &s, Error::Csrf).await)
        }
    }
}

async fn home(WebSession(_s): WebSession) -> Response {
    redirect(&layout::folder_url(xfs::INBOX, 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_join_the_query() {
        assert_eq!(with_notice("/folder/Inbox", "sent"), "/folder/Inbox?n=sent");
        assert_eq!(
            with_notice("/folder/Inbox?page=2", "moved"),
            "/folder/Inbox?page=2&n=moved"
        );
    }
}
