//! The search page: a form (which fields to look in) and the messages that match, from every
//! folder.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use maud::html;
use xfs::SearchQuery;

use super::folders::{entry_row, Columns};
use super::layout::{self, Chrome};
use super::{add_first, html_response, sidebar, store_notice};
use crate::auth::{self, WebSession};
use crate::Ctx;

/// Results shown at most.
const LIMIT: u32 = 200;

pub(super) async fn search_page(
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
    let mut notices = Vec::new();
    let mut status = StatusCode::OK;
    let hits = if q.is_empty() {
        None
    } else {
        let found = s
            .mailbox(&ctx)
            .search(SearchQuery {
                text: q.clone(),
                in_from,
                in_subject,
                in_body,
                folder: None,
                limit: LIMIT,
            })
            .await;
        match found {
            Ok(hits) => Some(hits),
            Err(e) => {
                status = StatusCode::SERVICE_UNAVAILABLE;
                notices.push(store_notice(&e));
                None
            }
        }
    };
    let now = auth::now_ms();
    let cols = Columns {
        to: false,
        folder: true,
        select: false,
    };
    let main = html! {
        h1 { "Search" }
        form method="get" action="/search" class="search-form" {
            input type="search" name="q" value=(q) aria-label="Search for" required;
            label class="check" { input type="checkbox" name="in" value="from" checked[in_from]; " From" }
            label class="check" { input type="checkbox" name="in" value="subject" checked[in_subject]; " Subject" }
            label class="check" { input type="checkbox" name="in" value="body" checked[in_body]; " Message text" }
            button type="submit" class="primary" { "Search" }
        }
        @match &hits {
            Some(hits) if hits.is_empty() => {
                p class="empty" { "No messages match “" (q) "”." }
            }
            Some(hits) => {
                p class="sub" { (hits.len()) " found" }
                table class="messages" {
                    tbody { @for e in hits { (entry_row(e, now, cols)) } }
                }
            }
            None => {}
        }
    };
    let (folders, problem) = sidebar(&ctx, &s).await;
    if let Some(p) = problem {
        add_first(&mut notices, p);
        status = StatusCode::SERVICE_UNAVAILABLE;
    }
    let chrome = Chrome {
        session: &s,
        folders: folders.as_deref(),
        current: None,
        query: &q,
    };
    html_response(status, layout::page("Search", &chrome, &notices, main))
}
