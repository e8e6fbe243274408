//! Building pages: escaping, the layout every page shares (top bar, folder sidebar, notices),
//! and the notices a redirect may name. Every piece of text from a message or a user passes
//! through [`esc`]; the only markup from outside is a message's HTML after
//! [`crate::sanitize::clean`].

use std::fmt::Write as _;

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use xfs::FolderInfo;

use crate::auth::Session;

/// Escape text for HTML element content and quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    // Copy the runs between special bytes whole (they are ASCII, so every cut is a char boundary).
    let mut from = 0;
    for (i, b) in s.bytes().enumerate() {
        let rep = match b {
            b'&' => "&amp;",
            b'<' => "&lt;",
            b'>' => "&gt;",
            b'"' => "&quot;",
            b'\'' => "&#39;",
            _ => continue,
        };
        out.push_str(&s[from..i]);
        out.push_str(rep);
        from = i + 1;
    }
    out.push_str(&s[from..]);
    out
}

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
        "sent_nocopy" => Notice::warn(
            "Message sent, but the copy could not be saved in Sent because your mailbox is \
             temporarily unavailable.",
        ),
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

/// What frames a page: who is signed in and the folders (when they could be read).
pub struct Chrome<'a> {
    pub session: &'a Session,
    pub folders: Option<&'a [FolderInfo]>,
    pub current: Option<&'a str>,
    pub query: &'a str,
}

/// The hidden CSRF field every form of the session carries.
pub fn csrf_field(session: &Session) -> String {
    format!(
        "<input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        esc(&session.csrf)
    )
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
pub fn folder_select(folders: &[FolderInfo], except: Option<&str>) -> String {
    let mut s = String::from(
        "<select name=\"to\" aria-label=\"Move to folder\"><option value=\"\">Move to…</option>",
    );
    for f in folders {
        if Some(f.name.as_str()) == except {
            continue;
        }
        let _ = write!(s, "<option value=\"{0}\">{0}</option>", esc(&f.name));
    }
    s.push_str("</select>");
    s
}

fn notices_html(notices: &[Notice]) -> String {
    let mut s = String::new();
    for n in notices {
        let (class, role) = match n.tone {
            Tone::Info => ("notice info", "status"),
            Tone::Warn => ("notice warn", "alert"),
            Tone::Error => ("notice error", "alert"),
        };
        let _ = write!(
            s,
            "<div class=\"{class}\" role=\"{role}\">{}</div>",
            esc(&n.text)
        );
    }
    s
}

/// A whole page.
pub fn page(title: &str, chrome: &Chrome, notices: &[Notice], main: &str) -> String {
    let s = chrome.session;
    let who = if s.display_name.is_empty() || s.display_name == s.user {
        esc(&s.user)
    } else {
        format!(
            "{} <span class=\"addr\">&lt;{}&gt;</span>",
            esc(&s.display_name),
            esc(&s.user)
        )
    };
    let mut side =
        String::from("<a class=\"button primary compose-button\" href=\"/compose\">Compose</a>");
    match chrome.folders {
        Some(folders) => {
            side.push_str("<ul class=\"folders\">");
            for f in folders {
                let current = if Some(f.name.as_str()) == chrome.current {
                    " class=\"current\" aria-current=\"page\""
                } else {
                    ""
                };
                let count = if f.unread > 0 && f.name != "Sent" && f.name != "Drafts" {
                    format!(
                        "<span class=\"count\" title=\"{0} unread\">{0}</span>",
                        f.unread
                    )
                } else {
                    String::new()
                };
                let _ = write!(
                    side,
                    "<li{current}><a href=\"{}\"><span class=\"name\">{}</span>{count}</a></li>",
                    esc(&folder_url(&f.name, 0)),
                    esc(&f.name)
                );
            }
            side.push_str("</ul><a class=\"manage\" href=\"/folders\">Manage folders</a>");
        }
        None => side.push_str("<p class=\"muted\">Folders unavailable</p>"),
    }
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} · megamail</title><link rel=\"stylesheet\" href=\"/static/app.css\"></head>\
         <body><header class=\"top\"><a class=\"brand\" href=\"/\">megamail</a>\
         <form class=\"search\" method=\"get\" action=\"/search\" role=\"search\">\
         <input type=\"search\" name=\"q\" value=\"{query}\" placeholder=\"Search mail\" aria-label=\"Search mail\">\
         <button type=\"submit\">Search</button></form>\
         <div class=\"me\"><span class=\"who\">{who}</span><a href=\"/settings\">Settings</a>\
         <form method=\"post\" action=\"/logout\" class=\"inline\">{csrf}\
         <button type=\"submit\" class=\"link\">Sign out</button></form></div></header>\
         <div class=\"layout\"><nav class=\"side\" aria-label=\"Folders\">{side}</nav>\
         <main>{notices}{main}</main></div></body></html>\n",
        title = esc(title),
        query = esc(chrome.query),
        csrf = csrf_field(s),
        notices = notices_html(notices),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_covers_markup_and_quotes() {
        assert_eq!(
            esc("<a href=\"x\" title='y'>&</a>"),
            "&lt;a href=&quot;x&quot; title=&#39;y&#39;&gt;&amp;&lt;/a&gt;"
        );
        assert_eq!(esc("café <b>ünï</b>"), "café &lt;b&gt;ünï&lt;/b&gt;");
        assert_eq!(esc(""), "");
        assert_eq!(esc("plain"), "plain");
        assert_eq!(enc("My Stuff/2026?"), "My%20Stuff%2F2026%3F");
        assert_eq!(folder_url("Inbox", 2), "/folder/Inbox?page=2");
        assert_eq!(display_name("Ann Lee <ann@x.test>"), "Ann Lee");
        assert_eq!(display_name("\"Lee, Ann\" <ann@x.test>"), "Lee, Ann");
        assert_eq!(display_name("ann@x.test"), "ann@x.test");
    }

    #[test]
    fn notices_come_only_from_the_fixed_table() {
        assert!(notice_for("sent").is_some());
        assert!(notice_for("<script>").is_none());
    }
}
