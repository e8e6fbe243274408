use xfs::{
    ExportPart, Lease, Op, Outcome, QueueEntry, QueueState, Reply, Submission, Target, XfsError,
};

use crate::keys::{self, CF_BODY, CF_QUEUE};
use crate::segment::fixture::{expect_reply, mail, t, Fixture, ALICE, BOB};

const REMOTE: [&str; 3] = [
    "carol@remote.example",
    "dave@other.example",
    "erin@remote.example",
];

fn submission(n: u8, rcpts: &[&str]) -> Submission {
    let mut sent = mail(n);
    sent.flags = xfs::Flags::SEEN;
    Submission {
        sent,
        from: ALICE.into(),
        rcpts: rcpts.iter().map(|r| r.to_string()).collect(),
    }
}

fn submit(f: &Fixture, n: u8, rcpts: &[&str]) -> (u64, Vec<u64>, bool) {
    expect_reply!(
        f.ok(Op::Submit { target: t(ALICE), submission: submission(n, rcpts) }),
        Reply::Submitted { msg, queued, duplicate, .. } => (msg, queued, duplicate)
    )
}

fn lease(f: &Fixture, worker: &str, max: u32, lease_ms: u32) -> Vec<Lease> {
    expect_reply!(
        f.ok(Op::LeaseQueue { worker: worker.into(), max, lease_ms }),
        Reply::Leases(l) => l
    )
}

fn report(f: &Fixture, l: &Lease, outcome: Outcome) -> Result<Reply, XfsError> {
    f.exec(Op::ReportQueue {
        target: Target::new(&l.entry.user, l.segment, l.epoch),
        id: l.entry.id,
        token: l.token,
        mta: "out-1.example.test".into(),
        outcome,
    })
}

fn queue(f: &Fixture, user: &str) -> Vec<QueueEntry> {
    expect_reply!(
        f.ok(Op::MailboxQueue { target: t(user), after: None, limit: 100 }),
        Reply::Queue(q) => q
    )
}

fn inbox_subjects(f: &Fixture, user: &str) -> Vec<String> {
    f.page(user, "Inbox", 0, 100, None)
        .entries
        .into_iter()
        .map(|e| e.summary.subject)
        .collect()
}

fn delivered() -> Outcome {
    Outcome::Delivered {
        reply: "250 2.0.0 Ok: queued as 1234".into(),
    }
}

#[test]
fn a_submission_files_the_sent_copy_and_queues_each_recipient_once() {
    let f = Fixture::new();
    f.create(ALICE);
    let (msg, ids, dup) = submit(&f, 1, &REMOTE);
    assert!(!dup);
    assert_eq!(ids.len(), 3);
    assert_eq!(f.uids(ALICE, "Sent"), vec![1]);
    assert_eq!(f.counts(ALICE, "Sent").0, 1);
    let q = queue(&f, ALICE);
    assert_eq!(q.iter().map(|e| e.id).collect::<Vec<_>>(), ids);
    assert!(q
        .iter()
        .all(|e| e.state == QueueState::Queued && e.sent_msg == msg));
    assert_eq!(
        q.iter().map(|e| e.rcpt.as_str()).collect::<Vec<_>>(),
        REMOTE.to_vec()
    );
    // The same submission again (a retry after a lost reply) queues nothing more.
    let (msg2, ids2, dup2) = submit(&f, 1, &REMOTE);
    assert_eq!((msg2, ids2, dup2), (msg, ids, true));
    assert_eq!(queue(&f, ALICE).len(), 3);
    assert_eq!(f.uids(ALICE, "Sent"), vec![1]);
}

#[test]
fn bad_submissions_are_refused_and_store_nothing() {
    let f = Fixture::new();
    f.create(ALICE);
    let before = f.stored_keys(ALICE);
    for (rcpts, from) in [
        (vec![], ALICE),
        (vec!["no-at-sign"], ALICE),
        (vec!["a@b\r\nRCPT TO:<x@y>"], ALICE),
        (vec!["ok@remote.example"], "bad sender@x"),
    ] {
        let mut s = submission(1, &rcpts);
        s.from = from.into();
        assert!(
            matches!(
                f.err(Op::Submit {
                    target: t(ALICE),
                    submission: s
                }),
                XfsError::BadRequest { .. }
            ),
            "{rcpts:?} from {from}"
        );
    }
    let many: Vec<String> = (0..1001).map(|i| format!("u{i}@remote.example")).collect();
    let mut s = submission(1, &[]);
    s.rcpts = many;
    assert!(matches!(
        f.err(Op::Submit {
            target: t(ALICE),
            submission: s
        }),
        XfsError::BadRequest { .. }
    ));
    assert_eq!(f.stored_keys(ALICE), before);
}

