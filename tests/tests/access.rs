//! Least privilege, tried cell by cell: every role (each with a certificate of the HCU's
//! authority naming it) asks a real store and a real index replica for every operation. What the
//! table (`xfs::access`, `mserv_client::access`, ARCHITECTURE.md) forbids is answered
//! `Forbidden` and counted; what it allows is not refused for the caller's role (it may fail for
//! its own reasons: no such user, a bad argument). A caller without a certificate of the
//! authority never gets past the handshake, and a hello that claims another name than the
//! certificate's is refused.

use std::sync::Arc;
use std::time::Duration;

use megamail_tests::mserv::{Mserv, MservOpts};
use megamail_tests::support::metrics::sample;
use megamail_tests::support::pki;
use megamail_tests::{http_get, Ustore, UstoreOpts};
use mserv_client::proto::{Command, Op as IndexOp, RaftRpc};
use mserv_client::{MservError, Policy, StoreInfo, StoreState};
use xfs::conn::{ConnError, Pool, PoolConfig};
use xfs::{
    CallError, Delivery, ExportPart, Flags, Identity, NewAccount, Op, Outcome, Role, SearchQuery,
    StorePool, Submission, Summary, Target, XfsError,
};

fn target() -> Target {
    Target::new("nobody@example.test", 0, 1)
}

/// One operation of each name (and the two shapes of `update_account`).
fn store_ops() -> Vec<Op> {
    let t = target;
    let ops = vec![
        Op::Ping,
        Op::CreateAccount {
            target: t(),
            account: NewAccount {
                password_hash: "x".into(),
                display_name: "x".into(),
                quota_bytes: 0,
            },
        },
        Op::DeleteAccount { target: t() },
        Op::GetAccount { target: t() },
        Op::GetAuth { target: t() },
        Op::RecordLogin {
            target: t(),
            at_ms: 1,
        },
        Op::EndSession {
            target: t(),
            sid: "s".into(),
            until: 1,
        },
        Op::UpdateAccount {
            target: t(),
            display_name: Some("x".into()),
            password_hash: None,
            quota_bytes: None,
        },
        Op::UpdateAccount {
            target: t(),
            display_name: None,
            password_hash: None,
            quota_bytes: Some(1),
        },
        Op::Deliver {
            target: t(),
            delivery: Delivery {
                id: [1; 32],
                folder: None,
                internal_date_ms: 1,
                flags: Flags::default(),
                summary: Summary::default(),
                body: b"Subject: x\r\n\r\nx\r\n".to_vec().into(),
            },
        },
        Op::Submit {
            target: t(),
            submission: Submission {
                sent: Delivery {
                    id: [2; 32],
                    folder: None,
                    internal_date_ms: 1,
                    flags: Flags::SEEN,
                    summary: Summary::default(),
                    body: b"Subject: x\r\n\r\nx\r\n".to_vec().into(),
                },
                from: "nobody@example.test".into(),
                rcpts: vec!["someone@remote.example".into()],
            },
        },
        Op::LeaseQueue {
            worker: "w".into(),
            max: 1,
            lease_ms: 1,
        },
        Op::ReportQueue {
            target: t(),
            id: 1,
            token: 1,
            mta: "x".into(),
            outcome: Outcome::Delivered {
                reply: "250".into(),
            },
        },
        Op::MailboxQueue {
            target: t(),
            after: None,
            limit: 1,
        },
        Op::ListQueue {
            segment: 0,
            after: None,
            limit: 1,
        },
        Op::RetryQueue {
            target: t(),
            id: None,
        },
        Op::CancelQueued {
            target: t(),
            id: 1,
            bounce: false,
        },
        Op::ListFolders { target: t() },
        Op::ListFolder {
            target: t(),
            folder: "Inbox".into(),
            offset: 0,
            limit: 1,
            before_uid: None,
        },
        Op::Fetch {
            target: t(),
            msg: 1,
            mark_seen: false,
        },
        Op::SetFlags {
            target: t(),
            msgs: vec![1],
            add: Flags::SEEN,
            remove: Flags::NONE,
        },
        Op::Move {
            target: t(),
            msgs: vec![1],
            to_folder: "Trash".into(),
        },
        Op::Expunge {
            target: t(),
            msgs: vec![1],
        },
        Op::EmptyFolder {
            target: t(),
            folder: "Trash".into(),
        },
        Op::CreateFolder {
            target: t(),
            name: "x".into(),
        },
        Op::RenameFolder {
            target: t(),
            from: "x".into(),
            to: "y".into(),
        },
        Op::DeleteFolder {
            target: t(),
            name: "y".into(),
        },
        Op::Search {
            target: t(),
            query: SearchQuery {
                text: "x".into(),
                in_from: true,
                in_subject: true,
                in_body: false,
                folder: None,
                limit: 1,
            },
        },
        Op::MailboxStats { target: t() },
        Op::Changes {
            target: t(),
            since: 0,
            limit: 1,
        },
        Op::StoreStats,
        Op::Export {
            target: t(),
            part: ExportPart::Records,
            after: None,
            max_bytes: 1024,
            keys_only: true,
        },
        Op::BeginImport {
            target: t(),
            from: "elsewhere".into(),
        },
        Op::Import {
            target: t(),
            records: vec![],
            delete: vec![],
            reset_records: false,
        },
        Op::FinishImport { target: t() },
        Op::Freeze { target: t() },
        Op::Unfreeze { target: t() },
        Op::MarkMoved {
            target: t(),
            to: "elsewhere".into(),
            epoch: 2,
        },
        Op::Purge { target: t() },
        Op::Digest { target: t() },
        Op::Checkpoint {
            segment: 9,
            dir: "/nonexistent/checkpoint".into(),
        },
        Op::ListAccounts {
            segment: 0,
            after: None,
            limit: 1,
        },
        Op::SoftDelete { target: t() },
        Op::Undelete { target: t() },
        Op::AccountRecord { target: t() },
        Op::BackupAccount {
            dir: "/nonexistent/backup".into(),
            user: "nobody@example.test".into(),
        },
        Op::RestoreMailbox {
            target: t(),
            dir: "/nonexistent/backup".into(),
        },
    ];
    // Every operation the store has is tried: a new one must be added here (and to the table).
    let mut names: Vec<&str> = ops.iter().map(|o| o.name()).collect();
    names.dedup();
    let mut all = Op::NAMES.to_vec();
    all.sort();
    let mut tried = names.clone();
    tried.sort();
    assert_eq!(tried, all, "every store operation has a sample here");
    ops
}

