//! The message view (headers, the sanitized HTML or the text, attachments, the actions on it),
//! and what it links to: attachment downloads, inline images and the message's source.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::header::{
    CACHE_CONTROL, CONTENT_DISPOSITION, CONTENT_SECURITY_POLICY, CONTENT_TYPE,
};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use maud::{html, Markup, PreEscaped};
use serde::Deserialize;
use xfs::{Flags, FolderInfo, IndexEntry, MsgId};

use super::layout::{self, csrf_field, folder_select, Chrome};
use super::{error_page, html_response, sidebar};
use crate::auth::{Session, WebSession};
use crate::error::Error;
use crate::{mime, sanitize, Ctx};

#[derive(Debug, Deserialize)]
pub(super) struct MessageQuery {
    images: Option<u8>,
    view: Option<String>,
    n: Option<String>,
}

pub(super) async fn message_page(
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
    // A message the user sent shows where each recipient's delivery stands.
    let delivery = if m.entry.folder == xfs::SENT {
        mb.queue()
            .await
            .ok()
            .map(|q| crate::compose::delivery(&q, id))
    } else {
        None
    };
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
    let mut notices: Vec<_> = problem.into_iter().collect();
    notices.extend(layout::notices_named(q.n.as_deref()));
    let main = message_html(
        &s,
        &entry,
        &parsed,
        cleaned.as_ref(),
        as_text,
        folders.as_deref(),
        delivery.as_deref(),
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
    let mut resp = html_response(StatusCode::OK, layout::page(title, &chrome, &notices, main));
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
    delivery: Option<&[crate::compose::DeliveryState]>,
) -> Markup {
    let id = e.msg;
    let flagged = e.flags.contains(Flags::FLAGGED);
    let subject = match (p.subject.as_str(), e.summary.subject.as_str()) {
        ("", "") => "(no subject)",
        ("", indexed) => indexed,
        (parsed, _) => parsed,
    };
    html! {
        div class="toolbar msg-actions" {
            a class="button" href={ "/compose?reply=" (id) } { "Reply" }
            a class="button" href={ "/compose?reply_all=" (id) } { "Reply all" }
            a class="button" href={ "/compose?forward=" (id) } { "Forward" }
            form method="post" action="/messages" class="inline" {
                (csrf_field(s))
                input type="hidden" name="id" value=(id);
                input type="hidden" name="folder" value=(e.folder);
                input type="hidden" name="from" value="message";
                button type="submit" name="action" value="unread" { "Mark unread" }
                @if flagged {
                    button type="submit" name="action" value="unflag" { "Unflag" }
                } @else {
                    button type="submit" name="action" value="flag" { "Flag" }
                }
                @if let Some(folders) = folders {
                    span class="move" {
                        (folder_select(folders, Some(&e.folder)))
                        button type="submit" name="action" value="move" { "Move" }
                    }
                }
                button type="submit" name="action" value="delete" class="danger" {
                    @if e.folder == "Trash" { "Delete forever" } @else { "Delete" }
                }
            }
        }
        article class="message" {
            h1 {
                @if flagged { span class="flag" title="Flagged" { "★" } " " }
                (subject)
            }
            dl class="headers" {
                @for (label, value) in [("From", &p.from), ("To", &p.to), ("Cc", &p.cc), ("Date", &p.date)] {
                    @if !value.is_empty() { dt { (label) } dd { (value) } }
                }
            }
            @match (cleaned, &p.html) {
                (Some(c), _) => {
                    @if c.blocked_images > 0 {
                        div class="notice images" {
                            "Remote images in this message were blocked to protect your privacy. "
                            a href={ "/message/" (id) "?images=1" } { "Load images" }
                        }
                    }
                    p class="view" { a href={ "/message/" (id) "?view=text" } { "Show as plain text" } }
                    div class="body html" {
                        // The message's own HTML, the one markup from outside a page shows: it
                        // went through `sanitize::clean` (an allow-list serialized by ammonia),
                        // so it is inserted as it is, not escaped again.
                        (PreEscaped(&c.html))
                    }
                }
                (None, Some(_)) if as_text => {
                    p class="view" { a href={ "/message/" (id) } { "Show formatted" } }
                    pre class="body text" { (p.text_or_html()) }
                }
                _ => {
                    pre class="body text" { (p.text.as_deref().unwrap_or("")) }
                }
            }
            @if !p.attachments.is_empty() {
                section class="attachments" {
                    h2 { "Attachments (" (p.attachments.len()) ")" }
                    ul {
                        @for a in &p.attachments {
                            li {
                                a href={ "/message/" (id) "/attachment/" (a.index) } { (a.name) }
                                " "
                                span class="muted" {
                                    (mime::human_size(a.data.len() as u64)) " · " (a.content_type)
                                }
                            }
                        }
                    }
                }
            }
            @if let Some(rows) = delivery.filter(|r| !r.is_empty()) {
                section class="delivery" {
                    h2 { "Delivery" }
                    ul {
                        @for d in rows {
                            li {
                                (d.rcpt) ": "
                                strong { (delivery_label(d)) }
                                @if let Some(r) = &d.last_reply {
                                    " " span class="muted" { (r) }
                                }
                            }
                        }
                    }
                }
            }
            p class="source" { a href={ "/message/" (id) "/raw" } { "View source" } }
        }
    }
}

/// How a recipient's delivery reads on the page.
fn delivery_label(d: &crate::compose::DeliveryState) -> String {
    let when = |ms: Option<u64>| ms.map(runtime::time::rfc5322_date).unwrap_or_default();
    match d.state {
        "queued" => "queued".into(),
        "retrying" => format!("not delivered yet; trying again at {}", when(d.at_ms)),
        "sending" => "being delivered".into(),
        "delivered" => format!("delivered {}", when(d.at_ms)),
        "failed" => "could not be delivered".into(),
        other => other.into(),
    }
}

pub(super) async fn attachment(
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
pub(super) async fn inline_image(
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
pub(super) async fn raw(
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
