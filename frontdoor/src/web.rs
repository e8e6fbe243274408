//! Webmail pages: server-rendered HTML that needs no scripts. Every state change is a form POST
//! carrying the session's CSRF token, answered with a redirect (post/redirect/get) whose notice
//! is named by a fixed code. When the user's store cannot be reached, pages still render, with
//! a notice and status 503, and composing and sending still work.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Multipart, Path, Query, State};
use axum::http::header::{
    CACHE_CONTROL, CONTENT_DISPOSITION, CONTENT_SECURITY_POLICY, CONTENT_TYPE, LOCATION, SET_COOKIE,
};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use xfs::{Flags, FolderInfo, IndexEntry, MsgId, SearchQuery};

use crate::auth::{self, AccountHint, Session, WebSession};
use crate::compose::{self, Draft, OutAttachment, SendError};
use crate::error::Error;
use crate::html::{self, esc, Chrome, Notice, UNAVAILABLE};
use crate::mailbox::StoreError;
use crate::{mime, sanitize, Ctx};

/// Longest display name accepted.
const MAX_DISPLAY_NAME: usize = 100;
/// Shortest new password accepted.
const MIN_PASSWORD: usize = 8;
/// Wrong current passwords allowed per user within the failure window.
const MAX_PASSWORD_FAILURES: u32 = 5;
/// Folders that offer "Empty".
const EMPTYABLE: [&str; 2] = ["Trash", "Junk"];

