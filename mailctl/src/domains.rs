//! `mailctl domain` and `mailctl dkim`: the hosted domains in the index, and their DKIM keys.
//!
//! A rotation is two steps so that no mail is signed with a key receivers cannot find: `dkim
//! rotate` makes a pending key and prints its record; once DNS serves it, `dkim activate`
//! checks that it does and makes it the signing key. The old key is kept (retired) until the
//! next activation, so its record can stay published for mail signed just before the switch.

use std::time::Duration;

use anyhow::{bail, Context as _};
use mserv_client::{DkimAlgorithm, DkimKey, Domain, MservError};
use serde_json::json;

use crate::admin::Hcu;
use crate::cli::{print, DkimCmd, DomainCmd};

/// Run one `mailctl domain` command.
pub async fn run(hcu: &Hcu, cmd: DomainCmd, json_out: bool) -> anyhow::Result<()> {
    match cmd {
        DomainCmd::Add {
            domain,
            algorithm,
            selector,
        } => {
            let domain = mserv_client::normalize_domain(&domain)?;
            let key = new_key(&algorithm, selector.as_deref())?;
            hcu.mserv.add_domain(&domain, Some(key.clone())).await?;
            // As the index keeps it: the first key signs at once.
            let key = find(hcu, &domain)
                .await?
                .keys
                .into_iter()
                .find(|k| k.selector == key.selector)
                .unwrap_or(key);
            print(
                json_out,
                json!({"domain": domain, "added": true, "dkim": key_json(&domain, &key)}),
                format!(
                    "OK {domain} is hosted: mail is accepted for it from now on.\n\
                     Publish its DKIM key (its mail is signed with it already):\n{}",
                    record_line(&domain, &key)
                ),
            );
        }
        DomainCmd::List => {
            let domains = hcu.mserv.list_domains().await?;
            let rows: Vec<_> = domains.iter().map(domain_json).collect();
            let mut human = format!(
                "{:<28} {:<18} {:<8} {:<8}",
                "DOMAIN", "SELECTOR", "ALG", "STATE"
            );
            for d in &domains {
                if d.keys.is_empty() {
                    human.push_str(&format!("\n{:<28} {:<18}", d.name, "(no DKIM key)"));
                }
                for k in &d.keys {
                    human.push_str(&format!(
                        "\n{:<28} {:<18} {:<8} {:<8}",
                        d.name,
                        k.selector,
                        k.algorithm.as_str(),
                        k.state.as_str()
                    ));
                }
            }
            print(json_out, json!(rows), human);
        }
        DomainCmd::Del { domain } => {
            hcu.mserv.delete_domain(&domain).await?;
            print(
                json_out,
                json!({"domain": domain, "deleted": true}),
                format!("OK {domain} is no longer hosted: its mail is refused from now on"),
            );
        }
    }
    Ok(())
}

/// Run one `mailctl dkim` command.
pub async fn dkim(hcu: &Hcu, cmd: DkimCmd, json_out: bool) -> anyhow::Result<()> {
    match cmd {
        DkimCmd::Rotate {
            domain,
            algorithm,
            selector,
        } => {
            let domain = mserv_client::normalize_domain(&domain)?;
            let key = new_key(&algorithm, selector.as_deref())?;
            hcu.mserv.add_dkim_key(&domain, key.clone()).await?;
            print(
                json_out,
                json!({"domain": domain, "pending": key_json(&domain, &key)}),
                format!(
                    "OK a new key for {domain}; the current one signs until it is activated.\n\
                     Publish:\n{}\nthen run: mailctl dkim activate {domain}",
                    record_line(&domain, &key)
                ),
            );
        }
        DkimCmd::Activate {
            domain,
            force,
            resolver,
        } => {
            let d = find(hcu, &domain).await?;
            let Some(key) = d.pending_key() else {
                bail!(
                    "{} has no pending key: run `mailctl dkim rotate {}` first",
                    d.name,
                    d.name
                );
            };
            if !force {
                let servers = if resolver.is_empty() {
                    crate::plan::system_resolvers()
                } else {
                    resolver
                };
                check_published(&d.name, key, servers).await?;
            }
            hcu.mserv.activate_dkim_key(&d.name, &key.selector).await?;
            print(
                json_out,
                json!({"domain": d.name, "active": key.selector}),
                format!(
                    "OK {} is signed with {} from now on (the old key's record may go in a few days)",
                    d.name, key.selector
                ),
            );
        }
    }
    Ok(())
}

fn new_key(algorithm: &str, selector: Option<&str>) -> anyhow::Result<DkimKey> {
    let algorithm: DkimAlgorithm = algorithm.parse().map_err(|e: String| anyhow::anyhow!(e))?;
    let selector = match selector {
        Some(s) => s.to_string(),
        None => smtp_out::dkim::selector_for_now(),
    };
    mserv_client::domain::check_selector(&selector)?;
    smtp_out::dkim::generate(algorithm, &selector)
        .map_err(|e| anyhow::anyhow!("making the key: {e}"))
}

async fn find(hcu: &Hcu, domain: &str) -> anyhow::Result<Domain> {
    let name = mserv_client::normalize_domain(domain)?;
    hcu.mserv
        .list_domains()
        .await?
        .into_iter()
        .find(|d| d.name == name)
        .ok_or_else(|| MservError::NoSuchDomain { domain: name }.into())
}

/// Whether DNS serves `key`'s record: its `p=` as published.
async fn check_published(
    domain: &str,
    key: &DkimKey,
    servers: Vec<std::net::SocketAddr>,
) -> anyhow::Result<()> {
    let resolver = smtp_out::mx::Resolver::new(&smtp_out::mx::MxConfig {
        name_servers: servers,
        timeout: Duration::from_secs(3),
        ..Default::default()
    });
    let name = key.dns_name(domain);
    let records = resolver
        .txt(&name)
        .await
        .map_err(|e| anyhow::anyhow!(e))
        .context("checking the record (--force activates without checking)")?;
    let published = records.iter().any(|r| {
        r.split(';')
            .filter_map(|tag| tag.split_once('='))
            .any(|(t, v)| {
                t.trim() == "p" && v.split_whitespace().collect::<String>() == key.public_b64
            })
    });
    if !published {
        bail!(
            "DNS does not serve the new key at {name} yet ({} TXT records there); publish\n{}\n\
             and try again (--force activates without checking)",
            records.len(),
            record_line(domain, key)
        );
    }
    Ok(())
}

fn record_line(domain: &str, key: &DkimKey) -> String {
    format!("{}. IN TXT \"{}\"", key.dns_name(domain), key.txt_record())
}

fn key_json(domain: &str, k: &DkimKey) -> serde_json::Value {
    json!({"selector": k.selector, "algorithm": k.algorithm.as_str(), "state": k.state.as_str(),
        "name": k.dns_name(domain), "txt": k.txt_record()})
}

fn domain_json(d: &Domain) -> serde_json::Value {
    json!({"domain": d.name, "keys": d.keys.iter().map(|k| key_json(&d.name, k)).collect::<Vec<_>>()})
}
