//! The member index itself, in memory: placements, the store and cluster registries, the
//! per-store and per-segment user counts the placement policy reads, and a store → users index
//! for evacuation. Applying a [`Command`] is deterministic and reports the records it changed, so
//! the storage layer can persist exactly those in the same batch as the applied log id.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;

use crate::proto::{
    normalize_user, Applied, ClusterInfo, Command, MservError, Placement, Policy, StoreInfo,
    StoreLoad, StoreState, UserPage,
};
use mserv_client::domain::{check_selector, normalize_domain, DkimKey, Domain, KeyState};

/// The most users one page of [`State::store_users`] returns.
pub const MAX_PAGE: u32 = 10_000;

/// A record changed by applying a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    PutUser(String, Placement),
    DeleteUser(String),
    PutStore(StoreInfo),
    PutCluster(ClusterInfo),
    PutDomain(Domain),
    DeleteDomain(String),
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Load {
    total: u64,
    segments: BTreeMap<u32, u64>,
}

/// The index. Reads take `&self`; only [`State::apply`] and the loaders change it.
#[derive(Debug, Default, Clone)]
pub struct State {
    users: HashMap<String, Placement>,
    /// `(store, user)` for every placement: one range scan lists a store's users in order.
    by_store: BTreeSet<(String, String)>,
    stores: BTreeMap<String, StoreInfo>,
    clusters: BTreeMap<String, ClusterInfo>,
    domains: BTreeMap<String, Domain>,
    load: HashMap<String, Load>,
}

impl State {
    pub fn new() -> Self {
        State::default()
    }

    /// Add a user read back from storage.
    pub fn load_user(&mut self, user: String, p: Placement) {
        self.place(user, p);
    }

    /// Add a store read back from storage.
    pub fn load_store(&mut self, info: StoreInfo) {
        self.stores.insert(info.name.clone(), info);
    }

    /// Add a cluster read back from storage.
    pub fn load_cluster(&mut self, c: ClusterInfo) {
        self.clusters.insert(c.name.clone(), c);
    }

    /// Add a domain read back from storage.
    pub fn load_domain(&mut self, d: Domain) {
        self.domains.insert(d.name.clone(), d);
    }

    /// The hosted domains, by name (with their private keys).
    pub fn domains(&self) -> impl Iterator<Item = &Domain> {
        self.domains.values()
    }

    pub fn lookup(&self, user: &str) -> Option<&Placement> {
        self.users.get(user)
    }

    pub fn user_count(&self) -> u64 {
        self.users.len() as u64
    }

    /// `(store, users)` for every registered store, by name.
    pub fn store_counts(&self) -> Vec<(String, u64)> {
        self.stores
            .keys()
            .map(|s| (s.clone(), self.load.get(s).map_or(0, |l| l.total)))
            .collect()
    }

    /// Every store with its load, by name.
    pub fn stores(&self) -> Vec<StoreLoad> {
        self.stores
            .values()
            .map(|info| {
                let load = self.load.get(&info.name);
                StoreLoad {
                    info: info.clone(),
                    users: load.map_or(0, |l| l.total),
                    segment_users: info
                        .segments
                        .iter()
                        .map(|s| {
                            (
                                *s,
                                load.and_then(|l| l.segments.get(s)).copied().unwrap_or(0),
                            )
                        })
                        .collect(),
                }
            })
            .collect()
    }

    pub fn clusters(&self) -> Vec<ClusterInfo> {
        self.clusters.values().cloned().collect()
    }