pub fn routes() -> Router<Arc<Ctx>> {
    Router::new()
        .route("/", get(home))
        .route("/folder/{name}", get(folder_page))
        .route("/folder/{name}/empty", post(empty_folder))
        .route("/message/{id}", get(message_page))
        .route("/message/{id}/attachment/{n}", get(attachment))
        .route("/message/{id}/inline/{n}", get(inline_image))
        .route("/message/{id}/raw", get(raw))
        .route("/messages", post(message_action))
        .route("/compose", get(compose_page).post(compose_send))
        .route("/folders", get(folders_page))
        .route("/folders/create", post(folder_create))
        .route("/folders/rename", post(folder_rename))
        .route("/folders/delete", post(folder_delete))
        .route("/search", get(search_page))
        .route("/settings", get(settings_page))
        .route("/settings/name", post(settings_name))
        .route("/settings/password", post(settings_password))
        .route("/logout", post(logout))
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

fn html_response(status: StatusCode, body: String) -> Response {
    let r = (status, [(CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response();
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

/// A page with the sidebar; reads the folders itself.
async fn render(
    ctx: &Ctx,
    s: &Session,
    status: StatusCode,
    title: &str,
    current: Option<&str>,
    mut notices: Vec<Notice>,
    main: &str,
) -> Response {
    let (folders, problem) = sidebar(ctx, s).await;
    let mut status = status;
    if let Some(p) = problem {
        if !notices.contains(&p) {
            notices.insert(0, p);
        }
        if status == StatusCode::OK {
            status = StatusCode::SERVICE_UNAVAILABLE;
        }
    }
    let chrome = Chrome {
        session: s,
        folders: folders.as_deref(),
        current,
        query: "",
    };
    html_response(status, html::page(title, &chrome, &notices, main))
}

/// An error as a page.
async fn error_page(ctx: &Ctx, s: &Session, e: Error) -> Response {
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
    let main = format!("<h1>{}</h1>", esc(title));
    let notices = vec![Notice::error(text)];
    if matches!(e, Error::Csrf | Error::Busy) {
        // Nothing is read from the store for a refused form, nor from a store shedding load
        // (a short page, at once).
        let chrome = Chrome {
            session: s,
            folders: None,
            current: None,
            query: "",
        };
        return html_response(e.status(), html::page(title, &chrome, &notices, &main));
    }
    render(ctx, s, e.status(), title, None, notices, &main).await
}

/// Form fields of a urlencoded POST body (repeated names kept).
pub struct FormData(Vec<(String, String)>);

impl FormData {
    pub fn parse(body: &[u8]) -> FormData {
        FormData(form_urlencoded::parse(body).into_owned().collect())
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A form POST, checked against the session's CSRF token.
async fn checked_form(ctx: &Ctx, s: &Session, body: &[u8]) -> Result<FormData, Response> {
    let form = FormData::parse(body);
    if s.csrf_ok(ctx, form.get("csrf")) {
        Ok(form)
    } else {
        Err(error_page(ctx, s, Error::Csrf).await)
    }
}

async fn home(WebSession(_s): WebSession) -> Response {
    redirect(&html::folder_url(xfs::INBOX, 0))
}

#[derive(Debug, Deserialize)]
struct FolderQuery {
    page: Option<u32>,
    n: Option<String>,
}

fn entry_row(e: &IndexEntry, now: u64, show_to: bool, show_folder: bool, select: bool) -> String {
    let mut class = Vec::new();
    if !e.flags.contains(Flags::SEEN) {
        class.push("unread");
    }
    if e.flags.contains(Flags::FLAGGED) {
        class.push("flagged");
    }
    let url = format!("/message/{}", e.msg);
    let (who, full) = if show_to {
        let to = e
            .summary
            .to
            .split(", ")
            .map(html::display_name)
            .collect::<Vec<_>>();
        (format!("To: {}", to.join(", ")), e.summary.to.clone())
    } else {
        (
            html::display_name(&e.summary.from).to_string(),
            e.summary.from.clone(),
        )
    };
    let subject = if e.summary.subject.is_empty() {
        "(no subject)".to_string()
    } else {
        e.summary.subject.clone()
    };
    let sel = if select {
        format!(
            "<td class=\"sel\"><input type=\"checkbox\" name=\"id\" value=\"{}\" aria-label=\"Select message\"></td>",
            e.msg
        )
    } else {
        String::new()
    };
    let flag = if e.flags.contains(Flags::FLAGGED) {
        "<span class=\"flag\" title=\"Flagged\">&#9733;</span>"
    } else {
        ""
    };
    let folder = if show_folder {
        format!("<td class=\"in\">{}</td>", esc(&e.folder))
    } else {
        String::new()
    };
    let clip = if e.summary.attachments.is_empty() {
        ""
    } else {
        "<span class=\"clip\" title=\"Has attachments\">&#128206;</span>"
    };
    let unread_label = if e.flags.contains(Flags::SEEN) {
        ""
    } else {
        "<span class=\"sr\">Unread: </span>"
    };
    format!(
        "<tr class=\"{}\">{sel}<td class=\"mark\">{flag}</td>\
         <td class=\"from\" title=\"{}\"><a href=\"{url}\">{unread_label}{}</a></td>\
         <td class=\"subject\"><a href=\"{url}\"><span class=\"subj\">{}</span> \
         <span class=\"preview\">{}</span></a></td>{folder}<td class=\"att\">{clip}</td>\
         <td class=\"date\">{}</td></tr>",
        class.join(" "),
        esc(&full),
        esc(&who),
        esc(&subject),
        esc(&e.summary.preview),
        esc(&mime::short_date(e.internal_date_ms, now)),
    )
}

async fn folder_page(
    State(ctx): State<Arc<Ctx>>,
    WebSession(s): WebSession,
    Path(name): Path<String>,
    Query(q): Query<FolderQuery>,
) -> Response {
    let mb = s.mailbox(&ctx);
    let page = q.page.unwrap_or(0).min(1_000_000);
    let size = ctx.cfg.page_size;
    // One store call: the page brings the folder list with it. Only when the page fails is the
    // list asked for on its own (a missing folder still shows the others).
    let listing = mb.list(&name, page * size, size).await;
    if let Err(StoreError::Busy) = listing {
        return error_page(&ctx, &s, Error::Busy).await;
    }
    let folders = match &listing {
        Ok(l) => Ok(crate::mailbox::in_order(l.folders.clone())),
        Err(_) => mb.folders().await,
    };
    let mut notices: Vec<Notice> =
        q.n.as_deref()
            .and_then(html::notice_for)
            .into_iter()
            .collect();
    let mut status = StatusCode::OK;
    let main = match &listing {
        Ok(listing) => folder_listing(&s, &name, page, size, listing, folders.as_deref().ok()),
        Err(StoreError::NoSuchFolder) => {
            status = StatusCode::NOT_FOUND;
            notices.push(Notice::error("There is no folder by that name."));
            format!("<h1>{}</h1>", esc(&name))
        }
        Err(e) => {
            status = StatusCode::SERVICE_UNAVAILABLE;
            notices.insert(0, store_notice(e));
            format!(
                "<h1>{}</h1><p class=\"muted\">Messages cannot be shown right now.</p>",
                esc(&name)
            )
        }
    };
    if let Err(e) = &folders {
        let n = store_notice(e);
        if !notices.contains(&n) {
            notices.insert(0, n);
        }
        if status == StatusCode::OK {
            status = StatusCode::SERVICE_UNAVAILABLE;
        }
    }
    let chrome = Chrome {
        session: &s,
        folders: folders.as_deref().ok(),
        current: Some(&name),
        query: "",
    };
    html_response(status, html::page(&name, &chrome, &notices, &main))
}

fn folder_listing(
    s: &Session,
    name: &str,
    page: u32,
    size: u32,
    listing: &xfs::FolderPage,
    folders: Option<&[FolderInfo]>,
) -> String {
    let f = &listing.folder;
    let now = auth::now_ms();
    let mut out = format!(
        "<div class=\"folder-head\"><h1>{}</h1><p class=\"sub\">{} message{}{}</p>",
        esc(name),
        f.total,
        if f.total == 1 { "" } else { "s" },
        if f.unread > 0 {
            format!(", {} unread", f.unread)
        } else {
            String::new()
        }
    );
    if EMPTYABLE.contains(&name) && f.total > 0 {
        let _ = write!(
            out,
            "<form method=\"post\" action=\"/folder/{}/empty\" class=\"inline\">{}\
             <button type=\"submit\" class=\"danger\">Empty {}</button></form>",
            esc(&html::enc(name)),
            html::csrf_field(s),
            esc(name)
        );
    }
    out.push_str("</div>");
    if listing.entries.is_empty() {
        let _ = write!(out, "<p class=\"empty\">No messages in {}.</p>", esc(name));
        return out;
    }
    let delete_label = if name == "Trash" {
        "Delete forever"
    } else {
        "Delete"
    };
    let _ = write!(
        out,
        "<form method=\"post\" action=\"/messages\">{}\
         <input type=\"hidden\" name=\"folder\" value=\"{}\">\
         <input type=\"hidden\" name=\"page\" value=\"{page}\">\
         <div class=\"toolbar\">\
         <button type=\"submit\" name=\"action\" value=\"read\">Mark read</button>\
         <button type=\"submit\" name=\"action\" value=\"unread\">Mark unread</button>\
         <button type=\"submit\" name=\"action\" value=\"flag\">Flag</button>\
         <button type=\"submit\" name=\"action\" value=\"unflag\">Unflag</button>\
         <button type=\"submit\" name=\"action\" value=\"delete\" class=\"danger\">{delete_label}</button>",
        html::csrf_field(s),
        esc(name),
    );
    if let Some(folders) = folders {
        let _ = write!(
            out,
            "<span class=\"move\">{}<button type=\"submit\" name=\"action\" value=\"move\">Move</button></span>",
            html::folder_select(folders, Some(name))
        );
    }
    out.push_str("</div><table class=\"messages\"><tbody>");
    let show_to = name == "Sent" || name == "Drafts";
    for e in &listing.entries {
        out.push_str(&entry_row(e, now, show_to, false, true));
    }
    out.push_str("</tbody></table></form>");
    let first = page * size + 1;
    let last = page * size + listing.entries.len() as u32;
    let _ = write!(
        out,
        "<nav class=\"pager\" aria-label=\"Pages\"><span>{first}–{last} of {}</span>",
        f.total
    );
    if page > 0 {
        let _ = write!(
            out,
            "<a class=\"button\" href=\"{}\">&larr; Newer</a>",
            esc(&html::folder_url(name, page - 1))
        );
    }
    if last < f.total {
        let _ = write!(
            out,
            "<a class=\"button\" href=\"{}\">Older &rarr;</a>",
            esc(&html::folder_url(name, page + 1))
        );
    }
    out.push_str("</nav>");
    out
}

#[derive(Debug, Deserialize)]
struct MessageQuery {
    images: Option<u8>,
    view: Option<String>,
    n: Option<String>,
}

async fn message_page(
    State(ctx): State<Arc<Ctx>>,
    WebSession(s): WebSession,
    Path(id): Path<MsgId>,
    Query(q): Query<MessageQuery>,
) -> Response {
    let mb = s.mailbox(&ctx);
    let m = match mb.fetch(id, true).await {
        Ok(m) => m,
        Err(e) => return error_page(&ctx, &s, e.into()).await,
    };
    let (folders, problem) = sidebar(&ctx, &s).await;
    let images = q.images == Some(1);
    let as_text = q.view.as_deref() == Some("text");
    let entry = m.entry.clone();
    let rendered = tokio::task::spawn_blocking(move || {
        let parsed = mime::parse(&m.body);
        let cleaned = match (&parsed.html, as_text) {
            (Some(h), false) => Some(sanitize::clean(h, id, &parsed.inline_images(), images)),
            _ => None,
        };
        (parsed, cleaned)
    })
    .await;
    let Ok((parsed, cleaned)) = rendered else {
        return error_page(&ctx, &s, Error::Internal("rendering failed".into())).await;
    };
    let mut notices: Vec<Notice> = problem.into_iter().collect();
    notices.extend(q.n.as_deref().and_then(html::notice_for));
    let main = message_html(
        &s,
        &entry,
        &parsed,
        cleaned.as_ref(),
        as_text,
        folders.as_deref(),
    );
    let chrome = Chrome {
        session: &s,
        folders: folders.as_deref(),
        current: Some(&entry.folder),
        query: "",
    };
    let title = if parsed.subject.is_empty() {
        "(no subject)"
    } else {
        &parsed.subject
    };
    let mut resp = html_response(StatusCode::OK, html::page(title, &chrome, &notices, &main));
    if images {
        if let Ok(v) = HeaderValue::from_str(&crate::csp(&ctx.login_origin, true)) {
            resp.headers_mut().insert(CONTENT_SECURITY_POLICY, v);
        }
    }
    resp
}

fn message_html(
    s: &Session,
    e: &IndexEntry,
    p: &mime::Parsed,
    cleaned: Option<&sanitize::Cleaned>,
    as_text: bool,
    folders: Option<&[FolderInfo]>,
) -> String {
    let id = e.msg;
    let flagged = e.flags.contains(Flags::FLAGGED);
    let mut out = format!(
        "<div class=\"toolbar msg-actions\">\
         <a class=\"button\" href=\"/compose?reply={id}\">Reply</a>\
         <a class=\"button\" href=\"/compose?reply_all={id}\">Reply all</a>\
         <a class=\"button\" href=\"/compose?forward={id}\">Forward</a>\
         <form method=\"post\" action=\"/messages\" class=\"inline\">{}\
         <input type=\"hidden\" name=\"id\" value=\"{id}\">\
         <input type=\"hidden\" name=\"folder\" value=\"{}\">\
         <input type=\"hidden\" name=\"from\" value=\"message\">\
         <button type=\"submit\" name=\"action\" value=\"unread\">Mark unread</button>\
         <button type=\"submit\" name=\"action\" value=\"{}\">{}</button>",
        html::csrf_field(s),
        esc(&e.folder),
        if flagged { "unflag" } else { "flag" },
        if flagged { "Unflag" } else { "Flag" },
    );
    if let Some(folders) = folders {
        let _ = write!(
            out,
            "<span class=\"move\">{}<button type=\"submit\" name=\"action\" value=\"move\">Move</button></span>",
            html::folder_select(folders, Some(&e.folder))
        );
    }
    let _ = write!(
        out,
        "<button type=\"submit\" name=\"action\" value=\"delete\" class=\"danger\">{}</button></form></div>",
        if e.folder == "Trash" { "Delete forever" } else { "Delete" }
    );
    let subject = if p.subject.is_empty() {
        e.summary.subject.as_str()
    } else {
        p.subject.as_str()
    };
    let _ = write!(
        out,
        "<article class=\"message\"><h1>{}{}</h1><dl class=\"headers\">",
        if flagged {
            "<span class=\"flag\" title=\"Flagged\">&#9733;</span> "
        } else {
            ""
        },
        esc(if subject.is_empty() {
            "(no subject)"
        } else {
            subject
        })
    );
    for (label, value) in [
        ("From", &p.from),
        ("To", &p.to),
        ("Cc", &p.cc),
        ("Date", &p.date),
    ] {
        if !value.is_empty() {
            let _ = write!(out, "<dt>{label}</dt><dd>{}</dd>", esc(value));
        }
    }
    out.push_str("</dl>");
    match (cleaned, &p.html) {
        (Some(c), _) => {
            if c.blocked_images > 0 {
                let _ = write!(
                    out,
                    "<div class=\"notice images\">Remote images in this message were blocked to \
                     protect your privacy. <a href=\"/message/{id}?images=1\">Load images</a></div>"
                );
            }
            let _ = write!(
                out,
                "<p class=\"view\"><a href=\"/message/{id}?view=text\">Show as plain text</a></p>\
                 <div class=\"body html\">{}</div>",
                c.html
            );
        }
        (None, Some(_)) if as_text => {
            let _ = write!(
                out,
                "<p class=\"view\"><a href=\"/message/{id}\">Show formatted</a></p>\
                 <pre class=\"body text\">{}</pre>",
                esc(&p.text_or_html())
            );
        }
        _ => {
            let _ = write!(
                out,
                "<pre class=\"body text\">{}</pre>",
                esc(p.text.as_deref().unwrap_or(""))
            );
        }
    }
    if !p.attachments.is_empty() {
        let _ = write!(
            out,
            "<section class=\"attachments\"><h2>Attachments ({})</h2><ul>",
            p.attachments.len()
        );
        for a in &p.attachments {
            let _ = write!(
                out,
                "<li><a href=\"/message/{id}/attachment/{}\">{}</a> \
                 <span class=\"muted\">{} · {}</span></li>",
                a.index,
                esc(&a.name),
                esc(&mime::human_size(a.data.len() as u64)),
                esc(&a.content_type)
            );
        }
        out.push_str("</ul></section>");
    }
    let _ = write!(
        out,
        "<p class=\"source\"><a href=\"/message/{id}/raw\">View source</a></p></article>"
    );
    out
}

async fn attachment(
    State(ctx): State<Arc<Ctx>>,
    WebSession(s): WebSession,
    Path((id, n)): Path<(MsgId, usize)>,
) -> Response {
    let m = match s.mailbox(&ctx).fetch(id, false).await {
        Ok(m) => m,
        Err(e) => return error_page(&ctx, &s, e.into()).await,
    };
    let parsed = mime::parse(&m.body);
    match parsed.attachments.get(n) {
        Some(a) => crate::api::attachment_response(a),
        None => error_page(&ctx, &s, Error::NotFound("no such attachment")).await,
    }
}

/// An image attachment shown inside the message's HTML (`cid:` references).
async fn inline_image(
    State(ctx): State<Arc<Ctx>>,
    WebSession(s): WebSession,
    Path((id, n)): Path<(MsgId, usize)>,
) -> Response {
    let Ok(m) = s.mailbox(&ctx).fetch(id, false).await else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let parsed = mime::parse(&m.body);
    match parsed.attachments.get(n) {
        Some(a) if mime::is_inline_image(&a.content_type) => (
            [
                (CONTENT_TYPE, mime::safe_content_type(&a.content_type)),
                (CONTENT_DISPOSITION, "inline"),
                (CONTENT_SECURITY_POLICY, "default-src 'none'; sandbox"),
                (CACHE_CONTROL, "private, max-age=3600"),
            ],
            a.data.clone(),
        )
            .into_response(),
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

/// The stored message as text, for "View source".
async fn raw(
    State(ctx): State<Arc<Ctx>>,
    WebSession(s): WebSession,
    Path(id): Path<MsgId>,
) -> Response {
    match s.mailbox(&ctx).fetch(id, false).await {
        Ok(m) => (
            [
                (CONTENT_TYPE, "text/plain; charset=utf-8".to_string()),
                (
                    CONTENT_DISPOSITION,
                    format!("inline; filename=\"message-{id}.eml\""),
                ),
                (
                    CONTENT_SECURITY_POLICY,
                    "default-src 'none'; sandbox".to_string(),
                ),
            ],
            m.body,
        )
            .into_response(),
        Err(e) => error_page(&ctx, &s, e.into()).await,
    }
}

/// Bulk actions from a folder page or the message view.
async fn message_action(
    State(ctx): State<Arc<Ctx>>,
    WebSession(s): WebSession,
    body: Bytes,
) -> Response {
    let form = match checked_form(&ctx, &s, &body).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let ids: Vec<MsgId> = form
        .all("id")
        .filter_map(|v| v.parse().ok())
        .take(crate::api::MAX_IDS)
        .collect();
    let folder = form.get("folder").unwrap_or(xfs::INBOX).to_string();
    let page: u32 = form.get("page").and_then(|p| p.parse().ok()).unwrap_or(0);
    let from_message = form.get("from") == Some("message");
    let action = form.get("action").unwrap_or("");
    let back = html::folder_url(&folder, page);
    if ids.is_empty() {
        return redirect(&with_notice(&back, "none_selected"));
    }
    let mb = s.mailbox(&ctx);
    let result = match action {
        "read" => mb
            .set_flags(&ids, Flags::SEEN, Flags::NONE)
            .await
            .map(|_| "marked"),
        "unread" => mb
            .set_flags(&ids, Flags::NONE, Flags::SEEN)
            .await
            .map(|_| "marked"),
        "flag" => mb
            .set_flags(&ids, Flags::FLAGGED, Flags::NONE)
            .await
            .map(|_| "marked"),
        "unflag" => mb
            .set_flags(&ids, Flags::NONE, Flags::FLAGGED)
            .await
            .map(|_| "marked"),
        "move" => match form.get("to").filter(|t| !t.is_empty()) {
            Some(to) => mb.move_to(&ids, to).await.map(|_| "moved"),
            None => Err(StoreError::BadRequest("Choose a folder to move to.".into())),
        },
        "delete" if folder == "Trash" => mb.expunge(&ids).await.map(|_| "expunged"),
        "delete" => mb.move_to(&ids, "Trash").await.map(|_| "deleted"),
        _ => Err(StoreError::BadRequest("Unknown action.".into())),
    };
    match result {
        // Flagging from the message view stays there; anything else goes back to the folder
        // (going back to a message marked unread would mark it read again).
        Ok(code) if from_message && matches!(action, "flag" | "unflag") => {
            redirect(&with_notice(&format!("/message/{}", ids[0]), code))
        }
        Ok(code) => redirect(&with_notice(&back, code)),
        Err(e) => error_page(&ctx, &s, e.into()).await,
    }
}

async fn empty_folder(
    State(ctx): State<Arc<Ctx>>,
    WebSession(s): WebSession,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    if let Err(r) = checked_form(&ctx, &s, &body).await {
        return r;
    }
    if !EMPTYABLE.contains(&name.as_str()) {
        return error_page(
            &ctx,
            &s,
            Error::BadRequest("Only Trash and Junk can be emptied.".into()),
        )
        .await;
    }
    match s.mailbox(&ctx).empty_folder(&name).await {
        Ok(_) => redirect(&with_notice(&html::folder_url(&name, 0), "emptied")),
        Err(e) => error_page(&ctx, &s, e.into()).await,
    }
}

#[derive(Debug, Deserialize, Default)]
struct ComposeQuery {
    to: Option<String>,
    reply: Option<MsgId>,
    reply_all: Option<MsgId>,
    forward: Option<MsgId>,
}

/// What the compose form shows.
#[derive(Debug, Default)]
struct ComposeForm {
    to: String,
    cc: String,
    bcc: String,
    subject: String,
    text: String,
    /// The Message-ID answered and the references, carried to the send.
    in_reply_to: String,
    references: String,
    /// The message answered (marked answered once sent).
    answered: Option<MsgId>,
    /// The message forwarded, and its attachments offered (index, name, size).
    forward_of: Option<MsgId>,
    forward_attachments: Vec<(usize, String, usize)>,
}

fn compose_html(s: &Session, f: &ComposeForm, heading: &str) -> String {
    let mut out = format!(
        "<h1>{}</h1><form method=\"post\" action=\"/compose\" enctype=\"multipart/form-data\" class=\"compose\">{}",
        esc(heading),
        html::csrf_field(s)
    );
    if !f.in_reply_to.is_empty() {
        let _ = write!(
            out,
            "<input type=\"hidden\" name=\"in_reply_to\" value=\"{}\">\
             <input type=\"hidden\" name=\"references\" value=\"{}\">",
            esc(&f.in_reply_to),
            esc(&f.references)
        );
    }
    if let Some(a) = f.answered {
        let _ = write!(
            out,
            "<input type=\"hidden\" name=\"answered\" value=\"{a}\">"
        );
    }
    if let Some(fw) = f.forward_of {
        let _ = write!(
            out,
            "<input type=\"hidden\" name=\"forward_of\" value=\"{fw}\">"
        );
    }
    let _ = write!(
        out,
        "<label class=\"field\">To <input type=\"text\" name=\"to\" value=\"{}\"></label>\
         <label class=\"field\">Cc <input type=\"text\" name=\"cc\" value=\"{}\"></label>\
         <label class=\"field\">Bcc <input type=\"text\" name=\"bcc\" value=\"{}\"></label>\
         <label class=\"field\">Subject <input type=\"text\" name=\"subject\" value=\"{}\"></label>\
         <label class=\"textlabel\">Message <textarea name=\"text\" rows=\"18\">{}</textarea></label>",
        esc(&f.to),
        esc(&f.cc),
        esc(&f.bcc),
        esc(&f.subject),
        esc(&f.text)
    );
    if !f.forward_attachments.is_empty() {
        out.push_str("<fieldset><legend>Attachments of the original</legend>");
        for (n, name, size) in &f.forward_attachments {
            let _ = write!(
                out,
                "<label class=\"check\"><input type=\"checkbox\" name=\"keep\" value=\"{n}\" checked> {} \
                 <span class=\"muted\">{}</span></label>",
                esc(name),
                esc(&mime::human_size(*size as u64))
            );
        }
        out.push_str("</fieldset>");
    }
    out.push_str(
        "<label class=\"field\">Attach <input type=\"file\" name=\"attachments\" multiple></label>\
         <div class=\"actions\"><button type=\"submit\" class=\"primary\">Send</button>\
         <a class=\"button\" href=\"/\">Discard</a></div></form>",
    );
    out
}

async fn compose_page(
    State(ctx): State<Arc<Ctx>>,
    WebSession(s): WebSession,
    Query(q): Query<ComposeQuery>,
) -> Response {
    let mut f = ComposeForm {
        to: q.to.clone().unwrap_or_default(),
        ..Default::default()
    };
    let mut notices = Vec::new();
    let mut heading = "New message";
    let original = q.reply.or(q.reply_all).or(q.forward);
    if let Some(id) = original {
        match s.mailbox(&ctx).fetch(id, false).await {
            Ok(m) => {
                let p = mime::parse(&m.body);
                if q.forward.is_some() {
                    heading = "Forward";
                    f.subject = compose::forward_subject(&p.subject);
                    f.text = compose::forwarded(&p);
                    f.forward_of = Some(id);
                    f.forward_attachments = p
                        .attachments
                        .iter()
                        .map(|a| (a.index, a.name.clone(), a.data.len()))
                        .collect();
                } else {
                    heading = "Reply";
                    let (to, cc) = compose::reply_recipients(&p, &s.user, q.reply_all.is_some());
                    f.to = to.join(", ");
                    f.cc = cc.join(", ");
                    f.subject = compose::reply_subject(&p.subject);
                    f.text = compose::quote(&p.date, &p.from, &p.text_or_html());
                    f.in_reply_to = p.message_id.clone().unwrap_or_default();
                    f.references = p.references.join(" ");
                    f.answered = Some(id);
                }
            }
            Err(StoreError::NoSuchMessage) => {
                notices.push(Notice::error("The original message no longer exists."))
            }
            Err(e) => notices.push(store_notice(&e)),
        }
    }
    let main = compose_html(&s, &f, heading);
    let status = if notices.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    // Composing works without the store: a sidebar failure alone keeps the page a 200.
    let (folders, problem) = sidebar(&ctx, &s).await;
    if let Some(p) = problem {
        if !notices.contains(&p) {
            notices.insert(0, p);
        }
    }
    let chrome = Chrome {
        session: &s,
        folders: folders.as_deref(),
        current: None,
        query: "",
    };
    html_response(status, html::page(heading, &chrome, &notices, &main))
}

async fn compose_send(
    State(ctx): State<Arc<Ctx>>,
    WebSession(s): WebSession,
    mut multipart: Multipart,
) -> Response {
    let mut fields: Vec<(String, String)> = Vec::new();
    let mut uploads: Vec<OutAttachment> = Vec::new();
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => {
                let status = e.status();
                let msg = if status == StatusCode::PAYLOAD_TOO_LARGE {
                    format!(
                        "The message is too large: at most {} in all.",
                        mime::human_size(ctx.cfg.max_upload_bytes as u64)
                    )
                } else {
                    format!("The form could not be read: {}", e.body_text())
                };
                let main = "<h1>Not sent</h1>".to_string();
                return render(
                    &ctx,
                    &s,
                    status,
                    "Not sent",
                    None,
                    vec![Notice::error(msg)],
                    &main,
                )
                .await;
            }
        };
        let name = field.name().unwrap_or("").to_string();
        if name == "attachments" {
            let file_name = field.file_name().unwrap_or("").to_string();
            let content_type = field
                .content_type()
                .unwrap_or("application/octet-stream")
                .to_string();
            match field.bytes().await {
                Ok(data) if !(file_name.is_empty() && data.is_empty()) => {
                    uploads.push(OutAttachment {
                        name: file_name,
                        content_type,
                        data: data.to_vec(),
                    })
                }
                Ok(_) => {}
                Err(e) => {
                    let msg = format!("An attachment could not be read: {}", e.body_text());
                    return render(
                        &ctx,
                        &s,
                        e.status(),
                        "Not sent",
                        None,
                        vec![Notice::error(msg)],
                        "<h1>Not sent</h1>",
                    )
                    .await;
                }
            }
        } else {
            match field.text().await {
                Ok(v) => fields.push((name, v)),
                Err(e) => {
                    let msg = format!("The form could not be read: {}", e.body_text());
                    return render(
                        &ctx,
                        &s,
                        e.status(),
                        "Not sent",
                        None,
                        vec![Notice::error(msg)],
                        "<h1>Not sent</h1>",
                    )
                    .await;
                }
            }
        }
    }
    let form = FormData(fields);
    if !s.csrf_ok(&ctx, form.get("csrf")) {
        return error_page(&ctx, &s, Error::Csrf).await;
    }
    let get = |k: &str| form.get(k).unwrap_or("").to_string();
    let mut shown = ComposeForm {
        to: get("to"),
        cc: get("cc"),
        bcc: get("bcc"),
        subject: get("subject"),
        text: get("text"),
        in_reply_to: get("in_reply_to"),
        references: get("references"),
        answered: form.get("answered").and_then(|v| v.parse().ok()),
        forward_of: form.get("forward_of").and_then(|v| v.parse().ok()),
        forward_attachments: Vec::new(),
    };
    let mut draft = Draft {
        to: compose::split_addresses(&shown.to),
        cc: compose::split_addresses(&shown.cc),
        bcc: compose::split_addresses(&shown.bcc),
        subject: shown.subject.clone(),
        text: shown.text.clone(),
        in_reply_to: (!shown.in_reply_to.trim().is_empty()).then(|| shown.in_reply_to.clone()),
        references: shown
            .references
            .split_whitespace()
            .map(str::to_string)
            .collect(),
        attachments: Vec::new(),
    };
    let keep: Vec<usize> = form.all("keep").filter_map(|v| v.parse().ok()).collect();
    if let (Some(fw), false) = (shown.forward_of, keep.is_empty()) {
        match s.mailbox(&ctx).fetch(fw, false).await {
            Ok(m) => {
                let p = mime::parse(&m.body);
                shown.forward_attachments = p
                    .attachments
                    .iter()
                    .map(|a| (a.index, a.name.clone(), a.data.len()))
                    .collect();
                for a in p
                    .attachments
                    .into_iter()
                    .filter(|a| keep.contains(&a.index))
                {
                    draft.attachments.push(OutAttachment {
                        name: a.name,
                        content_type: a.content_type,
                        data: a.data,
                    });
                }
            }
            Err(e) => {
                let notices = vec![
                    store_notice(&e),
                    Notice::error(
                        "Not sent: the original message's attachments could not be loaded. \
                         Uncheck them to send without them, or try again later.",
                    ),
                ];
                let main = compose_html(&s, &shown, "Forward");
                return render(
                    &ctx,
                    &s,
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Forward",
                    None,
                    notices,
                    &main,
                )
                .await;
            }
        }
    }
    draft.attachments.extend(uploads);
    match compose::send(&ctx, &s, &draft).await {
        Ok(sent) => {
            if let Some(orig) = shown.answered {
                let _ = s
                    .mailbox(&ctx)
                    .set_flags(&[orig], Flags::ANSWERED, Flags::NONE)
                    .await;
            }
            let code = if sent.copy.is_ok() {
                "sent"
            } else {
                "sent_nocopy"
            };
            redirect(&with_notice(&html::folder_url(xfs::INBOX, 0), code))
        }
        Err(e) => {
            let status = match e {
                SendError::Invalid(_) => StatusCode::BAD_REQUEST,
                _ => StatusCode::BAD_GATEWAY,
            };
            let mut text = format!("Not sent: {e}");
            if !draft.attachments.is_empty() {
                text.push_str(" Files you attached must be attached again.");
            }
            let main = compose_html(&s, &shown, "New message");
            let (folders, _) = sidebar(&ctx, &s).await;
            let chrome = Chrome {
                session: &s,
                folders: folders.as_deref(),
                current: None,
                query: "",
            };
            html_response(
                status,
                html::page("New message", &chrome, &[Notice::error(text)], &main),
            )
        }
    }
}

async fn folders_page(
    State(ctx): State<Arc<Ctx>>,
    WebSession(s): WebSession,
    Query(q): Query<FolderQuery>,
) -> Response {
    let mut notices: Vec<Notice> =
        q.n.as_deref()
            .and_then(html::notice_for)
            .into_iter()
            .collect();
    let folders = s.mailbox(&ctx).folders().await;
    let main = match &folders {
        Ok(list) => manage_html(&s, list),
        Err(e) => {
            notices.insert(0, store_notice(e));
            "<h1>Folders</h1>".to_string()
        }
    };
    let status = if folders.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let chrome = Chrome {
        session: &s,
        folders: folders.as_deref().ok(),
        current: None,
        query: "",
    };
    html_response(status, html::page("Folders", &chrome, &notices, &main))
}

fn manage_html(s: &Session, folders: &[FolderInfo]) -> String {
    let csrf = html::csrf_field(s);
    let mut out = String::from(
        "<h1>Folders</h1><table class=\"folder-admin\"><thead><tr><th>Folder</th><th>Messages</th>\
         <th>Unread</th><th>Size</th><th></th></tr></thead><tbody>",
    );
    for f in folders {
        let system = xfs::SYSTEM_FOLDERS.contains(&f.name.as_str());
        let actions = if system {
            "<span class=\"muted\">System folder</span>".to_string()
        } else {
            format!(
                "<form method=\"post\" action=\"/folders/rename\" class=\"inline\">{csrf}\
                 <input type=\"hidden\" name=\"from\" value=\"{0}\">\
                 <input type=\"text\" name=\"to\" value=\"{0}\" aria-label=\"New name for {0}\" required>\
                 <button type=\"submit\">Rename</button></form>\
                 <form method=\"post\" action=\"/folders/delete\" class=\"inline\">{csrf}\
                 <input type=\"hidden\" name=\"name\" value=\"{0}\">\
                 <button type=\"submit\" class=\"danger\" title=\"Deletes the folder and the messages in it\">Delete</button></form>",
                esc(&f.name)
            )
        };
        let _ = write!(
            out,
            "<tr><td><a href=\"{}\">{}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{actions}</td></tr>",
            esc(&html::folder_url(&f.name, 0)),
            esc(&f.name),
            f.total,
            f.unread,
            esc(&mime::human_size(f.bytes))
        );
    }
    let _ = write!(
        out,
        "</tbody></table><h2>New folder</h2><form method=\"post\" action=\"/folders/create\" class=\"inline\">{csrf}\
         <input type=\"text\" name=\"name\" aria-label=\"Folder name\" placeholder=\"Folder name\" required>\
         <button type=\"submit\" class=\"primary\">Create</button></form>"
    );
    out
}

async fn folder_form(
    ctx: &Ctx,
    s: &Session,
    body: &[u8],
    act: impl AsyncFnOnce(&FormData) -> Result<&'static str, StoreError>,
) -> Response {
    let form = match checked_form(ctx, s, body).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    match act(&form).await {
        Ok(code) => redirect(&with_notice("/folders", code)),
        Err(StoreError::Unavailable(_)) | Err(StoreError::Corrupt(_)) => {
            error_page(ctx, s, Error::Unavailable(String::new())).await
        }
        Err(e) => {
            let (folders, _) = sidebar(ctx, s).await;
            let main = folders
                .as_deref()
                .map(|f| manage_html(s, f))
                .unwrap_or_default();
            let chrome = Chrome {
                session: s,
                folders: folders.as_deref(),
                current: None,
                query: "",
            };
            let err = Error::from(e);
            html_response(
                err.status(),
                html::page("Folders", &chrome, &[Notice::error(err.to_string())], &main),
            )
        }
    }
}

fn folder_name(v: Option<&str>) -> Result<String, StoreError> {
    let name = v.unwrap_or("").trim();
    if name.is_empty() {
        return Err(StoreError::BadRequest("Give the folder a name.".into()));
    }
    Ok(name.to_string())
}

async fn folder_create(
    State(ctx): State<Arc<Ctx>>,
    WebSession(s): WebSession,
    body: Bytes,
) -> Response {
    let mb = s.mailbox(&ctx);
    folder_form(&ctx, &s, &body, async |f: &FormData| {
        mb.create_folder(&folder_name(f.get("name"))?).await?;
        Ok("folder_created")
    })
    .await
}

async fn folder_rename(
    State(ctx): State<Arc<Ctx>>,
    WebSession(s): WebSession,
    body: Bytes,
) -> Response {
    let mb = s.mailbox(&ctx);
    folder_form(&ctx, &s, &body, async |f: &FormData| {
        let from = folder_name(f.get("from"))?;
        let to = folder_name(f.get("to"))?;
        if from != to {
            mb.rename_folder(&from, &to).await?;
        }
        Ok("folder_renamed")
    })
    .await
}

async fn folder_delete(
    State(ctx): State<Arc<Ctx>>,
    WebSession(s): WebSession,
    body: Bytes,
) -> Response {
    let mb = s.mailbox(&ctx);
    folder_form(&ctx, &s, &body, async |f: &FormData| {
        mb.delete_folder(&folder_name(f.get("name"))?).await?;
        Ok("folder_deleted")
    })
    .await
}

async fn search_page(
    State(ctx): State<Arc<Ctx>>,
    WebSession(s): WebSession,
    uri: axum::http::Uri,
) -> Response {
    // `in` may repeat (checkboxes) or be a comma list.
    let params: Vec<(String, String)> =
        form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    let q = params
        .iter()
        .find(|(k, _)| k == "q")
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default();
    let fields: Vec<&str> = params
        .iter()
        .filter(|(k, _)| k == "in")
        .map(|(_, v)| v.as_str())
        .collect();
    let (in_from, in_subject, in_body) =
        crate::api::search_fields(Some(&fields.join(","))).unwrap_or((true, true, true));
    let checked = |b: bool| if b { " checked" } else { "" };
    let mut main = format!(
        "<h1>Search</h1><form method=\"get\" action=\"/search\" class=\"search-form\">\
         <input type=\"search\" name=\"q\" value=\"{}\" aria-label=\"Search for\" required>\
         <label class=\"check\"><input type=\"checkbox\" name=\"in\" value=\"from\"{}> From</label>\
         <label class=\"check\"><input type=\"checkbox\" name=\"in\" value=\"subject\"{}> Subject</label>\
         <label class=\"check\"><input type=\"checkbox\" name=\"in\" value=\"body\"{}> Message text</label>\
         <button type=\"submit\" class=\"primary\">Search</button></form>",
        esc(&q),
        checked(in_from),
        checked(in_subject),
        checked(in_body)
    );
    let mut notices = Vec::new();
    let mut status = StatusCode::OK;
    if !q.is_empty() {
        let hits = s
            .mailbox(&ctx)
            .search(SearchQuery {
                text: q.clone(),
                in_from,
                in_subject,
                in_body,
                folder: None,
                limit: 200,
            })
            .await;
        match hits {
            Ok(hits) if hits.is_empty() => {
                let _ = write!(
                    main,
                    "<p class=\"empty\">No messages match “{}”.</p>",
                    esc(&q)
                );
            }
            Ok(hits) => {
                let now = auth::now_ms();
                let _ = write!(
                    main,
                    "<p class=\"sub\">{} found</p><table class=\"messages\"><tbody>",
                    hits.len()
                );
                for e in &hits {
                    main.push_str(&entry_row(e, now, false, true, false));
                }
                main.push_str("</tbody></table>");
            }
            Err(e) => {
                status = StatusCode::SERVICE_UNAVAILABLE;
                notices.push(store_notice(&e));
            }
        }
    }
    let (folders, problem) = sidebar(&ctx, &s).await;
    if let Some(p) = problem {
        if !notices.contains(&p) {
            notices.insert(0, p);
        }
        status = StatusCode::SERVICE_UNAVAILABLE;
    }
    let chrome = Chrome {
        session: &s,
        folders: folders.as_deref(),
        current: None,
        query: &q,
    };
    html_response(status, html::page("Search", &chrome, &notices, &main))
}

#[derive(Debug, Deserialize)]
struct NoticeQuery {
    n: Option<String>,
}

fn settings_html(s: &Session, display_name: &str) -> String {
    let csrf = html::csrf_field(s);
    format!(
        "<h1>Settings</h1><section class=\"card\"><h2>Account</h2><p>Signed in as <strong>{}</strong></p>\
         <form method=\"post\" action=\"/settings/name\">{csrf}\
         <label>Display name <input type=\"text\" name=\"display_name\" value=\"{}\" maxlength=\"{MAX_DISPLAY_NAME}\"></label>\
         <button type=\"submit\" class=\"primary\">Save</button></form></section>\
         <section class=\"card\"><h2>Change password</h2>\
         <form method=\"post\" action=\"/settings/password\">{csrf}\
         <label>Current password <input type=\"password\" name=\"current\" autocomplete=\"current-password\" required></label>\
         <label>New password <input type=\"password\" name=\"new\" autocomplete=\"new-password\" minlength=\"{MIN_PASSWORD}\" required></label>\
         <label>New password again <input type=\"password\" name=\"confirm\" autocomplete=\"new-password\" minlength=\"{MIN_PASSWORD}\" required></label>\
         <p class=\"muted\">Changing your password signs out every other session of this account.</p>\
         <button type=\"submit\" class=\"primary\">Change password</button></form></section>",
        esc(&s.user),
        esc(display_name)
    )
}

async fn settings_page(
    State(ctx): State<Arc<Ctx>>,
    WebSession(s): WebSession,
    Query(q): Query<NoticeQuery>,
) -> Response {
    let notices: Vec<Notice> =
        q.n.as_deref()
            .and_then(html::notice_for)
            .into_iter()
            .collect();
    let main = settings_html(&s, &s.display_name);
    render(&ctx, &s, StatusCode::OK, "Settings", None, notices, &main).await
}

async fn settings_error(ctx: &Ctx, s: &Session, status: StatusCode, text: &str) -> Response {
    let main = settings_html(s, &s.display_name);
    render(
        ctx,
        s,
        status,
        "Settings",
        None,
        vec![Notice::error(text)],
        &main,
    )
    .await
}

async fn settings_name(
    State(ctx): State<Arc<Ctx>>,
    WebSession(s): WebSession,
    body: Bytes,
) -> Response {
    let form = match checked_form(&ctx, &s, &body).await {
        Ok(f) => f,
        Err(r) => return r,
    };
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
            if let Some(mut h) = ctx.accounts.get(&s.user).await {
                h.display_name = name;
                auth::remember(&ctx, &s.user, h).await;
            }
            redirect("/settings?n=name_saved")
        }
        Err(e) => error_page(&ctx, &s, e.into()).await,
    }
}

async fn settings_password(
    State(ctx): State<Arc<Ctx>>,
    WebSession(s): WebSession,
    body: Bytes,
) -> Response {
    let form = match checked_form(&ctx, &s, &body).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let current = form.get("current").unwrap_or("").to_string();
    let new = form.get("new").unwrap_or("").to_string();
    if Some(new.as_str()) != form.get("confirm") {
        return settings_error(
            &ctx,
            &s,
            StatusCode::BAD_REQUEST,
            "The new passwords differ.",
        )
        .await;
    }
    if new.chars().count() < MIN_PASSWORD || new.len() > session::password::MAX_PASSWORD_BYTES {
        return settings_error(
            &ctx,
            &s,
            StatusCode::BAD_REQUEST,
            "A new password needs at least 8 characters.",
        )
        .await;
    }
    let failures = ctx.password_failures.get(&s.user).await.unwrap_or(0);
    if failures >= MAX_PASSWORD_FAILURES {
        return settings_error(
            &ctx,
            &s,
            StatusCode::TOO_MANY_REQUESTS,
            "Too many wrong passwords. Wait a while and try again.",
        )
        .await;
    }
    let mb = s.mailbox(&ctx);
    let auth_rec = match mb.auth().await {
        Ok(a) => a,
        Err(e) => return error_page(&ctx, &s, e.into()).await,
    };
    // Hashing is deliberately slow: keep it off the request threads.
    let stored = auth_rec.password_hash;
    let ok = tokio::task::spawn_blocking(move || session::password::verify(&current, &stored))
        .await
        .unwrap_or(false);
    if !ok {
        ctx.password_failures
            .insert(s.user.clone(), failures + 1)
            .await;
        return settings_error(
            &ctx,
            &s,
            StatusCode::FORBIDDEN,
            "The current password is not right.",
        )
        .await;
    }
    let hash = match tokio::task::spawn_blocking(move || session::password::hash(&new)).await {
        Ok(Ok(h)) => h,
        Ok(Err(e)) => return settings_error(&ctx, &s, StatusCode::BAD_REQUEST, &e).await,
        Err(e) => return error_page(&ctx, &s, Error::Internal(e.to_string())).await,
    };
    if let Err(e) = mb.update_account(None, Some(hash)).await {
        return error_page(&ctx, &s, e.into()).await;
    }
    ctx.password_failures.invalidate(&s.user).await;
    // The store bumped the generation; read it back (or count the bump ourselves).
    let new_gen = match mb.auth().await {
        Ok(a) => a.session_gen,
        Err(_) => auth_rec.session_gen + 1,
    };
    auth::remember(
        &ctx,
        &s.user,
        AccountHint {
            session_gen: new_gen,
            display_name: auth_rec.display_name,
            read_at: std::time::Instant::now(),
        },
    )
    .await;
    let claims = session::token::Claims {
        user: s.user.clone(),
        gen: new_gen,
        iat: auth::now_secs(),
        exp: s.claims.exp,
        sid: session::token::new_sid(),
    };
    let token = ctx.keys.issue(&claims);
    tracing::info!(user = %s.user, gen = new_gen, trace = %s.trace, "password changed");
    let mut resp = redirect("/settings?n=password_changed");
    resp.headers_mut()
        .insert(SET_COOKIE, auth::session_cookie(&ctx, &token, claims.exp));
    resp
}

async fn logout(State(ctx): State<Arc<Ctx>>, WebSession(s): WebSession, body: Bytes) -> Response {
    if let Err(r) = checked_form(&ctx, &s, &body).await {
        return r;
    }
    // The sign-in page then says the user signed out.
    let to = format!("{}/?signed_out=1", ctx.cfg.login_url.trim_end_matches('/'));
    let mut resp = redirect(&to);
    resp.headers_mut()
        .insert(SET_COOKIE, auth::clear_cookie(&ctx));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_keep_repeated_fields() {
        let f = FormData::parse(b"csrf=a%2Bb&id=1&id=2&action=move&to=My+Stuff");
        assert_eq!(f.get("csrf"), Some("a+b"));
        assert_eq!(f.all("id").collect::<Vec<_>>(), vec!["1", "2"]);
        assert_eq!(f.get("to"), Some("My Stuff"));
        assert_eq!(f.get("nope"), None);
    }

    #[test]
    fn notices_join_the_query() {
        assert_eq!(with_notice("/folder/Inbox", "sent"), "/folder/Inbox?n=sent");
        assert_eq!(
            with_notice("/folder/Inbox?page=2", "moved"),
            "/folder/Inbox?page=2&n=moved"
        );
    }
}
