//! Folder pages: a folder's messages a page at a time (and the message rows search shares),
//! the bulk actions on selected messages, emptying Trash or Junk, and managing folders
//! (create, rename, delete).

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use maud::{html, Markup};
use serde::Deserialize;
use xfs::{Flags, FolderInfo, IndexEntry};

use super::layout::{self, csrf_field, folder_select, folder_url, Chrome, Notice};
use super::{
    add_first, error_page, html_response, redirect, sidebar, store_notice, with_notice,
    NoticeQuery, WebForm,
};
use crate::auth::{self, Session, WebSession};
use crate::error::Error;
use crate::form::FormData;
use crate::mailbox::StoreError;
use crate::{mime, Ctx};

/// Folders that offer "Empty".
const EMPTYABLE: [&str; 2] = ["Trash", "Junk"];

#[derive(Debug, Deserialize)]
pub(super) struct FolderQuery {
    page: Option<u32>,
    n: Option<String>,
}

/// Which columns a row of messages shows.
#[derive(Debug, Clone, Copy)]
pub(super) struct Columns {
    /// The recipients instead of the sender (Sent, Drafts).
    pub to: bool,
    /// The folder the message is in (search results).
    pub folder: bool,
    /// A checkbox to select it for a bulk action.
    pub select: bool,
}

/// One message as a row of a folder page or of search results.
pub(super) fn entry_row(e: &IndexEntry, now: u64, cols: Columns) -> Markup {
    let seen = e.flags.contains(Flags::SEEN);
    let flagged = e.flags.contains(Flags::FLAGGED);
    let class = match (seen, flagged) {
        (false, false) => Some("unread"),
        (false, true) => Some("unread flagged"),
        (true, true) => Some("flagged"),
        (true, false) => None,
    };
    let url = format!("/message/{}", e.msg);
    let (who, full) = if cols.to {
        let to: Vec<&str> = e.summary.to.split(", ").map(layout::display_name).collect();
        (format!("To: {}", to.join(", ")), e.summary.to.as_str())
    } else {
        (
            layout::display_name(&e.summary.from).to_string(),
            e.summary.from.as_str(),
        )
    };
    let subject = if e.summary.subject.is_empty() {
        "(no subject)"
    } else {
        e.summary.subject.as_str()
    };
    html! {
        tr class=[class] {
            @if cols.select {
                td class="sel" {
                    input type="checkbox" name="id" value=(e.msg) aria-label="Select message";
                }
            }
            td class="mark" {
                @if flagged { span class="flag" title="Flagged" { "★" } }
            }
            td class="from" title=(full) {
                a href=(url) {
                    @if !seen { span class="sr" { "Unread: " } }
                    (who)
                }
            }
            td class="subject" {
                a href=(url) {
                    span class="subj" { (subject) } " "
                    span class="preview" { (e.summary.preview) }
                }
            }
            @if cols.folder { td class="in" { (e.folder) } }
            td class="att" {
                @if !e.summary.attachments.is_empty() {
                    span class="clip" title="Has attachments" { "📎" }
                }
            }
            td class="date" { (mime::short_date(e.internal_date_ms, now)) }
        }
    }
}