#[test]
fn leases_hand_each_due_entry_to_one_worker_until_the_lease_runs_out() {
    let f = Fixture::new();
    f.create(ALICE);
    f.create(BOB);
    submit(&f, 1, &REMOTE[..2]);
    let first = lease(&f, "w1", 10, 60_000);
    assert_eq!(first.len(), 2);
    assert!(first
        .iter()
        .all(|l| l.body == mail(1).body && l.entry.user == ALICE));
    assert!(
        matches!(first[0].entry.state, QueueState::Leased { ref worker, .. } if worker == "w1")
    );
    // Out on a lease: nobody else gets them.
    assert!(lease(&f, "w2", 10, 60_000).is_empty());
    // A lease that runs out makes the entry due again, to another worker with another token.
    submit(&f, 2, &REMOTE[2..]);
    let short = lease(&f, "w1", 10, 1);
    assert_eq!(short.len(), 1);
    std::thread::sleep(std::time::Duration::from_millis(5));
    let again = lease(&f, "w2", 10, 60_000);
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].entry.id, short[0].entry.id);
    assert_ne!(again[0].token, short[0].token);
    // The first worker's late report is refused; the second's counts.
    assert!(matches!(
        report(&f, &short[0], delivered()),
        Err(XfsError::BadRequest { .. })
    ));
    assert_eq!(report(&f, &again[0], delivered()), Ok(Reply::Done));
    // `max` bounds a lease.
    submit(&f, 3, &REMOTE);
    assert_eq!(lease(&f, "w3", 2, 60_000).len(), 2);
    assert!(matches!(
        f.err(Op::LeaseQueue {
            worker: "w".into(),
            max: 1,
            lease_ms: 0
        }),
        XfsError::BadRequest { .. }
    ));
}

#[test]
fn a_delivered_entry_is_logged_and_its_message_dropped_with_the_last_recipient() {
    let f = Fixture::new();
    f.create(ALICE);
    let (_, ids, _) = submit(&f, 1, &REMOTE[..2]);
    let body_key = keys::msg(ALICE, 2); // the Sent copy is message 1, the queued body 2
    assert!(f.raw(CF_BODY, &body_key).is_some());
    let leases = lease(&f, "w1", 10, 60_000);
    assert_eq!(report(&f, &leases[0], delivered()), Ok(Reply::Done));
    // A repeat of an applied report (its reply was lost) is answered Done again.
    assert_eq!(report(&f, &leases[0], delivered()), Ok(Reply::Done));
    assert!(
        f.raw(CF_BODY, &body_key).is_some(),
        "still needed by the other"
    );
    assert_eq!(report(&f, &leases[1], delivered()), Ok(Reply::Done));
    assert!(f.raw(CF_BODY, &body_key).is_none());
    assert!(f.raw(CF_QUEUE, &keys::queued(ALICE, ids[0])).is_none());
    let q = queue(&f, ALICE);
    assert!(q
        .iter()
        .all(|e| matches!(e.state, QueueState::Delivered { .. }) && e.attempts == 1));
    assert_eq!(
        q[0].last_reply.as_deref(),
        Some("250 2.0.0 Ok: queued as 1234")
    );
    // The Sent copy is untouched; no notice was written.
    assert_eq!(f.uids(ALICE, "Sent"), vec![1]);
    assert!(inbox_subjects(&f, ALICE).is_empty());
}

#[test]
fn deleting_the_sent_copy_neither_cancels_nor_breaks_a_queued_delivery() {
    let f = Fixture::new();
    f.create(ALICE);
    let (msg, _, _) = submit(&f, 1, &REMOTE[..1]);
    f.ok(Op::Expunge {
        target: t(ALICE),
        msgs: vec![msg],
    });
    let l = lease(&f, "w1", 10, 60_000);
    assert_eq!(l.len(), 1);
    assert_eq!(l[0].body, mail(1).body);
}

