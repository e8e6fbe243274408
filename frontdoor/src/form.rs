//! Reading form posts: the fields of a urlencoded body (repeated names kept), and the multipart
//! compose form with the files attached to it.

use axum::extract::multipart::MultipartError;
use axum::extract::Multipart;
use axum::http::StatusCode;

use crate::compose::OutAttachment;
use crate::mime;

/// Form fields in the order sent (repeated names kept).
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

/// A multipart form that could not be read, with the status and the text to answer with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable {
    pub status: StatusCode,
    pub message: String,
}

impl Unreadable {
    fn new(e: &MultipartError, what: &str) -> Unreadable {
        Unreadable {
            status: e.status(),
            message: format!("{what} could not be read: {}", e.body_text()),
        }
    }
}

/// The file field of the compose form.
const FILES: &str = "attachments";

/// Read a multipart form: its text fields, and the files of its `attachments` field (an empty
/// file input, no name and no bytes, is no file). `max_bytes` is the body limit, named when the
/// body is over it.
pub async fn read_multipart(
    mut multipart: Multipart,
    max_bytes: usize,
) -> Result<(FormData, Vec<OutAttachment>), Unreadable> {
    let mut fields = Vec::new();
    let mut files = Vec::new();
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                return Err(Unreadable {
                    status: e.status(),
                    message: format!(
                        "The message is too large: at most {} in all.",
                        mime::human_size(max_bytes as u64)
                    ),
                })
            }
            Err(e) => return Err(Unreadable::new(&e, "The form")),
        };
        let name = field.name().unwrap_or("").to_string();
        if name == FILES {
            let file_name = field.file_name().unwrap_or("").to_string();
            let content_type = field
                .content_type()
                .unwrap_or("application/octet-stream")
                .to_string();
            let data = field
                .bytes()
                .await
                .map_err(|e| Unreadable::new(&e, "An attachment"))?;
            if !(file_name.is_empty() && data.is_empty()) {
                files.push(OutAttachment {
                    name: file_name,
                    content_type,
                    data: data.to_vec(),
                });
            }
        } else {
            let value = field
                .text()
                .await
                .map_err(|e| Unreadable::new(&e, "The form"))?;
            fields.push((name, value));
        }
    }
    Ok((FormData(fields), files))
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
        let f = FormData::parse("name=%D0%9F%D0%B0%D0%BF%D0%BA%D0%B0".as_bytes());
        assert_eq!(f.get("name"), Some("Папка"));
    }
}
