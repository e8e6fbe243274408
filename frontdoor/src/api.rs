//! The JSON API under `/api/v1/`: the same operations as the pages, for programs.
//!
//! | request | answer |
//! |---|---|
//! | `GET me` | `{user, display_name, csrf}` |
//! | `GET folders` | `{folders: [{name, total, unread, bytes}]}` |
//! | `POST folders` `{name}` · `folders/rename` `{from, to}` · `folders/delete` `{name}` · `folders/empty` `{name}` | `{ok: true}` (empty: `{expunged}`) |
//! | `GET folders/{name}/messages?offset=&limit=` | `{folder, offset, messages: [entry]}`, newest first |
//! | `GET messages/{id}?mark_seen=&images=` | `{message: entry, headers, text, html, blocked_images, attachments}`; marks it seen unless `mark_seen=false`; `html` is sanitized |
//! | `GET messages/{id}/raw` | the stored bytes exactly, `message/rfc822` |
//! | `GET messages/{id}/attachments/{n}` | the attachment, as a download |
//! | `POST send` `{to, cc, bcc, subject, text, attachments: [{name, content_type, data_base64}], in_reply_to}` | `{message_id, sent_copy, warning}` |
//! | `POST messages/move` `{ids, folder}` | `{moved: [{id, uid}]}` |
//! | `POST messages/flags` `{ids, add, remove}` (`seen`, `flagged`, `answered`) | `{ok: true}` |
//! | `POST messages/delete` `{ids, folder?}` | to Trash, or for good when already there: `{trashed, expunged}` |
//! | `GET search?q=&in=from,subject,body&folder=&limit=` | `{messages: [entry]}` |
//!
//! Errors are `{error}` with 400, 401 (no session), 403 (CSRF), 404 (no such message or folder
//! in this mailbox), 409, 502 (the relay refused or failed) or 503 (the mailbox is unavailable).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::header::{CONTENT_DISPOSITION, CONTENT_SECURITY_POLICY, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::json;
use xfs::{Flags, FolderInfo, IndexEntry, MsgId, SearchQuery};

use crate::auth::{ApiSession, Session};
use crate::compose::{self, Draft, OutAttachment, SendError};
use crate::error::{ApiError, Error};
use crate::{mime, sanitize, Ctx};

/// Most messages one call may act on.
pub const MAX_IDS: usize = 1000;
/// Most entries one page or search returns.
pub const MAX_LIMIT: u32 = 500;

pub fn routes() -> Router<Arc<Ctx>> {
    Router::new()
        .route("/me", get(me))
        .route("/folders", get(folders).post(folder_create))
        .route("/folders/rename", post(folder_rename))
        .route("/folders/delete", post(folder_delete))
        .route("/folders/empty", post(folder_empty))
        .route("/folders/{name}/messages", get(folder_messages))
        .route("/messages/{id}", get(message))
        .route("/messages/{id}/raw", get(raw))
        .route("/messages/{id}/attachments/{n}", get(attachment))
        .route("/messages/move", post(move_messages))
        .route("/messages/flags", post(flag_messages))
        .route("/messages/delete", post(delete_messages))
        .route("/send", post(send))
        .route("/search", get(search))
}

#[derive(Debug, Serialize)]
pub struct FolderJson {
    pub name: String,
    pub total: u32,
    pub unread: u32,
    pub bytes: u64,
}