    /// Up to `limit` users of `store` that sort after `after`, in order; `next` is the cursor for
    /// the following page.
    pub fn store_users(
        &self,
        store: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<UserPage, MservError> {
        if !self.stores.contains_key(store) {
            return Err(MservError::NoSuchStore {
                store: store.into(),
            });
        }
        let limit = limit.clamp(1, MAX_PAGE) as usize;
        let start = match after {
            Some(a) => Bound::Excluded((store.to_string(), a.to_string())),
            None => Bound::Included((store.to_string(), String::new())),
        };
        let mut users = Vec::with_capacity(limit.min(1024));
        let mut more = false;
        for (s, u) in self.by_store.range((start, Bound::Unbounded)) {
            if s != store {
                break;
            }
            if users.len() == limit {
                more = true;
                break;
            }
            if let Some(p) = self.users.get(u) {
                users.push((u.clone(), p.clone()));
            }
        }
        let next = if more {
            users.last().map(|(u, _)| u.clone())
        } else {
            None
        };
        Ok(UserPage { users, next })
    }

    /// The store and segment `policy` picks for a new user.
    pub fn choose(&self, policy: &Policy) -> Result<(String, u32), MservError> {
        match policy {
            Policy::Explicit { store, segment } => {
                self.check_target(store, *segment)?;
                Ok((store.clone(), *segment))
            }
            Policy::LeastLoaded => {
                let store = self
                    .stores
                    .values()
                    .filter(|s| s.state == StoreState::Active && !s.segments.is_empty())
                    .min_by_key(|s| self.load.get(&s.name).map_or(0, |l| l.total))
                    .ok_or(MservError::NoActiveStore)?;
                let load = self.load.get(&store.name);
                let segment = store
                    .segments
                    .iter()
                    .min_by_key(|seg| {
                        let n = load.and_then(|l| l.segments.get(seg)).copied().unwrap_or(0);
                        (n, **seg)
                    })
                    .copied()
                    .ok_or(MservError::NoActiveStore)?;
                Ok((store.name.clone(), segment))
            }
        }
    }

    /// A store and segment a mailbox may be placed on or moved to: registered, active, and the
    /// segment one of the store's.
    fn check_target(&self, store: &str, segment: u32) -> Result<(), MservError> {
        let info = self
            .stores
            .get(store)
            .ok_or_else(|| MservError::NoSuchStore {
                store: store.into(),
            })?;
        if info.state != StoreState::Active {
            return Err(MservError::StoreNotActive {
                store: store.into(),
                state: info.state,
            });
        }
        if !info.segments.contains(&segment) {
            return Err(MservError::NoSuchSegment {
                store: store.into(),
                segment,
            });
        }
        Ok(())
    }

    /// Apply one command, pushing every changed record onto `changes`. A refused command changes
    /// nothing.
    pub fn apply(
        &mut self,
        cmd: &Command,
        changes: &mut Vec<Change>,
    ) -> Result<Applied, MservError> {
        match cmd {
            Command::CreateUser { user, policy } => {
                let user = normalize_user(user)?;
                if let Some(p) = self.users.get(&user) {
                    return Err(MservError::AlreadyExists {
                        placement: p.clone(),
                    });
                }
                let (store, segment) = self.choose(policy)?;
                let p = Placement {
                    store,
                    segment,
                    epoch: 1,
                };
                self.place(user.clone(), p.clone());
                changes.push(Change::PutUser(user, p.clone()));
                Ok(Applied::Placement(p))
            }
            Command::CreateUsers { users } => {
                let users = users
                    .iter()
                    .map(|u| normalize_user(u))
                    .collect::<Result<Vec<_>, _>>()?;
                let (mut created, mut existed) = (0, 0);
                for user in users {
                    if self.users.contains_key(&user) {
                        existed += 1;
                        continue;
                    }
                    let (store, segment) = match self.choose(&Policy::LeastLoaded) {
                        Ok(x) => x,
                        // Nothing placed yet: refuse the batch as a whole.
                        Err(e) if created == 0 => return Err(e),
                        Err(_) => break,
                    };
                    let p = Placement {
                        store,
                        segment,
                        epoch: 1,
                    };
                    self.place(user.clone(), p.clone());
                    changes.push(Change::PutUser(user, p));
                    created += 1;
                }
                Ok(Applied::Batch { created, existed })
            }
            Command::MoveUser {
                user,
                expected_epoch,
                store,
                segment,
            } => {
                let user = normalize_user(user)?;
                let current = self.users.get(&user).ok_or(MservError::NoSuchUser)?;
                if current.epoch != *expected_epoch {
                    return Err(MservError::StaleEpoch {
                        current: current.epoch,
                    });
                }
                self.check_target(store, *segment)?;
                let p = Placement {
                    store: store.clone(),
                    segment: *segment,
                    epoch: current.epoch + 1,
                };
                self.unplace(&user);
                self.place(user.clone(), p.clone());
                changes.push(Change::PutUser(user, p.clone()));
                Ok(Applied::Placement(p))
            }
            Command::DeleteUser { user } => {
                let user = normalize_user(user)?;
                if !self.users.contains_key(&user) {
                    return Err(MservError::NoSuchUser);
                }
                self.unplace(&user);
                changes.push(Change::DeleteUser(user));
                Ok(Applied::Done)
            }
            Command::RegisterStore { info } => {
                let info = self.check_store(info)?;
                self.stores.insert(info.name.clone(), info.clone());
                changes.push(Change::PutStore(info));
                Ok(Applied::Done)
            }
            Command::SetStoreState { store, state } => {
                let info = self
                    .stores
                    .get_mut(store)
                    .ok_or_else(|| MservError::NoSuchStore {
                        store: store.clone(),
                    })?;
                info.state = *state;
                changes.push(Change::PutStore(info.clone()));
                Ok(Applied::Done)
            }
            Command::RegisterCluster { cluster } => {
                let name = cluster.name.trim();
                if name.is_empty() {
                    return Err(MservError::BadRequest {
                        why: "a cluster needs a name".into(),
                    });
                }
                let c = ClusterInfo {
                    name: name.to_string(),
                    front_doors: cluster.front_doors.clone(),
                };
                self.clusters.insert(c.name.clone(), c.clone());
                changes.push(Change::PutCluster(c));
                Ok(Applied::Done)
            }
            Command::AddDomain { name, key } => {
                let name = normalize_domain(name)?;
                if self.domains.contains_key(&name) {
                    return Err(MservError::DomainExists { domain: name });
                }
                let keys = match key {
                    Some(k) => vec![DkimKey {
                        state: KeyState::Active,
                        ..check_key(k)?
                    }],
                    None => Vec::new(),
                };
                let d = Domain { name, keys };
                self.domains.insert(d.name.clone(), d.clone());
                changes.push(Change::PutDomain(d));
                Ok(Applied::Done)
            }
            Command::DeleteDomain { name } => {
                let name = normalize_domain(name)?;
                if !self.domains.contains_key(&name) {
                    return Err(MservError::NoSuchDomain { domain: name });
                }
                let suffix = format!("@{name}");
                let users = self.users.keys().filter(|u| u.ends_with(&suffix)).count();
                if users > 0 {
                    return Err(MservError::BadRequest {
                        why: format!(
                            "{users} users still have addresses in {name}: delete or rename them first"
                        ),
                    });
                }
                self.domains.remove(&name);
                changes.push(Change::DeleteDomain(name));
                Ok(Applied::Done)
            }
            Command::AddDkimKey { domain, key } => {
                let key = DkimKey {
                    state: KeyState::Pending,
                    ..check_key(key)?
                };
                let d = self.domain_mut(domain)?;
                if d.keys.iter().any(|k| k.selector == key.selector) {
                    return Err(MservError::BadRequest {
                        why: format!(
                            "{} already has a key with selector {}",
                            d.name, key.selector
                        ),
                    });
                }
                d.keys.retain(|k| k.state != KeyState::Pending);
                d.keys.push(key);
                changes.push(Change::PutDomain(d.clone()));
                Ok(Applied::Done)
            }
            Command::ActivateDkimKey { domain, selector } => {
                let d = self.domain_mut(domain)?;
                if !d
                    .keys
                    .iter()
                    .any(|k| k.selector == *selector && k.state == KeyState::Pending)
                {
                    return Err(MservError::BadRequest {
                        why: format!("{} has no pending key with selector {selector}", d.name),
                    });
                }
                d.keys.retain(|k| k.state != KeyState::Retired);
                for k in &mut d.keys {
                    k.state = match k.state {
                        KeyState::Active => KeyState::Retired,
                        KeyState::Pending if k.selector == *selector => KeyState::Active,
                        other => other,
                    };
                }
                changes.push(Change::PutDomain(d.clone()));
                Ok(Applied::Done)
            }
        }
    }

    fn domain_mut(&mut self, name: &str) -> Result<&mut Domain, MservError> {
        let name = normalize_domain(name)?;
        match self.domains.get_mut(&name) {
            Some(d) => Ok(d),
            None => Err(MservError::NoSuchDomain { domain: name }),
        }
    }

    /// Validate a store registration; the result has its segments sorted.
    fn check_store(&self, info: &StoreInfo) -> Result<StoreInfo, MservError> {
        let bad = |why: String| Err(MservError::BadRequest { why });
        let name = info.name.trim();
        if name.is_empty() || name.contains('\0') {
            return bad("a store needs a name without NUL bytes".into());
        }
        if info.xfs_addr.trim().is_empty() {
            return bad(format!("store {name}: no XFS address"));
        }
        let mut segments = info.segments.clone();
        segments.sort_unstable();
        segments.dedup();
        if segments.is_empty() || segments.len() != info.segments.len() {
            return bad(format!(
                "store {name}: segments must be non-empty and distinct"
            ));
        }
        if let Some(load) = self.load.get(name) {
            for (seg, n) in &load.segments {
                if *n > 0 && !segments.contains(seg) {
                    return bad(format!(
                        "store {name}: segment {seg} still holds {n} users and cannot be removed"
                    ));
                }
            }
        }
        Ok(StoreInfo {
            name: name.to_string(),
            xfs_addr: info.xfs_addr.trim().to_string(),
            cluster: info.cluster.clone(),
            segments,
            state: info.state,
        })
    }

    fn place(&mut self, user: String, p: Placement) {
        let load = self.load.entry(p.store.clone()).or_default();
        load.total += 1;
        *load.segments.entry(p.segment).or_default() += 1;
        self.by_store.insert((p.store.clone(), user.clone()));
        if let Some(old) = self.users.insert(user, p) {
            // Callers unplace first; keep the counts right even if one does not.
            self.forget_load(&old);
        }
    }

    fn unplace(&mut self, user: &str) {
        if let Some(old) = self.users.remove(user) {
            self.by_store.remove(&(old.store.clone(), user.to_string()));
            self.forget_load(&old);
        }
    }

    fn forget_load(&mut self, p: &Placement) {
        if let Some(load) = self.load.get_mut(&p.store) {
            load.total = load.total.saturating_sub(1);
            if let Some(n) = load.segments.get_mut(&p.segment) {
                *n = n.saturating_sub(1);
            }
        }
    }
}

/// A key as a command carries it, checked: a selector, a private key and a public one.
fn check_key(key: &DkimKey) -> Result<DkimKey, MservError> {
    check_selector(&key.selector)?;
    if key.private_der.is_empty() || key.public_b64.is_empty() {
        return Err(MservError::BadRequest {
            why: format!("DKIM key {}: no key material", key.selector),
        });
    }
    Ok(key.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(name: &str, segments: &[u32], state: StoreState) -> StoreInfo {
        StoreInfo {
            name: name.into(),
            xfs_addr: "127.0.0.1:7100".into(),
            cluster: "hcu-1".into(),
            segments: segments.to_vec(),
            state,
        }
    }

    fn apply(s: &mut State, cmd: Command) -> Result<Applied, MservError> {
        let mut changes = Vec::new();
        let before = changes.len();
        let r = s.apply(&cmd, &mut changes);
        if r.is_err() {
            assert_eq!(changes.len(), before, "a refused command changed records");
        }
        r
    }

    fn create(s: &mut State, user: &str) -> Result<Placement, MservError> {
        match apply(
            s,
            Command::CreateUser {
                user: user.into(),
                policy: Policy::LeastLoaded,
            },
        )? {
            Applied::Placement(p) => Ok(p),
            other => panic!("{other:?}"),
        }
    }

    fn register(s: &mut State, info: StoreInfo) {
        apply(s, Command::RegisterStore { info }).unwrap();
    }

    #[test]
    fn no_store_means_no_placement() {
        let mut s = State::new();
        assert_eq!(create(&mut s, "a@x.test"), Err(MservError::NoActiveStore));
        register(&mut s, store("s1", &[0], StoreState::Draining));
        register(&mut s, store("s2", &[0], StoreState::Offline));
        assert_eq!(create(&mut s, "a@x.test"), Err(MservError::NoActiveStore));
        assert_eq!(s.user_count(), 0);
    }

    #[test]
    fn least_loaded_store_then_segment() {
        let mut s = State::new();
        register(&mut s, store("s1", &[0, 1], StoreState::Active));
        register(&mut s, store("s2", &[5, 3], StoreState::Active));
        let mut placed = Vec::new();
        for i in 0..8 {
            placed.push(create(&mut s, &format!("u{i}@x.test")).unwrap());
        }
        let at: Vec<(String, u32)> = placed
            .iter()
            .map(|p| (p.store.clone(), p.segment))
            .collect();
        // Ties go to the smaller store name, then the smaller segment id.
        assert_eq!(
            at[..4],
            [
                ("s1".to_string(), 0),
                ("s2".to_string(), 3),
                ("s1".to_string(), 1),
                ("s2".to_string(), 5)
            ]
        );
        let loads = s.stores();
        assert_eq!(loads[0].users, 4);
        assert_eq!(loads[0].segment_users, vec![(0, 2), (1, 2)]);
        assert_eq!(loads[1].segment_users, vec![(3, 2), (5, 2)]);
        assert!(placed.iter().all(|p| p.epoch == 1));
    }

    #[test]
    fn draining_and_offline_stores_are_never_chosen() {
        let mut s = State::new();
        register(&mut s, store("a-busy", &[0], StoreState::Active));
        for i in 0..10 {
            create(&mut s, &format!("old{i}@x.test")).unwrap();
        }
        // Emptier stores, but not active.
        register(&mut s, store("b-draining", &[0], StoreState::Draining));
        register(&mut s, store("c-offline", &[0], StoreState::Offline));
        for i in 0..20 {
            assert_eq!(
                create(&mut s, &format!("new{i}@x.test")).unwrap().store,
                "a-busy"
            );
        }
        // An emptier active store wins until it catches up.
        register(&mut s, store("d-new", &[0], StoreState::Active));
        for i in 0..30 {
            assert_eq!(
                create(&mut s, &format!("d{i}@x.test")).unwrap().store,
                "d-new"
            );
        }
        let p = create(&mut s, "tie@x.test").unwrap();
        assert_eq!(p.store, "a-busy", "a tie goes to the smaller name");
        // Explicit placement on a non-active store is refused too.
        let r = apply(
            &mut s,
            Command::CreateUser {
                user: "x@x.test".into(),
                policy: Policy::Explicit {
                    store: "b-draining".into(),
                    segment: 0,
                },
            },
        );
        assert_eq!(
            r,
            Err(MservError::StoreNotActive {
                store: "b-draining".into(),
                state: StoreState::Draining
            })
        );
        apply(
            &mut s,
            Command::SetStoreState {
                store: "d-new".into(),
                state: StoreState::Draining,
            },
        )
        .unwrap();
        for i in 0..5 {
            assert_eq!(
                create(&mut s, &format!("e{i}@x.test")).unwrap().store,
                "a-busy"
            );
        }
    }

    #[test]
    fn explicit_placement_and_duplicates() {
        let mut s = State::new();
        register(&mut s, store("s1", &[0, 1], StoreState::Active));
        let explicit = |user: &str, store: &str, segment| Command::CreateUser {
            user: user.into(),
            policy: Policy::Explicit {
                store: store.into(),
                segment,
            },
        };
        let p = apply(&mut s, explicit("Alice@X.test", "s1", 1)).unwrap();
        assert_eq!(
            p,
            Applied::Placement(Placement {
                store: "s1".into(),
                segment: 1,
                epoch: 1
            })
        );
        assert!(s.lookup("alice@x.test").is_some(), "ids are lowercased");
        assert!(matches!(
            apply(&mut s, explicit("alice@x.test", "s1", 0)),
            Err(MservError::AlreadyExists { .. })
        ));
        assert_eq!(
            apply(&mut s, explicit("b@x.test", "s1", 7)),
            Err(MservError::NoSuchSegment {
                store: "s1".into(),
                segment: 7
            })
        );
        assert_eq!(
            apply(&mut s, explicit("b@x.test", "nope", 0)),
            Err(MservError::NoSuchStore {
                store: "nope".into()
            })
        );
        assert!(matches!(
            apply(&mut s, explicit("not-an-address", "s1", 0)),
            Err(MservError::BadRequest { .. })
        ));
    }

    #[test]
    fn move_is_a_compare_and_set_on_the_epoch() {
        let mut s = State::new();
        register(&mut s, store("s1", &[0], StoreState::Active));
        register(&mut s, store("s2", &[0, 1], StoreState::Active));
        let p = create(&mut s, "a@x.test").unwrap();
        assert_eq!((p.store.as_str(), p.epoch), ("s1", 1));
        let mv = |epoch, store: &str, segment| Command::MoveUser {
            user: "a@x.test".into(),
            expected_epoch: epoch,
            store: store.into(),
            segment,
        };
        assert_eq!(
            apply(&mut s, mv(1, "s2", 1)).unwrap(),
            Applied::Placement(Placement {
                store: "s2".into(),
                segment: 1,
                epoch: 2
            })
        );
        assert_eq!(
            apply(&mut s, mv(1, "s1", 0)),
            Err(MservError::StaleEpoch { current: 2 })
        );
        assert_eq!(s.lookup("a@x.test").unwrap().store, "s2");
        assert_eq!(s.store_counts(), vec![("s1".into(), 0), ("s2".into(), 1)]);
        apply(
            &mut s,
            Command::SetStoreState {
                store: "s1".into(),
                state: StoreState::Offline,
            },
        )
        .unwrap();
        assert!(matches!(
            apply(&mut s, mv(2, "s1", 0)),
            Err(MservError::StoreNotActive { .. })
        ));
        assert_eq!(
            apply(
                &mut s,
                Command::MoveUser {
                    user: "ghost@x.test".into(),
                    expected_epoch: 1,
                    store: "s2".into(),
                    segment: 0
                }
            ),
            Err(MservError::NoSuchUser)
        );
    }

    #[test]
    fn delete_and_paged_listing() {
        let mut s = State::new();
        register(&mut s, store("s1", &[0], StoreState::Active));
        register(&mut s, store("s2", &[0], StoreState::Active));
        for i in 0..50 {
            apply(
                &mut s,
                Command::CreateUser {
                    user: format!("u{i:02}@x.test"),
                    policy: Policy::Explicit {
                        store: if i % 2 == 0 { "s1" } else { "s2" }.into(),
                        segment: 0,
                    },
                },
            )
            .unwrap();
        }
        apply(
            &mut s,
            Command::DeleteUser {
                user: "u00@x.test".into(),
            },
        )
        .unwrap();
        assert_eq!(
            apply(
                &mut s,
                Command::DeleteUser {
                    user: "u00@x.test".into()
                }
            ),
            Err(MservError::NoSuchUser)
        );
        let mut seen = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = s.store_users("s1", after.as_deref(), 7).unwrap();
            assert!(page.users.len() <= 7);
            seen.extend(page.users.iter().map(|(u, _)| u.clone()));
            match page.next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        let want: Vec<String> = (2..50)
            .step_by(2)
            .map(|i| format!("u{i:02}@x.test"))
            .collect();
        assert_eq!(seen, want);
        assert!(matches!(
            s.store_users("nope", None, 10),
            Err(MservError::NoSuchStore { .. })
        ));
        assert_eq!(s.user_count(), 49);
    }

    #[test]
    fn batch_create_skips_existing_and_spreads() {
        let mut s = State::new();
        assert_eq!(
            apply(
                &mut s,
                Command::CreateUsers {
                    users: vec!["a@x.test".into()]
                }
            ),
            Err(MservError::NoActiveStore)
        );
        register(&mut s, store("s1", &[0, 1], StoreState::Active));
        register(&mut s, store("s2", &[0, 1], StoreState::Active));
        create(&mut s, "u3@x.test").unwrap();
        let users: Vec<String> = (0..100).map(|i| format!("u{i}@x.test")).collect();
        assert_eq!(
            apply(&mut s, Command::CreateUsers { users }).unwrap(),
            Applied::Batch {
                created: 99,
                existed: 1
            }
        );
        for l in s.stores() {
            assert_eq!(l.users, 50);
            assert_eq!(l.segment_users, vec![(0, 25), (1, 25)]);
        }
    }

    #[test]
    fn a_segment_holding_users_cannot_be_unregistered() {
        let mut s = State::new();
        register(&mut s, store("s1", &[0, 1], StoreState::Active));
        apply(
            &mut s,
            Command::CreateUser {
                user: "a@x.test".into(),
                policy: Policy::Explicit {
                    store: "s1".into(),
                    segment: 1,
                },
            },
        )
        .unwrap();
        let r = apply(
            &mut s,
            Command::RegisterStore {
                info: store("s1", &[0], StoreState::Active),
            },
        );
        assert!(matches!(r, Err(MservError::BadRequest { .. })), "{r:?}");
        register(&mut s, store("s1", &[2, 1, 0], StoreState::Active));
        assert_eq!(s.stores()[0].info.segments, vec![0, 1, 2]);
        assert!(matches!(
            apply(
                &mut s,
                Command::RegisterStore {
                    info: store("s1", &[1, 1], StoreState::Active)
                }
            ),
            Err(MservError::BadRequest { .. })
        ));
    }

    fn key(selector: &str) -> DkimKey {
        DkimKey {
            selector: selector.into(),
            algorithm: mserv_client::DkimAlgorithm::Ed25519,
            private_der: vec![7; 48],
            public_b64: "cHVi".into(),
            // Whatever a command says, the index sets the state.
            state: KeyState::Retired,
            created_ms: 1,
        }
    }

    fn states(s: &State, domain: &str) -> Vec<(String, KeyState)> {
        s.domains()
            .find(|d| d.name == domain)
            .unwrap()
            .keys
            .iter()
            .map(|k| (k.selector.clone(), k.state))
            .collect()
    }

    #[test]
    fn domains_are_added_rotated_and_deleted() {
        let mut s = State::new();
        let add = |name: &str, k: Option<DkimKey>| Command::AddDomain {
            name: name.into(),
            key: k,
        };
        apply(&mut s, add("Example.TEST", Some(key("k1")))).unwrap();
        assert_eq!(
            apply(&mut s, add("example.test", None)),
            Err(MservError::DomainExists {
                domain: "example.test".into()
            })
        );
        assert!(matches!(
            apply(&mut s, add("bad domain", None)),
            Err(MservError::BadRequest { .. })
        ));
        assert_eq!(
            states(&s, "example.test"),
            [("k1".into(), KeyState::Active)]
        );

        // A rotation: the new key waits, the old one signs until the new one is activated.
        let rotate = |sel: &str| Command::AddDkimKey {
            domain: "example.test".into(),
            key: key(sel),
        };
        let activate = |sel: &str| Command::ActivateDkimKey {
            domain: "example.test".into(),
            selector: sel.into(),
        };
        apply(&mut s, rotate("k2")).unwrap();
        assert!(apply(&mut s, rotate("k1")).is_err(), "a selector reused");
        assert_eq!(
            states(&s, "example.test"),
            [
                ("k1".into(), KeyState::Active),
                ("k2".into(), KeyState::Pending)
            ]
        );
        assert!(apply(&mut s, activate("k1")).is_err(), "k1 is not pending");
        apply(&mut s, activate("k2")).unwrap();
        assert_eq!(
            states(&s, "example.test"),
            [
                ("k1".into(), KeyState::Retired),
                ("k2".into(), KeyState::Active)
            ]
        );
        apply(&mut s, rotate("k3")).unwrap();
        apply(&mut s, activate("k3")).unwrap();
        assert_eq!(
            states(&s, "example.test"),
            [
                ("k2".into(), KeyState::Retired),
                ("k3".into(), KeyState::Active)
            ]
        );
        let mut no_material = key("k4");
        no_material.private_der.clear();
        assert!(apply(
            &mut s,
            Command::AddDkimKey {
                domain: "example.test".into(),
                key: no_material
            }
        )
        .is_err());
        assert!(matches!(
            apply(
                &mut s,
                Command::AddDkimKey {
                    domain: "other.test".into(),
                    key: key("x")
                }
            ),
            Err(MservError::NoSuchDomain { .. })
        ));

        // A domain with users stays.
        register(&mut s, store("s1", &[0], StoreState::Active));
        create(&mut s, "a@example.test").unwrap();
        let del = Command::DeleteDomain {
            name: "example.test".into(),
        };
        assert!(matches!(
            apply(&mut s, del.clone()),
            Err(MservError::BadRequest { .. })
        ));
        apply(
            &mut s,
            Command::DeleteUser {
                user: "a@example.test".into(),
            },
        )
        .unwrap();
        let mut changes = Vec::new();
        s.apply(&del, &mut changes).unwrap();
        assert_eq!(changes, [Change::DeleteDomain("example.test".into())]);
        assert_eq!(s.domains().count(), 0);
    }
}