#[test]
fn a_deferral_waits_for_its_time_and_warns_the_sender_once() {
    let f = Fixture::new();
    f.create(ALICE);
    submit(&f, 1, &REMOTE[..1]);
    let l = lease(&f, "w1", 10, 60_000);
    let later = runtime::time::now_ms() + 3_600_000;
    let deferred = |warn| Outcome::Deferred {
        reply: "451 4.7.1 greylisted, try again later".into(),
        retry_at_ms: later,
        warn,
    };
    assert_eq!(report(&f, &l[0], deferred(true)), Ok(Reply::Done));
    let q = queue(&f, ALICE);
    assert_eq!(
        (q[0].state.clone(), q[0].attempts, q[0].warned),
        (QueueState::Queued, 1, true)
    );
    assert_eq!(q[0].next_attempt_ms, later);
    assert!(
        lease(&f, "w1", 10, 60_000).is_empty(),
        "not due before its time"
    );
    assert_eq!(
        inbox_subjects(&f, ALICE),
        vec!["Delayed Mail (still being retried)"]
    );
    // An operator's retry makes it due now; a second warning is not sent.
    assert_eq!(
        f.ok(Op::RetryQueue {
            target: t(ALICE),
            id: None
        }),
        Reply::Count(1)
    );
    let l = lease(&f, "w1", 10, 60_000);
    assert_eq!(report(&f, &l[0], deferred(true)), Ok(Reply::Done));
    assert_eq!(inbox_subjects(&f, ALICE).len(), 1);
}

#[test]
fn a_failure_writes_one_status_report_into_the_senders_inbox() {
    let f = Fixture::new();
    f.create(ALICE);
    submit(&f, 1, &REMOTE[..1]);
    let l = lease(&f, "w1", 10, 60_000);
    let failed = Outcome::Failed {
        reply: "550 5.1.1 <carol@remote.example>: Recipient address rejected".into(),
    };
    assert_eq!(report(&f, &l[0], failed.clone()), Ok(Reply::Done));
    assert_eq!(report(&f, &l[0], failed), Ok(Reply::Done));
    let page = f.page(ALICE, "Inbox", 0, 10, None);
    assert_eq!(page.entries.len(), 1);
    let dsn = f.fetch(ALICE, page.entries[0].msg).unwrap();
    let text = String::from_utf8_lossy(&dsn.body);
    assert!(text.contains("report-type=delivery-status"));
    assert!(text.contains("Final-Recipient: rfc822; carol@remote.example"));
    assert!(text.contains("Status: 5.1.1"));
    assert!(matches!(
        queue(&f, ALICE)[0].state,
        QueueState::Failed { .. }
    ));
    assert!(lease(&f, "w1", 10, 60_000).is_empty());
}

#[test]
fn a_null_sender_gets_no_status_report() {
    let f = Fixture::new();
    f.create(ALICE);
    let mut s = submission(1, &REMOTE[..1]);
    s.from = String::new();
    f.ok(Op::Submit {
        target: t(ALICE),
        submission: s,
    });
    let l = lease(&f, "w1", 10, 60_000);
    let failed = Outcome::Failed {
        reply: "550 no".into(),
    };
    assert_eq!(report(&f, &l[0], failed), Ok(Reply::Done));
    assert!(inbox_subjects(&f, ALICE).is_empty());
}

#[test]
fn an_operator_cancels_with_or_without_a_bounce() {
    let f = Fixture::new();
    f.create(ALICE);
    let (_, ids, _) = submit(&f, 1, &REMOTE[..2]);
    f.ok(Op::CancelQueued {
        target: t(ALICE),
        id: ids[0],
        bounce: false,
    });
    assert!(inbox_subjects(&f, ALICE).is_empty());
    f.ok(Op::CancelQueued {
        target: t(ALICE),
        id: ids[1],
        bounce: true,
    });
    assert_eq!(
        inbox_subjects(&f, ALICE),
        vec!["Undelivered Mail Returned to Sender"]
    );
    assert!(matches!(
        f.err(Op::CancelQueued {
            target: t(ALICE),
            id: ids[1],
            bounce: true
        }),
        XfsError::BadRequest { .. }
    ));
    assert!(lease(&f, "w1", 10, 60_000).is_empty());
    assert!(f.raw(CF_BODY, &keys::msg(ALICE, 2)).is_none());
}

