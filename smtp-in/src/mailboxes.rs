//! What a session needs from the rest of the service, as one trait: whether a recipient's mailbox
//! takes mail (at RCPT), and storing a message's copies (after the data). [`crate::deliver`]
//! implements it over the member index and the stores; the session's tests implement it in
//! memory, so the whole SMTP dialogue runs with no sockets and no processes.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;

use xfs::Delivery;

/// The mailboxes mail is delivered into.
pub trait Mailboxes: Send + Sync + 'static {
    /// What an accepted recipient carries from RCPT to its delivery (for the stores: its route).
    type Route: Send + Sync + 'static;

    /// The domains mail is accepted for, lowercase and sorted; `None` when they cannot be known
    /// now (the index never reached), which defers the recipient.
    fn domains(&self) -> impl Future<Output = Option<Arc<BTreeSet<String>>>> + Send;

    /// Whether the mailbox `addr` names takes mail now. `addr` is well formed and in one of our
    /// domains (the session refuses anything else itself); `trace` names the message for logs.
    fn check(&self, addr: &str, trace: &str) -> impl Future<Output = Verdict<Self::Route>> + Send;

    /// Store every copy; one outcome per copy (in any order). A copy is `Stored` only once it
    /// is durable.
    fn deliver(
        &self,
        copies: Vec<MessageCopy<Self::Route>>,
        trace: &str,
    ) -> impl Future<Output = Vec<Outcome>> + Send;
}

/// A recipient accepted at RCPT time.
#[derive(Debug, Clone)]
pub struct Recipient<R> {
    /// The mailbox's own name (normalized: `Alice@MegaMail.TEST` is `alice@megamail.test`).
    pub user: String,
    pub route: R,
}

/// The answer to a RCPT check.
#[derive(Debug)]
pub enum Verdict<R> {
    /// `250`.
    Accepted(Recipient<R>),
    /// Certain: there is no such user here (`550 5.1.1`).
    NoSuchUser,
    /// Certain: the address cannot name a mailbox here, for this reason (`501 5.1.3`).
    BadAddress(String),
    /// Not certain now (the index or the store unreachable, busy, frozen, moving; the mailbox
    /// full): this whole `4xx` reply line, and the sender retries.
    Deferred(String),
}

/// One recipient's copy of a message: the bytes it gets (its `Received:` line first) and the
/// delivery id that makes a retry store nothing twice.
#[derive(Debug, Clone)]
pub struct MessageCopy<R> {
    pub rcpt: Recipient<R>,
    pub delivery: Delivery,
}

/// How storing one copy ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Durable (`duplicate`: an earlier attempt had stored it already).
    Stored { duplicate: bool },
    /// Not stored (or not known to be): the `4xx` reply line the message gets.
    Deferred(String),
}

/// The one reply for a message whose copies ended as `outcomes` (all stored: `None`).
pub fn combined_reply(outcomes: &[Outcome]) -> Option<String> {
    outcomes.iter().find_map(|o| match o {
        Outcome::Deferred(reply) => Some(reply.clone()),
        Outcome::Stored { .. } => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_deferred_copy_defers_the_message() {
        let ok = Outcome::Stored { duplicate: false };
        assert_eq!(combined_reply(&[ok.clone(), ok.clone()]), None);
        let d = Outcome::Deferred("451 4.4.1 x".into());
        assert_eq!(
            combined_reply(&[ok.clone(), d, ok]),
            Some("451 4.4.1 x".to_string())
        );
        assert_eq!(combined_reply(&[]), None);
    }
}
