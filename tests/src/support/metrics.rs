//! A process's `/metrics`, read from its admin port (the text is read back by
//! `runtime::metrics`, the one parser of it).

use std::net::SocketAddr;

use anyhow::bail;

pub use runtime::metrics::{percentile, sample};

/// The `/metrics` text of the process whose admin port is `admin`; anything but 200 is an error.
pub async fn scrape(admin: SocketAddr) -> anyhow::Result<String> {
    let (status, body) = crate::http_get(admin, "/metrics").await?;
    if status != 200 {
        bail!("/metrics of {admin} answered {status}");
    }
    Ok(body)
}

/// The value of one sample (`name{labels}` as printed) on `admin`'s `/metrics`, 0 when absent.
pub async fn metric(admin: SocketAddr, name: &str) -> anyhow::Result<f64> {
    Ok(sample(&scrape(admin).await?, name).unwrap_or(0.0))
}
