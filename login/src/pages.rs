//! The HTML pages: the sign-in form (with its notices) and the style sheet. Server-rendered,
//! no scripts; pages are `maud` templates (as the front door's), which escape every value
//! spliced in.

use maud::{html, Markup};

/// The style sheet, served at [`CSS_PATH`].
pub const CSS_PATH: &str = "/static/login.css";

pub const CSS: &str = r#":root {
  color-scheme: light dark;
  --bg: #f3f5f8; --card: #ffffff; --text: #1d232b; --muted: #5b6573; --line: #d4dae2;
  --accent: #1f5fbf; --accent-text: #ffffff; --warn-bg: #fff4e5; --warn-line: #e0a040;
  --err-bg: #fdecec; --err-line: #d05050; --ok-bg: #eaf6ec; --ok-line: #4a9a5a;
}
@media (prefers-color-scheme: dark) {
  :root {
    --bg: #14181d; --card: #1d232b; --text: #e6e9ed; --muted: #9aa4b1; --line: #36404c;
    --accent: #5b9bf0; --accent-text: #0d1116; --warn-bg: #3a2e1a; --warn-line: #b8862e;
    --err-bg: #3a1f1f; --err-line: #c05050; --ok-bg: #1e3323; --ok-line: #4a9a5a;
  }
}
* { box-sizing: border-box; }
html { font-size: 100%; }
body {
  margin: 0; min-height: 100vh; display: flex; align-items: center; justify-content: center;
  background: var(--bg); color: var(--text); line-height: 1.5;
  font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
}
main { width: 100%; max-width: 24rem; padding: 1.5rem; }
.brand { font-size: 1.5rem; font-weight: 700; letter-spacing: -0.01em; margin: 0 0 1rem; }
.brand span { color: var(--accent); }
.card {
  background: var(--card); border: 1px solid var(--line); border-radius: 0.75rem;
  padding: 1.5rem; box-shadow: 0 1px 3px rgba(0, 0, 0, 0.06);
}
h1 { font-size: 1.25rem; margin: 0 0 1rem; }
label { display: block; font-weight: 600; margin: 0.75rem 0 0.25rem; }
input[type=email], input[type=text], input[type=password] {
  width: 100%; font: inherit; padding: 0.6rem 0.7rem; color: var(--text); background: var(--card);
  border: 1px solid var(--line); border-radius: 0.5rem;
}
input:focus { outline: 2px solid var(--accent); outline-offset: 1px; border-color: var(--accent); }
button {
  width: 100%; margin-top: 1.25rem; padding: 0.65rem; font: inherit; font-weight: 600;
  color: var(--accent-text); background: var(--accent); border: 0; border-radius: 0.5rem;
  cursor: pointer;
}
button:hover { filter: brightness(1.08); }
button:focus-visible { outline: 2px solid var(--text); outline-offset: 2px; }
.notice { border-left: 4px solid; border-radius: 0.4rem; padding: 0.6rem 0.8rem; margin: 0 0 1rem; }
.notice.error { background: var(--err-bg); border-color: var(--err-line); }
.notice.warn { background: var(--warn-bg); border-color: var(--warn-line); }
.notice.ok { background: var(--ok-bg); border-color: var(--ok-line); }
.hint { color: var(--muted); font-size: 0.875rem; margin: 1rem 0 0; }
"#;

/// The tone of a notice above the form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tone {
    Error,
    Warn,
    Ok,
}

/// A message shown above the form.
#[derive(Debug, Clone)]
pub struct Notice {
    pub tone: Tone,
    pub text: String,
}

impl Notice {
    pub fn error(text: impl Into<String>) -> Notice {
        Notice {
            tone: Tone::Error,
            text: text.into(),
        }
    }
    pub fn warn(text: impl Into<String>) -> Notice {
        Notice {
            tone: Tone::Warn,
            text: text.into(),
        }
    }
    pub fn ok(text: impl Into<String>) -> Notice {
        Notice {
            tone: Tone::Ok,
            text: text.into(),
        }
    }
}

/// The sign-in page: an optional notice, the form with `user` filled in, and the CSRF value.
/// A `maud` template in the shared page frame: whatever is spliced in is escaped, in content
/// and attributes alike.
pub fn sign_in(notice: Option<&Notice>, user: &str, csrf: &str) -> String {
    let empty = user.is_empty();
    let body = html! {
        main {
            p.brand { "mega" span { "mail" } }
            div.card {
                h1 { "Sign in" }
                @if let Some(n) = notice {
                    (notice_line(n))
                }
                form method="post" action="/login" autocomplete="on" {
                    input type="hidden" name="csrf" value=(csrf);
                    label for="user" { "Email address" }
                    input #user name="user" type="email" inputmode="email"
                        autocomplete="username" autocapitalize="none" spellcheck="false"
                        maxlength="320" required value=(user) autofocus[empty];
                    label for="password" { "Password" }
                    input #password name="password" type="password"
                        autocomplete="current-password" maxlength="1024" required
                        autofocus[!empty];
                    button type="submit" { "Sign in" }
                }
                p.hint { "Use your full address, like name@example.test." }
            }
        }
    };
    runtime::http::page::document("Sign in", CSS_PATH, body).into_string()
}

fn notice_line(n: &Notice) -> Markup {
    let (class, role) = match n.tone {
        Tone::Error => ("error", "alert"),
        Tone::Warn => ("warn", "alert"),
        Tone::Ok => ("ok", "status"),
    };
    html! { p class={ "notice " (class) } role=(role) { (n.text) } }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_escaped() {
        let page = sign_in(
            Some(&Notice::error("<b>no</b>")),
            "\"><script>x</script>",
            "a&b",
        );
        assert!(!page.contains("<script>"), "{page}");
        assert!(!page.contains("<b>no"), "{page}");
        assert!(page.contains("value=\"&quot;&gt;&lt;script&gt;"), "{page}");
        assert!(page.contains("value=\"a&amp;b\""), "{page}");
        assert!(page.contains("role=\"alert\""));
        assert!(page.contains("<p class=\"notice error\" role=\"alert\">&lt;b&gt;no"));
    }

    #[test]
    fn the_form_has_its_fields_and_focus() {
        let page = sign_in(None, "", "c1");
        assert!(
            page.contains("<form method=\"post\" action=\"/login\""),
            "{page}"
        );
        assert!(page.contains("<input type=\"hidden\" name=\"csrf\" value=\"c1\">"));
        assert!(!page.contains("class=\"notice"), "{page}");
        let user = page.split("id=\"user\"").nth(1).unwrap();
        assert!(
            user.split('>').next().unwrap().contains("autofocus"),
            "{page}"
        );
        let page = sign_in(Some(&Notice::ok("You have signed out.")), "a@b.test", "c1");
        assert!(
            page.contains("role=\"status\">You have signed out.</p>"),
            "{page}"
        );
        let pw = page.split("id=\"password\"").nth(1).unwrap();
        assert!(
            pw.split('>').next().unwrap().contains("autofocus"),
            "{page}"
        );
        assert!(page.contains("value=\"a@b.test\""));
    }
}