impl From<&FolderInfo> for FolderJson {
    fn from(f: &FolderInfo) -> Self {
        FolderJson {
            name: f.name.clone(),
            total: f.total,
            unread: f.unread,
            bytes: f.bytes,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct EntryJson {
    pub id: MsgId,
    pub folder: String,
    pub uid: u32,
    pub size: u64,
    pub received_ms: u64,
    pub seen: bool,
    pub flagged: bool,
    pub answered: bool,
    pub from: String,
    pub to: String,
    pub subject: String,
    pub date: String,
    pub preview: String,
    pub attachments: Vec<String>,
}

impl From<&IndexEntry> for EntryJson {
    fn from(e: &IndexEntry) -> Self {
        EntryJson {
            id: e.msg,
            folder: e.folder.clone(),
            uid: e.uid,
            size: e.size,
            received_ms: e.internal_date_ms,
            seen: e.flags.contains(Flags::SEEN),
            flagged: e.flags.contains(Flags::FLAGGED),
            answered: e.flags.contains(Flags::ANSWERED),
            from: e.summary.from.clone(),
            to: e.summary.to.clone(),
            subject: e.summary.subject.clone(),
            date: e.summary.date.clone(),
            preview: e.summary.preview.clone(),
            attachments: e.summary.attachments.clone(),
        }
    }
}

/// A changing API call: its session (401 without one), its CSRF proof (403 without it) and its
/// JSON body (400 when it does not parse), checked in that order before the handler runs.
struct ApiWrite<T>(Session, T);

impl<T: serde::de::DeserializeOwned> FromRequest<Arc<Ctx>> for ApiWrite<T> {
    type Rejection = Response;

    async fn from_request(req: Request, ctx: &Arc<Ctx>) -> Result<Self, Response> {
        let (mut parts, body) = req.into_parts();
        let ApiSession(s) = ApiSession::from_request_parts(&mut parts, ctx).await?;
        if !s.api_write_ok(ctx, &parts.headers) {
            return Err(ApiError(Error::Csrf).into_response());
        }
        let raw = Bytes::from_request(Request::from_parts(parts, body), ctx)
            .await
            .map_err(IntoResponse::into_response)?;
        let parsed = serde_json::from_slice(&raw).map_err(|e| {
            ApiError(Error::BadRequest(format!("bad JSON body: {e}"))).into_response()
        })?;
        Ok(ApiWrite(s, parsed))
    }
}

/// The answer of a change that has nothing else to say.
fn done() -> Response {
    Json(json!({ "ok": true })).into_response()
}

/// The ids of a call, each once (a repeated id acts once), at most [`MAX_IDS`].
fn checked_ids(ids: Vec<MsgId>) -> Result<Vec<MsgId>, ApiError> {
    let ids = crate::mailbox::once_each(ids);
    if ids.is_empty() {
        return Err(ApiError(Error::BadRequest("ids: none given".into())));
    }
    if ids.len() > MAX_IDS {
        return Err(ApiError(Error::BadRequest(format!(
            "ids: at most {MAX_IDS} per call"
        ))));
    }
    Ok(ids)
}

async fn me(ApiSession(s): ApiSession) -> Response {
    Json(json!({ "user": s.user, "display_name": s.display_name, "csrf": s.csrf })).into_response()
}

async fn folders(
    State(ctx): State<Arc<Ctx>>,
    ApiSession(s): ApiSession,
) -> Result<Response, ApiError> {
    let f = s.mailbox(&ctx).folders().await?;
    let list: Vec<FolderJson> = f.iter().map(FolderJson::from).collect();
    Ok(Json(json!({ "folders": list })).into_response())
}

#[derive(Debug, Deserialize)]
pub struct NameBody {
    name: String,
}

#[derive(Debug, Deserialize)]
pub struct RenameBody {
    from: String,
    to: String,
}

async fn folder_create(
    State(ctx): State<Arc<Ctx>>,
    ApiWrite(s, b): ApiWrite<NameBody>,
) -> Result<Response, ApiError> {
    s.mailbox(&ctx).create_folder(b.name.trim()).await?;
    Ok(done())
}

async fn folder_rename(
    State(ctx): State<Arc<Ctx>>,
    ApiWrite(s, b): ApiWrite<RenameBody>,
) -> Result<Response, ApiError> {
    s.mailbox(&ctx).rename_folder(&b.from, b.to.trim()).await?;
    Ok(done())
}

async fn folder_delete(
    State(ctx): State<Arc<Ctx>>,
    ApiWrite(s, b): ApiWrite<NameBody>,
) -> Result<Response, ApiError> {
    s.mailbox(&ctx).delete_folder(&b.name).await?;
    Ok(done())
}

async fn folder_empty(
    State(ctx): State<Arc<Ctx>>,
    ApiWrite(s, b): ApiWrite<NameBody>,
) -> Result<Response, ApiError> {
    let n = s.mailbox(&ctx).empty_folder(&b.name).await?;
    Ok(Json(json!({ "expunged": n })).into_response())
}

#[derive(Debug, Deserialize)]
pub struct PageParams {
    offset: Option<u32>,
    limit: Option<u32>,
}

async fn folder_messages(
    State(ctx): State<Arc<Ctx>>,
    ApiSession(s): ApiSession,
    Path(name): Path<String>,
    Query(p): Query<PageParams>,
) -> Result<Response, ApiError> {
    let offset = p.offset.unwrap_or(0);
    let limit = p.limit.unwrap_or(ctx.cfg.page_size).min(MAX_LIMIT);
    let page = s.mailbox(&ctx).list(&name, offset, limit).await?;
    let messages: Vec<EntryJson> = page.entries.iter().map(EntryJson::from).collect();
    Ok(Json(json!({
        "folder": FolderJson::from(&page.folder),
        "offset": offset,
        "messages": messages,
    }))
    .into_response())
}

#[derive(Debug, Deserialize)]
pub struct MessageParams {
    mark_seen: Option<bool>,
    images: Option<bool>,
}

async fn message(
    State(ctx): State<Arc<Ctx>>,
    ApiSession(s): ApiSession,
    Path(id): Path<MsgId>,
    Query(p): Query<MessageParams>,
) -> Result<Response, ApiError> {
    let m = s
        .mailbox(&ctx)
        .fetch(id, p.mark_seen.unwrap_or(true))
        .await?;
    let images = p.images.unwrap_or(false);
    let entry = EntryJson::from(&m.entry);
    // A message the user sent: where each recipient's delivery stands (queued, retrying at ...,
    // delivered, failed). Not known for now if the queue cannot be read.
    let delivery = if m.entry.folder == xfs::SENT {
        match s.mailbox(&ctx).queue().await {
            Ok(q) => Some(delivery_states(&q, id)),
            Err(e) => {
                tracing::debug!(error = %e, "the delivery states could not be read");
                None
            }
        }
    } else {
        None
    };
    let out = tokio::task::spawn_blocking(move || {
        let parsed = mime::parse(&m.body);
        let cleaned = parsed
            .html
            .as_deref()
            .map(|h| sanitize::clean(h, id, &parsed.inline_images(), images));
        let attachments: Vec<serde_json::Value> = parsed
            .attachments
            .iter()
            .map(|a| {
                json!({
                    "index": a.index,
                    "name": a.name,
                    "content_type": a.content_type,
                    "size": a.data.len(),
                })
            })
            .collect();
        json!({
            "headers": {
                "from": parsed.from,
                "to": parsed.to,
                "cc": parsed.cc,
                "subject": parsed.subject,
                "date": parsed.date,
                "message_id": parsed.message_id,
            },
            "text": parsed.text,
            "html": cleaned.as_ref().map(|c| c.html.clone()),
            "blocked_images": cleaned.as_ref().map(|c| c.blocked_images).unwrap_or(0),
            "attachments": attachments,
        })
    })
    .await
    .map_err(|e| ApiError(Error::Internal(e.to_string())))?;
    let mut out = out;
    out["message"] = serde_json::to_value(entry).unwrap_or_default();
    if let Some(d) = delivery {
        out["delivery"] = d;
    }
    Ok(Json(out).into_response())
}

/// Each recipient of the sent message `sent` with its delivery state.
fn delivery_states(queue: &[xfs::QueueEntry], sent: MsgId) -> serde_json::Value {
    let rows: Vec<serde_json::Value> = compose::delivery(queue, sent)
        .into_iter()
        .map(|d| {
            json!({
                "rcpt": d.rcpt,
                "state": d.state,
                "at_ms": d.at_ms,
                "attempts": d.attempts,
                "last_reply": d.last_reply,
            })
        })
        .collect();
    json!(rows)
}

async fn raw(
    State(ctx): State<Arc<Ctx>>,
    ApiSession(s): ApiSession,
    Path(id): Path<MsgId>,
) -> Result<Response, ApiError> {
    let m = s.mailbox(&ctx).fetch(id, false).await?;
    Ok((
        [
            (CONTENT_TYPE, "message/rfc822"),
            (CONTENT_SECURITY_POLICY, "default-src 'none'; sandbox"),
        ],
        m.body,
    )
        .into_response())
}

/// An attachment as a download: a safe name, a type that cannot run, a sandbox.
pub fn attachment_response(a: &mime::Attachment) -> Response {
    let disposition = mime::content_disposition(&a.name);
    (
        [
            (
                CONTENT_TYPE,
                mime::safe_content_type(&a.content_type).to_string(),
            ),
            (CONTENT_DISPOSITION, disposition),
            (
                CONTENT_SECURITY_POLICY,
                "default-src 'none'; sandbox".to_string(),
            ),
        ],
        a.data.clone(),
    )
        .into_response()
}

async fn attachment(
    State(ctx): State<Arc<Ctx>>,
    ApiSession(s): ApiSession,
    Path((id, n)): Path<(MsgId, usize)>,
) -> Result<Response, ApiError> {
    let m = s.mailbox(&ctx).fetch(id, false).await?;
    let parsed = tokio::task::spawn_blocking(move || mime::parse(&m.body))
        .await
        .map_err(|e| ApiError(Error::Internal(e.to_string())))?;
    let a = parsed
        .attachments
        .get(n)
        .ok_or(ApiError(Error::NotFound("no such attachment")))?;
    Ok(attachment_response(a))
}

#[derive(Debug, Deserialize)]
pub struct MoveBody {
    ids: Vec<MsgId>,
    folder: String,
}

async fn move_messages(
    State(ctx): State<Arc<Ctx>>,
    ApiWrite(s, b): ApiWrite<MoveBody>,
) -> Result<Response, ApiError> {
    let ids = checked_ids(b.ids)?;
    let moved = s.mailbox(&ctx).move_to(&ids, &b.folder).await?;
    let moved: Vec<_> = moved
        .into_iter()
        .map(|(id, uid)| json!({ "id": id, "uid": uid }))
        .collect();
    Ok(Json(json!({ "moved": moved })).into_response())
}

#[derive(Debug, Deserialize)]
pub struct FlagsBody {
    ids: Vec<MsgId>,
    #[serde(default)]
    add: Vec<String>,
    #[serde(default)]
    remove: Vec<String>,
}

/// Flags by name: `seen`, `flagged`, `answered`.
pub fn flags_of(names: &[String]) -> Result<Flags, Error> {
    let mut f = Flags::NONE;
    for n in names {
        f = f.union(match n.to_ascii_lowercase().as_str() {
            "seen" => Flags::SEEN,
            "flagged" => Flags::FLAGGED,
            "answered" => Flags::ANSWERED,
            other => return Err(Error::BadRequest(format!("unknown flag `{other}`"))),
        });
    }
    Ok(f)
}

async fn flag_messages(
    State(ctx): State<Arc<Ctx>>,
    ApiWrite(s, b): ApiWrite<FlagsBody>,
) -> Result<Response, ApiError> {
    let ids = checked_ids(b.ids)?;
    let add = flags_of(&b.add)?;
    let remove = flags_of(&b.remove)?;
    s.mailbox(&ctx).set_flags(&ids, add, remove).await?;
    Ok(done())
}

#[derive(Debug, Deserialize)]
pub struct DeleteBody {
    ids: Vec<MsgId>,
    /// The folder the messages are in, when the caller knows it: a folder other than Trash
    /// saves a read per message; Trash is checked message by message all the same.
    folder: Option<String>,
}

async fn delete_messages(
    State(ctx): State<Arc<Ctx>>,
    ApiWrite(s, b): ApiWrite<DeleteBody>,
) -> Result<Response, ApiError> {
    let ids = checked_ids(b.ids)?;
    let d = s.mailbox(&ctx).delete(&ids, b.folder.as_deref()).await?;
    Ok(Json(json!({ "trashed": d.trashed, "expunged": d.expunged })).into_response())
}

#[derive(Debug, Deserialize)]
pub struct SendBody {
    #[serde(default)]
    to: Vec<String>,
    #[serde(default)]
    cc: Vec<String>,
    #[serde(default)]
    bcc: Vec<String>,
    #[serde(default)]
    subject: String,
    #[serde(default)]
    text: String,
    #[serde(default)]
    attachments: Vec<AttachmentBody>,
    /// The id of the message this answers (its Message-ID is used, and it is marked answered).
    in_reply_to: Option<MsgId>,
}

#[derive(Debug, Deserialize)]
pub struct AttachmentBody {
    name: String,
    #[serde(default)]
    content_type: Option<String>,
    data_base64: String,
}

async fn send(
    State(ctx): State<Arc<Ctx>>,
    ApiWrite(s, b): ApiWrite<SendBody>,
) -> Result<Response, ApiError> {
    let mut draft = Draft {
        to: b.to,
        cc: b.cc,
        bcc: b.bcc,
        subject: b.subject,
        text: b.text,
        ..Default::default()
    };
    for a in b.attachments {
        let data = base64::engine::general_purpose::STANDARD
            .decode(a.data_base64.trim())
            .map_err(|_| {
                ApiError(Error::BadRequest(format!(
                    "attachment `{}`: data_base64 is not base64",
                    a.name
                )))
            })?;
        draft.attachments.push(OutAttachment {
            name: a.name,
            content_type: a
                .content_type
                .unwrap_or_else(|| "application/octet-stream".into()),
            data,
        });
    }
    if let Some(orig) = b.in_reply_to {
        let m = s.mailbox(&ctx).fetch(orig, false).await?;
        let p = mime::parse(&m.body);
        draft.in_reply_to = p.message_id;
        draft.references = p.references;
    }
    let sent = compose::send(&ctx, &s, &draft).await.map_err(send_error)?;
    if let Some(orig) = b.in_reply_to {
        let _ = s
            .mailbox(&ctx)
            .set_flags(&[orig], Flags::ANSWERED, Flags::NONE)
            .await;
    }
    Ok(Json(json!({
        "message_id": sent.message_id,
        "sent_copy": sent.copy,
        "queued": sent.queued,
    }))
    .into_response())
}

fn send_error(e: SendError) -> ApiError {
    ApiError(match e {
        SendError::Invalid(m) => Error::BadRequest(m),
        other => Error::Send(other.to_string()),
    })
}

/// Which fields a search looks in: `from,subject,body` (any order, comma-separated; all three
/// when not given).
pub fn search_fields(list: Option<&str>) -> Result<(bool, bool, bool), Error> {
    let Some(list) = list.filter(|l| !l.trim().is_empty()) else {
        return Ok((true, true, true));
    };
    let (mut from, mut subject, mut body) = (false, false, false);
    for f in list.split(',').map(str::trim).filter(|f| !f.is_empty()) {
        match f {
            "from" => from = true,
            "subject" => subject = true,
            "body" => body = true,
            other => {
                return Err(Error::BadRequest(format!(
                    "in: `{other}` is not one of from, subject, body"
                )))
            }
        }
    }
    Ok((from, subject, body))
}

#[derive(Debug, Deserialize)]
pub struct SearchParams {
    q: Option<String>,
    #[serde(rename = "in")]
    fields: Option<String>,
    folder: Option<String>,
    limit: Option<u32>,
}

async fn search(
    State(ctx): State<Arc<Ctx>>,
    ApiSession(s): ApiSession,
    Query(p): Query<SearchParams>,
) -> Result<Response, ApiError> {
    let text = p.q.unwrap_or_default().trim().to_string();
    if text.is_empty() {
        return Err(ApiError(Error::BadRequest("q: empty search".into())));
    }
    let (in_from, in_subject, in_body) = search_fields(p.fields.as_deref())?;
    let hits = s
        .mailbox(&ctx)
        .search(SearchQuery {
            text,
            in_from,
            in_subject,
            in_body,
            folder: p.folder.filter(|f| !f.is_empty()),
            limit: p.limit.unwrap_or(100).min(MAX_LIMIT),
        })
        .await?;
    let messages: Vec<EntryJson> = hits.iter().map(EntryJson::from).collect();
    Ok(Json(json!({ "messages": messages })).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_and_field_names() {
        assert_eq!(
            flags_of(&["seen".into(), "Flagged".into()]).unwrap(),
            Flags::SEEN.union(Flags::FLAGGED)
        );
        assert!(flags_of(&["deleted".into()]).is_err());
        assert_eq!(search_fields(None).unwrap(), (true, true, true));
        assert_eq!(
            search_fields(Some("subject")).unwrap(),
            (false, true, false)
        );
        assert_eq!(
            search_fields(Some("from, body")).unwrap(),
            (true, false, true)
        );
        assert!(search_fields(Some("to")).is_err());
    }
}