#[test]
fn a_frozen_mailbox_is_not_leased_and_the_segment_listing_shows_pending_entries() {
    let f = Fixture::new();
    f.create(ALICE);
    f.create(BOB);
    submit(&f, 1, &REMOTE[..2]);
    f.ok(Op::Freeze { target: t(ALICE) });
    assert!(lease(&f, "w1", 10, 60_000).is_empty());
    f.ok(Op::Unfreeze { target: t(ALICE) });
    let pending = expect_reply!(
        f.ok(Op::ListQueue { segment: 0, after: None, limit: 10 }),
        Reply::Queue(q) => q
    );
    assert_eq!(pending.len(), 2);
    let rest = expect_reply!(
        f.ok(Op::ListQueue { segment: 0, after: Some((ALICE.into(), pending[0].id)), limit: 10 }),
        Reply::Queue(q) => q
    );
    assert_eq!(rest, pending[1..].to_vec());
    assert_eq!(lease(&f, "w1", 10, 60_000).len(), 2);
}

#[test]
fn a_damaged_queue_entry_is_skipped_and_the_others_still_go() {
    let f = Fixture::new();
    f.create(ALICE);
    f.create(BOB);
    let (_, ids, _) = submit(&f, 1, &REMOTE[..2]);
    f.flip_byte(CF_QUEUE, &keys::queued(ALICE, ids[0]), 6);
    let l = lease(&f, "w1", 10, 60_000);
    assert_eq!(
        l.iter().map(|l| l.entry.id).collect::<Vec<_>>(),
        vec![ids[1]]
    );
}

#[test]
fn a_moved_mailbox_takes_its_queue_and_the_new_store_leases_it() {
    let src = Fixture::new();
    src.create(ALICE);
    submit(&src, 1, &REMOTE[..2]);
    let dst = Fixture::new();
    let t2 = Target::new(ALICE, 0, 2);
    dst.ok(Op::BeginImport {
        target: t2.clone(),
        from: "store-a".into(),
    });
    for part in [ExportPart::Bodies, ExportPart::Records] {
        let mut after = None;
        loop {
            let c = expect_reply!(
                src.ok(Op::Export { target: t(ALICE), part, after, max_bytes: 1 << 20, keys_only: false }),
                Reply::Export(c) => c
            );
            dst.ok(Op::Import {
                target: t2.clone(),
                records: c.records,
                delete: vec![],
                reset_records: false,
            });
            match c.next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
    }
    src.ok(Op::Freeze { target: t(ALICE) });
    assert_eq!(
        expect_reply!(src.ok(Op::Digest { target: t(ALICE) }), Reply::Digest(d) => d),
        expect_reply!(dst.ok(Op::Digest { target: t2.clone() }), Reply::Digest(d) => d)
    );
    dst.ok(Op::FinishImport { target: t2.clone() });
    src.ok(Op::MarkMoved {
        target: t(ALICE),
        to: "store-b".into(),
        epoch: 2,
    });
    assert!(
        lease(&src, "w1", 10, 60_000).is_empty(),
        "the old copy sends nothing"
    );
    let l = lease(&dst, "w1", 10, 60_000);
    assert_eq!(l.len(), 2);
    assert_eq!(l[0].epoch, 2);
    assert_eq!(l[0].body, mail(1).body);
    assert_eq!(report(&dst, &l[0], delivered()), Ok(Reply::Done));
}

#[test]
fn pending_entries_are_counted_by_age() {
    let f = Fixture::new();
    f.create(ALICE);
    let (_, ids, _) = submit(&f, 1, &REMOTE);
    let now = crate::segment::now_ms();
    assert_eq!(f.seg().queue_ages(now).unwrap(), [3, 0, 0, 0]);
    // Seen two hours and two days later.
    assert_eq!(f.seg().queue_ages(now + 7_200_000).unwrap(), [0, 0, 3, 0]);
    assert_eq!(f.seg().queue_ages(now + 172_800_000).unwrap(), [0, 0, 0, 3]);
    // A finished entry is no longer pending.
    let l = lease(&f, "w", 1, 60_000);
    assert!(ids.contains(&l[0].entry.id));
    report(&f, &l[0], delivered()).unwrap();
    assert_eq!(f.seg().queue_ages(now).unwrap(), [2, 0, 0, 0]);
}
