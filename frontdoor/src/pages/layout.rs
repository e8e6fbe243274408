//! The frame every page shares (top bar, folder sidebar, notices), the notices a redirect may
//! name, and the small pieces several pages use. Built with `maud`: text spliced into markup is
//! escaped there, in element content and in attribute values alike, so no page escapes by hand;
//! the only markup from outside is a message's HTML after [`crate::sanitize::clean`], inserted
//! by the message view.

use maud::{html, Markup};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use xfs::FolderInfo;

use crate::auth::Session;

/// Characters left as they are in a path segment or query value.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Percent-encode a path segment or query value.
pub fn enc(s: &str) -> String {
    utf8_percent_encode(s, SEGMENT).to_string()
}

/// The URL of a folder page.
pub fn folder_url(name: &str, page: u32) -> String {
    if page == 0 {
        format!("/folder/{}", enc(name))
    } else {
        format!("/folder/{}?page={page}", enc(name))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tone {
    Info,
    Warn,
    Error,
}

/// A line shown above a page's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub tone: Tone,
    pub text: String,
}

impl Notice {
    pub fn info(text: impl Into<String>) -> Notice {
        Notice {
            tone: Tone::Info,
            text: text.into(),
        }
    }
    pub fn warn(text: impl Into<String>) -> Notice {
        Notice {
            tone: Tone::Warn,
            text: text.into(),
        }
    }
    pub fn error(text: impl Into<String>) -> Notice {
        Notice {
            tone: Tone::Error,
            text: text.into(),
        }
    }
}

/// The notice shown whenever the user's store cannot be reached.
pub const UNAVAILABLE: &str = "Your mailbox is temporarily unavailable. Your mail is safe; \
     please try again in a few minutes. You can still send messages.";

/// The notices a redirect may name with `?n=` (fixed texts: nothing from the URL is shown).
pub fn notice_for(code: &str) -> Option<Notice> {
    let n = match code {
        "sent" => Notice::info("Message sent."),
        "moved" => Notice::info("Moved."),
        "deleted" => Notice::info("Moved to Trash."),
        "expunged" => Notice::info("Deleted for good."),
        "marked" => Notice::info("Updated."),
        "none_selected" => Notice::warn("Select at least one message first."),
        "emptied" => Notice::info("Emptied."),
        "folder_created" => Notice::info("Folder created."),
        "folder_renamed" => Notice::info("Folder renamed."),
        "folder_deleted" => Notice::info("Folder deleted."),
        "name_saved" => Notice::info("Display name saved."),
        "password_changed" => Notice::info(
            "Password changed. Every other session of this account has been signed out.",
        ),
        _ => return None,
    };
    Some(n)
}

/// The notice a page's `?n=` names, as a list to add to.
pub fn notices_named(code: Option<&str>) -> Vec<Notice> {
    code.and_then(notice_for).into_iter().collect()
}

/// What frames a page: who is signed in and the folders (when they could be read).
pub struct Chrome<'a> {
    pub session: &'a Session,
    pub folders: Option<&'a [FolderInfo]>,
    pub current: Option<&'a str>,
    pub query: &'a str,
}

impl<'a> Chrome<'a> {
    /// The frame of a page that is about no folder in particular.
    pub fn new(session: &'a Session, folders: Option<&'a [FolderInfo]>) -> Chrome<'a> {
        Chrome {
            session,
            folders,
            current: None,
            query: "",
        }
    }
}

/// The hidden CSRF field every form of the session carries.
pub fn csrf_field(session: &Session) -> Markup {
    html! { input type="hidden" name="csrf" value=(session.csrf); }
}

/// The name part of `Name <address>`, or the whole text.
pub fn display_name(from: &str) -> &str {
    match from.rsplit_once(" <") {
        Some((name, addr)) if addr.ends_with('>') && !name.trim().is_empty() => {
            name.trim().trim_matches('"')
        }
        _ => from,
    }
}

/// A `<select>` of folders to move messages to.
pub fn folder_select(folders: &[FolderInfo], except: Option<&str>) -> Markup {
    html! {
        select name="to" aria-label="Move to folder" {
            option value="" { "Move to…" }
            @for f in folders.iter().filter(|f| Some(f.name.as_str()) != except) {
                option value=(f.name) { (f.name) }
            }
        }
    }
}

