//! Who moves where: the target of one move (checked), the users of a store to evacuate, their
//! targets spread over the other active stores, and the mailbox sizes the progress bar counts.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context};
use mserv_client::{Placement, StoreState};
use xfs::{ops, Target};

use super::jobs::pending_jobs;
use super::Step;
use crate::admin::Hcu;

/// The XFS address of the registered store `name`.
pub fn store_addr(stores: &[mserv_client::StoreLoad], name: &str) -> anyhow::Result<String> {
    stores
        .iter()
        .find(|s| s.info.name == name)
        .map(|s| s.info.xfs_addr.clone())
        .with_context(|| format!("no store named {name} is registered"))
}

/// Choose the target of a new move, or refuse: the store must be active and not the user's own.
pub fn check_target(
    stores: &[mserv_client::StoreLoad],
    p: &Placement,
    to_store: &str,
    to_segment: Option<u32>,
) -> anyhow::Result<Option<u32>> {
    let s = stores
        .iter()
        .find(|s| s.info.name == to_store)
        .with_context(|| format!("no store named {to_store} is registered"))?;
    if p.store == to_store {
        return Ok(None);
    }
    if s.info.state != StoreState::Active {
        bail!(
            "store {to_store} is {}: mailboxes are moved only to active stores",
            s.info.state.as_str()
        );
    }
    let seg = match to_segment {
        Some(seg) if s.info.segments.contains(&seg) => seg,
        Some(seg) => bail!("store {to_store} has no segment {seg}"),
        None => s
            .segment_users
            .iter()
            .min_by_key(|(id, n)| (*n, *id))
            .map(|(id, _)| *id)
            .context("the target store has no segments")?,
    };
    Ok(Some(seg))
}

/// The users a run moves: one, or every user on a store plus its unfinished moves.
pub async fn users_of(hcu: &Hcu, data: &Path, store: &str) -> anyhow::Result<Vec<String>> {
    let mut users: Vec<String> = pending_jobs(data)?
        .into_iter()
        .filter(|j| j.from_store == store && j.step != Step::Moved)
        .map(|j| j.user)
        .collect();
    let mut after: Option<String> = None;
    loop {
        let page = hcu
            .mserv
            .list_store_users(store, after.as_deref(), 1000)
            .await?;
        users.extend(page.users.into_iter().map(|(u, _)| u));
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    users.sort();
    users.dedup();
    Ok(users)
}

/// Targets for an evacuation: each user to the active store (not `from`) with the fewest users,
/// counting the ones assigned in this run.
pub fn spread(
    stores: &[mserv_client::StoreLoad],
    from: &str,
    users: &[String],
) -> anyhow::Result<Vec<(String, String)>> {
    let mut load: HashMap<String, u64> = stores
        .iter()
        .filter(|s| s.info.state == StoreState::Active && s.info.name != from)
        .map(|s| (s.info.name.clone(), s.users))
        .collect();
    if load.is_empty() {
        bail!("no active store other than {from} to move mailboxes to");
    }
    let mut out = Vec::new();
    for u in users {
        let name = load
            .iter()
            .min_by(|a, b| a.1.cmp(b.1).then(a.0.cmp(b.0)))
            .map(|(name, _)| name.clone())
            .expect("not empty");
        *load.get_mut(&name).expect("present") += 1;
        out.push((u.clone(), name));
    }
    Ok(out)
}

/// Size of a user's mailbox in bytes, for the plan and the progress bar (0 if unknown).
pub async fn mailbox_bytes(hcu: &Hcu, user: &str) -> u64 {
    let Ok(p) = hcu.mserv.lookup_uncached(user).await else {
        return 0;
    };
    let Ok(addr) = hcu.store_addr(&p.store).await else {
        return 0;
    };
    let op = ops::GetAccount {
        target: Target::new(user, p.segment, p.epoch),
    };
    match hcu.xfs.pool(&addr).run(op).await {
        Ok(a) => a.used_bytes,
        Err(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mserv_client::StoreInfo;

    fn load(name: &str, users: u64, state: StoreState) -> mserv_client::StoreLoad {
        mserv_client::StoreLoad {
            info: StoreInfo {
                name: name.into(),
                xfs_addr: String::new(),
                cluster: "c".into(),
                segments: vec![0, 1],
                state,
            },
            users,
            segment_users: vec![(0, users / 2 + 1), (1, users / 2)],
        }
    }

    #[test]
    fn targets_are_active_other_stores_least_loaded_first() {
        let stores = [
            load("s1", 10, StoreState::Draining),
            load("s2", 5, StoreState::Active),
            load("s3", 0, StoreState::Active),
            load("s4", 0, StoreState::Offline),
        ];
        let users: Vec<String> = (0..8).map(|i| format!("u{i}@x.test")).collect();
        let plan = spread(&stores, "s1", &users).unwrap();
        let to_s3 = plan.iter().filter(|(_, s)| s == "s3").count();
        assert_eq!(to_s3, 6, "{plan:?}");
        assert!(plan.iter().all(|(_, s)| s == "s2" || s == "s3"));
        assert!(spread(&stores[..1], "s1", &users).is_err());
    }

    #[test]
    fn a_target_must_be_active_and_elsewhere() {
        let stores = [
            load("s1", 4, StoreState::Active),
            load("s2", 4, StoreState::Draining),
        ];
        let p = Placement {
            store: "s1".into(),
            segment: 0,
            epoch: 1,
        };
        assert_eq!(check_target(&stores, &p, "s1", None).unwrap(), None);
        let err = check_target(&stores, &p, "s2", None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("draining"), "{err}");
        assert!(check_target(&stores, &p, "s9", None).is_err());
        let p2 = Placement {
            store: "s2".into(),
            ..p
        };
        assert_eq!(check_target(&stores, &p2, "s1", None).unwrap(), Some(1));
        assert!(check_target(&stores, &p2, "s1", Some(7)).is_err());
    }
}