fn identities() -> Vec<Identity> {
    Role::ALL
        .into_iter()
        .map(|r| pki::identity(r, &format!("{}-1", r.as_str())))
        .collect()
}

fn pool(addr: &str, identity: Identity) -> StorePool {
    StorePool::new(
        addr,
        Arc::new(xfs::ClientConfig {
            identity,
            conns_per_store: 1,
            request_timeout: Duration::from_secs(5),
            ..Default::default()
        }),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_role_meets_the_store_table_cell_by_cell() {
    let store = Ustore::start(UstoreOpts {
        segments: 1,
        ..Default::default()
    })
    .await
    .unwrap();
    let addr = store.addr.to_string();
    let mut forbidden = 0;
    for who in identities() {
        let role = who.role;
        let p = pool(&addr, who);
        for op in store_ops() {
            let name = op.name();
            let allowed = xfs::access::permitted(role, &op);
            let got = p.call(op).await;
            let refused = matches!(got, Err(CallError::Remote(XfsError::Forbidden { .. })));
            assert_eq!(
                refused, !allowed,
                "a {role} asking for {name}: {got:?} (the table says allowed: {allowed})"
            );
            if !allowed {
                forbidden += 1;
            }
            // Transport trouble would mean the cell was not tried at all.
            assert!(
                !matches!(
                    got,
                    Err(CallError::Unavailable { .. } | CallError::Protocol { .. })
                ),
                "a {role} asking for {name}: {got:?}"
            );
        }
    }
    assert!(forbidden > 100, "only {forbidden} forbidden cells");
    let (_, metrics) = http_get(store.proc.admin, "/metrics").await.unwrap();
    let counted: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("ustore_forbidden_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(counted, forbidden as f64, "every refusal is counted");
    let got = sample(
        &metrics,
        "ustore_forbidden_total{op=\"get_auth\",role=\"smtp-in\"}",
    );
    assert_eq!(got, Some(1.0), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_authoritys_certificate_nothing_reaches_a_store() {
    let store = Ustore::start(UstoreOpts {
        segments: 1,
        ..Default::default()
    })
    .await
    .unwrap();
    let addr = store.addr.to_string();
    // Plaintext, claiming to be an operator.
    let plain = pool(&addr, Identity::plaintext(Role::Operator, "mallory"));
    let got = plain.call(Op::StoreStats).await;
    assert!(matches!(got, Err(CallError::Unavailable { .. })), "{got:?}");
    // A certificate of another authority.
    let other = xfs::tls::issue::Authority::create("another authority").unwrap();
    let pems = other.pems(Role::Operator, "mallory").unwrap();
    let stranger = Identity {
        role: Role::Operator,
        name: "mallory".into(),
        transport: xfs::Transport::Tls(xfs::tls::Tls::from_pems(&pems, Role::Operator).unwrap()),
    };
    let got = pool(&addr, stranger).call(Op::StoreStats).await;
    assert!(matches!(got, Err(CallError::Unavailable { .. })), "{got:?}");
    // A valid front door certificate whose hello claims another instance.
    let mut liar = pki::identity(Role::Frontdoor, "frontdoor-1");
    liar.name = "frontdoor-2".into();
    let got = pool(&addr, liar).call(Op::Ping).await;
    match &got {
        Err(CallError::Unavailable { why, .. }) => {
            assert!(why.contains("does not name the instance"), "{why}")
        }
        other => panic!("{other:?}"),
    }
    // ... or another role.
    let mut posing = pki::identity(Role::Frontdoor, "frontdoor-1");
    posing.role = Role::Operator;
    let got = pool(&addr, posing).call(Op::Ping).await;
    assert!(matches!(got, Err(CallError::Unavailable { .. })), "{got:?}");
    let (_, metrics) = http_get(store.proc.admin, "/metrics").await.unwrap();
    let tls = sample(&metrics, "ustore_frame_errors_total{kind=\"tls\"}").unwrap_or(0.0);
    assert!(tls >= 2.0, "handshake failures counted: {metrics}");
    let identity = sample(&metrics, "ustore_frame_errors_total{kind=\"identity\"}");
    assert_eq!(identity, Some(2.0), "{metrics}");
    // The operator of this HCU is served.
    pool(&addr, pki::operator())
        .call(Op::StoreStats)
        .await
        .unwrap();
}

/// One index operation of each kind (and both shapes of the forwarded ones).
fn index_ops() -> Vec<IndexOp> {
    let store = StoreInfo {
        name: "store-9".into(),
        xfs_addr: "127.0.0.1:1".into(),
        cluster: "hcu-1".into(),
        segments: vec![0],
        state: StoreState::Active,
    };
    let key = mserv_client::DkimKey {
        selector: "s9".into(),
        algorithm: mserv_client::DkimAlgorithm::Ed25519,
        private_der: vec![],
        public_b64: String::new(),
        state: mserv_client::KeyState::Pending,
        created_ms: 0,
    };
    let mut ops = vec![
        IndexOp::Ping,
        IndexOp::Lookup {
            user: "nobody@example.test".into(),
        },
        IndexOp::ListStores,
        IndexOp::ListClusters,
        IndexOp::ListDomains,
        IndexOp::DomainKeys,
        IndexOp::Stats,
        IndexOp::ListStoreUsers {
            store: "store-9".into(),
            after: None,
            limit: 1,
        },
        IndexOp::RemoveReplica {
            id: 99,
            forwarded: false,
        },
        IndexOp::RemoveReplica {
            id: 99,
            forwarded: true,
        },
        IndexOp::Raft(RaftRpc::Vote(vec![])),
        IndexOp::Raft(RaftRpc::AppendEntries(vec![])),
        IndexOp::Raft(RaftRpc::InstallSnapshot(vec![])),
    ];
    for forwarded in [false, true] {
        for cmd in [
            Command::RegisterStore {
                info: store.clone(),
            },
            Command::RegisterCluster {
                cluster: mserv_client::ClusterInfo {
                    name: "hcu-1".into(),
                    front_doors: vec!["https://elsewhere.example".into()],
                },
            },
            Command::CreateUser {
                user: "x@example.test".into(),
                policy: Policy::LeastLoaded,
            },
            Command::DeleteUser {
                user: "x@example.test".into(),
            },
            Command::AddDomain {
                name: "nine.example".into(),
                key: None,
            },
            Command::AddDkimKey {
                domain: "nine.example".into(),
                key: key.clone(),
            },
            Command::ActivateDkimKey {
                domain: "nine.example".into(),
                selector: "s9".into(),
            },
            Command::DeleteDomain {
                name: "nine.example".into(),
            },
        ] {
            ops.push(IndexOp::Write { cmd, forwarded });
        }
    }
    ops
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_role_meets_the_index_table_cell_by_cell() {
    let m = Mserv::start(MservOpts {
        replicas: 1,
        ..Default::default()
    })
    .await
    .unwrap();
    let id = *m.replicas.keys().next().unwrap();
    let addr = m.replicas[&id].addr.to_string();
    let mut forbidden = 0;
    for who in identities() {
        let role = who.role;
        let ep: Pool<mserv_client::conn::Index> = Pool::new(
            addr.clone(),
            Arc::new(PoolConfig {
                identity: who,
                conns: 1,
                ..Default::default()
            }),
        );
        for op in index_ops() {
            let name = op.name();
            let allowed = mserv_client::access::permitted(role, &op);
            let got = ep.call(op, "", None, Duration::from_secs(3)).await;
            let refused = matches!(got, Ok(Err(MservError::Forbidden { .. })));
            assert_eq!(
                refused, !allowed,
                "a {role} asking the index for {name}: {got:?} (allowed: {allowed})"
            );
            assert!(
                !matches!(
                    got,
                    Err(ConnError::NotSent { .. } | ConnError::Protocol { .. })
                ),
                "a {role} asking the index for {name}: {got:?}"
            );
            if !allowed {
                forbidden += 1;
            }
        }
    }
    assert!(forbidden > 50, "only {forbidden} forbidden cells");
    let (_, metrics) = http_get(m.replicas[&id].proc.admin, "/metrics")
        .await
        .unwrap();
    let got = sample(
        &metrics,
        "mserv_forbidden_total{op=\"register_cluster\",role=\"frontdoor\"}",
    );
    // Asked for directly and as if forwarded by a replica.
    assert_eq!(got, Some(2.0), "{metrics}");
}