fn notices_html(notices: &[Notice]) -> Markup {
    html! {
        @for n in notices {
            @let (class, role) = match n.tone {
                Tone::Info => ("notice info", "status"),
                Tone::Warn => ("notice warn", "alert"),
                Tone::Error => ("notice error", "alert"),
            };
            div class=(class) role=(role) { (n.text) }
        }
    }
}

fn side_html(chrome: &Chrome) -> Markup {
    html! {
        a class="button primary compose-button" href="/compose" { "Compose" }
        @match chrome.folders {
            Some(folders) => {
                ul class="folders" {
                    @for f in folders {
                        @let current = Some(f.name.as_str()) == chrome.current;
                        li class=[current.then_some("current")]
                            aria-current=[current.then_some("page")] {
                            a href=(folder_url(&f.name, 0)) {
                                span class="name" { (f.name) }
                                @if f.unread > 0 && f.name != "Sent" && f.name != "Drafts" {
                                    span class="count" title={ (f.unread) " unread" } { (f.unread) }
                                }
                            }
                        }
                    }
                }
                a class="manage" href="/folders" { "Manage folders" }
            }
            None => p class="muted" { "Folders unavailable" },
        }
    }
}

/// A whole page.
pub fn page(title: &str, chrome: &Chrome, notices: &[Notice], main: Markup) -> Markup {
    let s = chrome.session;
    let body = html! {
        header class="top" {
            a class="brand" href="/" { "megamail" }
            form class="search" method="get" action="/search" role="search" {
                input type="search" name="q" value=(chrome.query)
                    placeholder="Search mail" aria-label="Search mail";
                button type="submit" { "Search" }
            }
            div class="me" {
                span class="who" {
                    @if s.display_name.is_empty() || s.display_name == s.user {
                        (s.user)
                    } @else {
                        (s.display_name) " " span class="addr" { "<" (s.user) ">" }
                    }
                }
                a href="/settings" { "Settings" }
                form method="post" action="/logout" class="inline" {
                    (csrf_field(s))
                    button type="submit" class="link" { "Sign out" }
                }
            }
        }
        div class="layout" {
            nav class="side" aria-label="Folders" { (side_html(chrome)) }
            main { (notices_html(notices)) (main) }
        }
    };
    runtime::http::page::document(title, "/static/app.css", body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_names() {
        assert_eq!(enc("My Stuff/2026?"), "My%20Stuff%2F2026%3F");
        assert_eq!(
            enc("Входящие"),
            "%D0%92%D1%85%D0%BE%D0%B4%D1%8F%D1%89%D0%B8%D0%B5"
        );
        assert_eq!(folder_url("Inbox", 2), "/folder/Inbox?page=2");
        assert_eq!(display_name("Ann Lee <ann@x.test>"), "Ann Lee");
        assert_eq!(display_name("\"Lee, Ann\" <ann@x.test>"), "Lee, Ann");
        assert_eq!(display_name("ann@x.test"), "ann@x.test");
        assert_eq!(display_name("Иван Петров <ivan@x.test>"), "Иван Петров");
    }

    #[test]
    fn notices_come_only_from_the_fixed_table() {
        assert!(notice_for("sent").is_some());
        assert!(notice_for("<script>").is_none());
        assert!(notices_named(Some("<script>")).is_empty());
    }

    #[test]
    fn spliced_text_is_escaped() {
        let folders = [FolderInfo {
            name: "<b>\"x\" & 'y'".into(),
            uidvalidity: 1,
            uidnext: 1,
            total: 0,
            unread: 0,
            bytes: 0,
        }];
        let out = folder_select(&folders, None).into_string();
        assert!(
            out.contains(
                "<option value=\"&lt;b&gt;&quot;x&quot; &amp; 'y'\">&lt;b&gt;&quot;x&quot; &amp; 'y'</option>"
            ),
            "{out}"
        );
        let n = notices_html(&[Notice::error("<script>alert(1)</script>")]).into_string();
        assert_eq!(
            n,
            "<div class=\"notice error\" role=\"alert\">&lt;script&gt;alert(1)&lt;/script&gt;</div>"
        );
    }
}