pub(super) async fn folder_page(
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
    match listing {
        Err(StoreError::Busy) => return error_page(&ctx, &s, Error::Busy).await,
        Err(StoreError::SessionEnded(_)) => return error_page(&ctx, &s, Error::SessionEnded).await,
        _ => {}
    }
    let folders = match &listing {
        Ok(l) => Ok(crate::mailbox::in_order(l.folders.clone())),
        Err(_) => mb.folders().await,
    };
    let mut notices = layout::notices_named(q.n.as_deref());
    let mut status = StatusCode::OK;
    let main = match &listing {
        Ok(listing) => folder_listing(&s, &name, page, size, listing, folders.as_deref().ok()),
        Err(StoreError::NoSuchFolder) => {
            status = StatusCode::NOT_FOUND;
            notices.push(Notice::error("There is no folder by that name."));
            html! { h1 { (name) } }
        }
        Err(e) => {
            status = StatusCode::SERVICE_UNAVAILABLE;
            notices.insert(0, store_notice(e));
            html! {
                h1 { (name) }
                p class="muted" { "Messages cannot be shown right now." }
            }
        }
    };
    if let Err(e) = &folders {
        add_first(&mut notices, store_notice(e));
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
    html_response(status, layout::page(&name, &chrome, &notices, main))
}

fn folder_listing(
    s: &Session,
    name: &str,
    page: u32,
    size: u32,
    listing: &xfs::FolderPage,
    folders: Option<&[FolderInfo]>,
) -> Markup {
    let f = &listing.folder;
    let now = auth::now_ms();
    let first = page * size + 1;
    let last = page * size + listing.entries.len() as u32;
    let cols = Columns {
        to: name == "Sent" || name == "Drafts",
        folder: false,
        select: true,
    };
    html! {
        div class="folder-head" {
            h1 { (name) }
            p class="sub" {
                (f.total) " message" @if f.total != 1 { "s" }
                @if f.unread > 0 { ", " (f.unread) " unread" }
            }
            @if EMPTYABLE.contains(&name) && f.total > 0 {
                form method="post" action={ "/folder/" (layout::enc(name)) "/empty" } class="inline" {
                    (csrf_field(s))
                    button type="submit" class="danger" { "Empty " (name) }
                }
            }
        }
        @if listing.entries.is_empty() {
            p class="empty" { "No messages in " (name) "." }
        } @else {
            form method="post" action="/messages" {
                (csrf_field(s))
                input type="hidden" name="folder" value=(name);
                input type="hidden" name="page" value=(page);
                div class="toolbar" {
                    button type="submit" name="action" value="read" { "Mark read" }
                    button type="submit" name="action" value="unread" { "Mark unread" }
                    button type="submit" name="action" value="flag" { "Flag" }
                    button type="submit" name="action" value="unflag" { "Unflag" }
                    button type="submit" name="action" value="delete" class="danger" {
                        @if name == "Trash" { "Delete forever" } @else { "Delete" }
                    }
                    @if let Some(folders) = folders {
                        span class="move" {
                            (folder_select(folders, Some(name)))
                            button type="submit" name="action" value="move" { "Move" }
                        }
                    }
                }
                table class="messages" {
                    tbody {
                        @for e in &listing.entries { (entry_row(e, now, cols)) }
                    }
                }
            }
            nav class="pager" aria-label="Pages" {
                span { (first) "–" (last) " of " (f.total) }
                @if page > 0 {
                    a class="button" href=(folder_url(name, page - 1)) { "← Newer" }
                }
                @if last < f.total {
                    a class="button" href=(folder_url(name, page + 1)) { "Older →" }
                }
            }
        }
    }
}

/// Bulk actions from a folder page or the message view.
pub(super) async fn message_action(
    State(ctx): State<Arc<Ctx>>,
    WebForm(s, form): WebForm,
) -> Response {
    let mut ids = crate::mailbox::once_each(form.all("id").filter_map(|v| v.parse().ok()));
    ids.truncate(crate::api::MAX_IDS);
    let folder = form.get("folder").unwrap_or(xfs::INBOX).to_string();
    let page: u32 = form.get("page").and_then(|p| p.parse().ok()).unwrap_or(0);
    let from_message = form.get("from") == Some("message");
    let action = form.get("action").unwrap_or("");
    let back = folder_url(&folder, page);
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
        "delete" => mb.delete(&ids, Some(&folder)).await.map(|d| {
            if d.trashed.is_empty() {
                "expunged"
            } else {
                "deleted"
            }
        }),
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

pub(super) async fn empty_folder(
    State(ctx): State<Arc<Ctx>>,
    Path(name): Path<String>,
    WebForm(s, _): WebForm,
) -> Response {
    if !EMPTYABLE.contains(&name.as_str()) {
        return error_page(
            &ctx,
            &s,
            Error::BadRequest("Only Trash and Junk can be emptied.".into()),
        )
        .await;
    }
    match s.mailbox(&ctx).empty_folder(&name).await {
        Ok(_) => redirect(&with_notice(&folder_url(&name, 0), "emptied")),
        Err(e) => error_page(&ctx, &s, e.into()).await,
    }
}

pub(super) async fn folders_page(
    State(ctx): State<Arc<Ctx>>,
    WebSession(s): WebSession,
    Query(q): Query<NoticeQuery>,
) -> Response {
    let mut notices = layout::notices_named(q.n.as_deref());
    let folders = s.mailbox(&ctx).folders().await;
    let main = match &folders {
        Ok(list) => manage_html(&s, list),
        Err(e) => {
            notices.insert(0, store_notice(e));
            html! { h1 { "Folders" } }
        }
    };
    let status = if folders.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let chrome = Chrome::new(&s, folders.as_deref().ok());
    html_response(status, layout::page("Folders", &chrome, &notices, main))
}

fn manage_html(s: &Session, folders: &[FolderInfo]) -> Markup {
    html! {
        h1 { "Folders" }
        table class="folder-admin" {
            thead {
                tr { th { "Folder" } th { "Messages" } th { "Unread" } th { "Size" } th {} }
            }
            tbody {
                @for f in folders {
                    tr {
                        td { a href=(folder_url(&f.name, 0)) { (f.name) } }
                        td { (f.total) }
                        td { (f.unread) }
                        td { (mime::human_size(f.bytes)) }
                        td {
                            @if xfs::SYSTEM_FOLDERS.contains(&f.name.as_str()) {
                                span class="muted" { "System folder" }
                            } @else {
                                form method="post" action="/folders/rename" class="inline" {
                                    (csrf_field(s))
                                    input type="hidden" name="from" value=(f.name);
                                    input type="text" name="to" value=(f.name)
                                        aria-label={ "New name for " (f.name) } required;
                                    button type="submit" { "Rename" }
                                }
                                form method="post" action="/folders/delete" class="inline" {
                                    (csrf_field(s))
                                    input type="hidden" name="name" value=(f.name);
                                    button type="submit" class="danger"
                                        title="Deletes the folder and the messages in it" { "Delete" }
                                }
                            }
                        }
                    }
                }
            }
        }
        h2 { "New folder" }
        form method="post" action="/folders/create" class="inline" {
            (csrf_field(s))
            input type="text" name="name" aria-label="Folder name" placeholder="Folder name" required;
            button type="submit" class="primary" { "Create" }
        }
    }
}

async fn folder_form(
    ctx: &Ctx,
    s: &Session,
    form: &FormData,
    act: impl AsyncFnOnce(&FormData) -> Result<&'static str, StoreError>,
) -> Response {
    match act(form).await {
        Ok(code) => redirect(&with_notice("/folders", code)),
        Err(StoreError::Unavailable(_)) | Err(StoreError::Corrupt(_)) => {
            error_page(ctx, s, Error::Unavailable(String::new())).await
        }
        Err(e) => {
            let (folders, _) = sidebar(ctx, s).await;
            let main = match folders.as_deref() {
                Some(f) => manage_html(s, f),
                None => html! {},
            };
            let chrome = Chrome::new(s, folders.as_deref());
            let err = Error::from(e);
            let notices = [Notice::error(err.to_string())];
            html_response(
                err.status(),
                layout::page("Folders", &chrome, &notices, main),
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

pub(super) async fn folder_create(
    State(ctx): State<Arc<Ctx>>,
    WebForm(s, form): WebForm,
) -> Response {
    let mb = s.mailbox(&ctx);
    folder_form(&ctx, &s, &form, async |f: &FormData| {
        mb.create_folder(&folder_name(f.get("name"))?).await?;
        Ok("folder_created")
    })
    .await
}

pub(super) async fn folder_rename(
    State(ctx): State<Arc<Ctx>>,
    WebForm(s, form): WebForm,
) -> Response {
    let mb = s.mailbox(&ctx);
    folder_form(&ctx, &s, &form, async |f: &FormData| {
        let from = folder_name(f.get("from"))?;
        let to = folder_name(f.get("to"))?;
        if from != to {
            mb.rename_folder(&from, &to).await?;
        }
        Ok("folder_renamed")
    })
    .await
}

pub(super) async fn folder_delete(
    State(ctx): State<Arc<Ctx>>,
    WebForm(s, form): WebForm,
) -> Response {
    let mb = s.mailbox(&ctx);
    folder_form(&ctx, &s, &form, async |f: &FormData| {
        mb.delete_folder(&folder_name(f.get("name"))?).await?;
        Ok("folder_deleted")
    })
    .await
}
