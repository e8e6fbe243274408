//! Composing: a new message, a reply (to the sender, or to all) and a forward (with the
//! original's attachments offered), and the send itself from the multipart form. The form
//! works without the store; a failed send shows the form again as it was written.

use std::sync::Arc;

use axum::extract::{Multipart, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use maud::{html, Markup};
use serde::Deserialize;
use xfs::{Flags, MsgId};

use super::layout::{self, csrf_field, Chrome, Notice};
use super::{
    add_first, error_page, html_response, redirect, render, sidebar, store_notice, with_notice,
};
use crate::auth::{Session, WebSession};
use crate::compose::{self, Draft, OutAttachment, SendError};
use crate::error::Error;
use crate::mailbox::StoreError;
use crate::{form, mime, Ctx};

#[derive(Debug, Deserialize, Default)]
pub(super) struct ComposeQuery {
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

/// The attachments of a forwarded message as the form offers them.
fn offered(p: &mime::Parsed) -> Vec<(usize, String, usize)> {
    p.attachments
        .iter()
        .map(|a| (a.index, a.name.clone(), a.data.len()))
        .collect()
}

fn compose_html(s: &Session, f: &ComposeForm, heading: &str) -> Markup {
    html! {
        h1 { (heading) }
        form method="post" action="/compose" enctype="multipart/form-data" class="compose" {
            (csrf_field(s))
            @if !f.in_reply_to.is_empty() {
                input type="hidden" name="in_reply_to" value=(f.in_reply_to);
                input type="hidden" name="references" value=(f.references);
            }
            @if let Some(a) = f.answered {
                input type="hidden" name="answered" value=(a);
            }
            @if let Some(fw) = f.forward_of {
                input type="hidden" name="forward_of" value=(fw);
            }
            label class="field" { "To " input type="text" name="to" value=(f.to); }
            label class="field" { "Cc " input type="text" name="cc" value=(f.cc); }
            label class="field" { "Bcc " input type="text" name="bcc" value=(f.bcc); }
            label class="field" { "Subject " input type="text" name="subject" value=(f.subject); }
            label class="textlabel" { "Message " textarea name="text" rows="18" { (f.text) } }
            @if !f.forward_attachments.is_empty() {
                fieldset {
                    legend { "Attachments of the original" }
                    @for (n, name, size) in &f.forward_attachments {
                        label class="check" {
                            input type="checkbox" name="keep" value=(n) checked;
                            " " (name) " "
                            span class="muted" { (mime::human_size(*size as u64)) }
                        }
                    }
                }
            }
            label class="field" { "Attach " input type="file" name="attachments" multiple; }
            div class="actions" {
                button type="submit" class="primary" { "Send" }
                a class="button" href="/" { "Discard" }
            }
        }
    }
}

pub(super) async fn compose_page(
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
                    f.forward_attachments = offered(&p);
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
        add_first(&mut notices, p);
    }
    let chrome = Chrome::new(&s, folders.as_deref());
    html_response(status, layout::page(heading, &chrome, &notices, main))
}

pub(super) async fn compose_send(
    State(ctx): State<Arc<Ctx>>,
    WebSession(s): WebSession,
    multipart: Multipart,
) -> Response {
    let (form, uploads) = match form::read_multipart(multipart, ctx.cfg.max_upload_bytes).await {
        Ok(read) => read,
        Err(e) => {
            let main = html! { h1 { "Not sent" } };
            let notices = vec![Notice::error(e.message)];
            return render(&ctx, &s, e.status, "Not sent", notices, main).await;
        }
    };
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
                shown.forward_attachments = offered(&p);
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
                    notices,
                    main,
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
            tracing::debug!(copy = sent.copy, queued = sent.queued, "sent");
            redirect(&with_notice(&layout::folder_url(xfs::INBOX, 0), "sent"))
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
            let chrome = Chrome::new(&s, folders.as_deref());
            let notices = [Notice::error(text)];
            html_response(status, layout::page("New message", &chrome, &notices, main))
        }
    }
}
