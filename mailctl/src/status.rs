//! `mailctl status`: every process's `/healthz` report (collected by `operator::status`), as a
//! table or JSON; a non-zero exit when any process is not healthy.

pub use operator::status::{collect, table};

use anyhow::bail;
use serde_json::json;

use crate::admin::Hcu;
use crate::cli::print;

/// Run `mailctl status`.
pub async fn run(hcu: &Hcu, json_out: bool) -> anyhow::Result<()> {
    let rows = collect(&hcu.endpoints).await;
    let all_ok = rows.iter().all(|r| r["state"] == "ok");
    print(json_out, json!(rows), table(&rows));
    if !all_ok {
        bail!("not every process is healthy");
    }
    Ok(())
}
