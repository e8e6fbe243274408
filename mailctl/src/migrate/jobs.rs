//! The kept state of each move: `DATA/migrations/<user>.json`, written (to a temporary file,
//! synced, renamed) before every step, so a rerun knows where every move stands.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;

use super::Job;

fn jobs_dir(data: &Path) -> PathBuf {
    data.join("migrations")
}

/// Where the job of `user` is kept.
pub fn job_path(data: &Path, user: &str) -> PathBuf {
    jobs_dir(data).join(format!("{user}.json"))
}

/// Keep `job`, replacing its earlier state.
pub fn save(data: &Path, job: &Job) -> anyhow::Result<()> {
    let dir = jobs_dir(data);
    std::fs::create_dir_all(&dir)?;
    let path = job_path(data, &job.user);
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&serde_json::to_vec_pretty(job)?)?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    Ok(())
}

/// The kept job of `user`, if there is one.
pub fn load(data: &Path, user: &str) -> anyhow::Result<Option<Job>> {
    match std::fs::read(job_path(data, user)) {
        Ok(b) => Ok(Some(serde_json::from_slice(&b).with_context(|| {
            format!("reading the migration state of {user}")
        })?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Every unfinished move kept under `data`.
pub fn pending_jobs(data: &Path) -> anyhow::Result<Vec<Job>> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(jobs_dir(data)) else {
        return Ok(out);
    };
    for e in rd {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "json") {
            let job: Job = serde_json::from_slice(&std::fs::read(&p)?)
                .with_context(|| format!("reading {}", p.display()))?;
            out.push(job);
        }
    }
    out.sort_by(|a, b| a.user.cmp(&b.user));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::migrate::Step;

    fn job(user: &str, step: Step) -> Job {
        Job {
            user: user.into(),
            from_store: "s1".into(),
            from_segment: 0,
            epoch: 4,
            to_store: "s2".into(),
            to_segment: 1,
            step,
            cursor: Some(("body".into(), vec![1, 2])),
            purge_after_ms: 0,
        }
    }

    #[test]
    fn jobs_are_kept_replaced_and_listed_by_user() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path();
        assert!(pending_jobs(data).unwrap().is_empty(), "no migrations/ yet");
        assert!(load(data, "b@x.test").unwrap().is_none());
        save(data, &job("b@x.test", Step::Copying)).unwrap();
        save(data, &job("a@x.test", Step::Copying)).unwrap();
        save(data, &job("b@x.test", Step::Committed)).unwrap();
        let kept = load(data, "b@x.test").unwrap().unwrap();
        assert_eq!((kept.step, kept.epoch), (Step::Committed, 4));
        assert_eq!(kept.cursor, Some(("body".into(), vec![1, 2])));
        let users: Vec<String> = pending_jobs(data)
            .unwrap()
            .into_iter()
            .map(|j| j.user)
            .collect();
        assert_eq!(users, ["a@x.test", "b@x.test"]);
        // A state file cut short by a crash before its rename is not a job.
        std::fs::write(job_path(data, "c@x.test").with_extension("tmp"), b"{").unwrap();
        assert_eq!(pending_jobs(data).unwrap().len(), 2);
        // A damaged one is an error naming the user.
        std::fs::write(job_path(data, "a@x.test"), b"{").unwrap();
        let err = load(data, "a@x.test").unwrap_err().to_string();
        assert!(err.contains("a@x.test"), "{err}");
    }
}
