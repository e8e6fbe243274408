//! `mailctl store`: register a running store, drain one, list them with their user counts.

use mserv_client::StoreState;
use serde_json::json;

use crate::admin::Hcu;
use crate::cli::{print, StoreCmd};

/// Run one `mailctl store` command.
pub async fn run(hcu: &Hcu, cmd: StoreCmd, json_out: bool) -> anyhow::Result<()> {
    match cmd {
        StoreCmd::Add {
            name,
            xfs,
            segments,
            cluster,
        } => {
            let cluster = cluster.unwrap_or_else(|| hcu.endpoints.cluster.clone());
            hcu.store_add(&name, &xfs, segments, &cluster).await?;
            print(
                json_out,
                json!({"store": name, "added": true}),
                format!("OK store {name} at {xfs} takes users"),
            );
        }
        StoreCmd::Drain { name } => {
            hcu.store_state(&name, StoreState::Draining).await?;
            print(
                json_out,
                json!({"store": name, "state": "draining"}),
                format!("OK store {name} is draining: no new users are placed on it"),
            );
        }
        StoreCmd::List => {
            let stores = hcu.store_list().await?;
            let rows: Vec<_> = stores
                .iter()
                .map(|s| {
                    json!({"name": s.info.name, "xfs": s.info.xfs_addr, "cluster": s.info.cluster,
                        "state": s.info.state.as_str(), "users": s.users,
                        "segments": s.segment_users})
                })
                .collect();
            let mut human = format!(
                "{:<12} {:<22} {:<8} {:<9} {:>8}",
                "STORE", "XFS", "CLUSTER", "STATE", "USERS"
            );
            for s in &stores {
                human.push_str(&format!(
                    "\n{:<12} {:<22} {:<8} {:<9} {:>8}",
                    s.info.name,
                    s.info.xfs_addr,
                    s.info.cluster,
                    s.info.state.as_str(),
                    s.users
                ));
            }
            print(json_out, json!(rows), human);
        }
    }
    Ok(())
}
