//! The hub's own RocksDB under `DATA_DIR/hub-db`: one record per site
//! (`site/NAME`, JSON), the site's last reported status (`report/NAME`, a
//! full protobuf `Report`) and the hub admin tokens (`admin/ID`, JSON, the
//! secret's SHA-256 only). Every write is synced before it is answered.

use std::collections::BTreeMap;
use std::path::Path;

use gantry_proto::hub::v1::Report;
use prost::Message;
use rocksdb::{IteratorMode, Options, WriteBatch, WriteOptions, DB};
use serde::{Deserialize, Serialize};

use super::desired::SiteDesired;
use crate::cloud::site_view::SiteView;

#[derive(Debug, thiserror::Error)]
pub enum HubStoreError {
    #[error("cannot open the hub database at {path}: {source}")]
    Open {
        path: String,
        source: rocksdb::Error,
    },
    #[error("hub database error: {0}")]
    Db(#[from] rocksdb::Error),
    #[error("corrupted hub record {key}: {message}")]
    Corrupted { key: String, message: String },
}

/// A revision the site refused as a whole, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    pub revision: u64,
    pub error: String,
}

/// A hub admin token as the hub keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminRecord {
    pub secret_sha256: String,
    pub created_ms: u64,
}

/// A replaced site token that stays valid for a grace period, so a site can
/// be moved to its new token without a gap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreviousToken {
    pub sha256: String,
    pub until_ms: u64,
}

/// Everything the hub keeps about one site, except its reported status.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteRecord {
    /// SHA-256 (hex) of the site token's secret; None until one is set.
    #[serde(default)]
    pub token_sha256: Option<String>,
    #[serde(default)]
    pub previous_token: Option<PreviousToken>,
    #[serde(default)]
    pub desired: SiteDesired,
    /// The last revision the site said it committed (Ack or Hello).
    #[serde(default)]
    pub acked_revision: u64,
    #[serde(default)]
    pub last_seen_ms: u64,
    #[serde(default)]
    pub rejected: Option<Rejection>,
    /// The epoch `desired`'s revisions count in (see hub.proto, Welcome);
    /// 0 only in records written before epochs, which get one at load.
    #[serde(default)]
    pub epoch: u64,
}

impl SiteRecord {
    /// A new site's record, in an epoch of its own.
    pub fn new() -> Self {
        Self {
            epoch: fresh_epoch(),
            ..Self::default()
        }
    }
}

/// A random epoch, never 0 (which means "none").
pub fn fresh_epoch() -> u64 {
    rand::random::<u64>().max(1)
}

pub struct HubStore {
    db: DB,
}

fn site_key(site: &str) -> Vec<u8> {
    format!("site/{site}").into_bytes()
}

fn report_key(site: &str) -> Vec<u8> {
    format!("report/{site}").into_bytes()
}

impl HubStore {
    pub fn open(path: &Path) -> Result<Self, HubStoreError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.set_keep_log_file_num(4);
        let db = DB::open(&opts, path).map_err(|source| HubStoreError::Open {
            path: path.display().to_string(),
            source,
        })?;
        Ok(Self { db })
    }

    /// Every site with its record and last reported view.
    pub fn load(&self) -> Result<BTreeMap<String, (SiteRecord, SiteView)>, HubStoreError> {
        let mut sites: BTreeMap<String, (SiteRecord, SiteView)> = BTreeMap::new();
        for item in self.db.iterator(IteratorMode::Start) {
            let (key, value) = item?;
            let key_text = String::from_utf8_lossy(&key).into_owned();
            let corrupted = |message: String| HubStoreError::Corrupted {
                key: key_text.clone(),
                message,
            };
            if let Some(site) = key_text.strip_prefix("site/") {
                let record: SiteRecord =
                    serde_json::from_slice(&value).map_err(|e| corrupted(e.to_string()))?;
                sites.entry(site.to_string()).or_default().0 = record;
            } else if key_text.starts_with("admin/") {
                continue;
            } else if let Some(site) = key_text.strip_prefix("report/") {
                let report =
                    Report::decode(value.as_ref()).map_err(|e| corrupted(e.to_string()))?;
                sites.entry(site.to_string()).or_default().1.apply(&report);
            }
        }
        Ok(sites)
    }

    /// Writes a site's record (and, when given, its view) in one synced batch.
    pub fn save(
        &self,
        site: &str,
        record: &SiteRecord,
        view: Option<&SiteView>,
    ) -> Result<(), HubStoreError> {
        let mut batch = WriteBatch::default();
        let json = serde_json::to_vec(record).map_err(|e| HubStoreError::Corrupted {
            key: site.to_string(),
            message: e.to_string(),
        })?;
        batch.put(site_key(site), json);
        if let Some(view) = view {
            batch.put(report_key(site), view.full_report().encode_to_vec());
        }
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        self.db.write_opt(batch, &opts)?;
        Ok(())
    }

    /// Writes several sites' records in one synced batch (`hub apply
    /// --all-sites`): all of them or none.
    pub fn save_records(&self, records: &[(&str, &SiteRecord)]) -> Result<(), HubStoreError> {
        let mut batch = WriteBatch::default();
        for (site, record) in records {
            let json = serde_json::to_vec(record).map_err(|e| HubStoreError::Corrupted {
                key: site.to_string(),
                message: e.to_string(),
            })?;
            batch.put(site_key(site), json);
        }
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        self.db.write_opt(batch, &opts)?;
        Ok(())
    }

    /// The hub admin tokens by id.
    pub fn admins(&self) -> Result<BTreeMap<String, AdminRecord>, HubStoreError> {
        let mut admins = BTreeMap::new();
        for item in self.db.prefix_iterator(b"admin/") {
            let (key, value) = item?;
            let key_text = String::from_utf8_lossy(&key).into_owned();
            let Some(id) = key_text.strip_prefix("admin/") else {
                break;
            };
            let record: AdminRecord =
                serde_json::from_slice(&value).map_err(|e| HubStoreError::Corrupted {
                    key: key_text.clone(),
                    message: e.to_string(),
                })?;
            admins.insert(id.to_string(), record);
        }
        Ok(admins)
    }

    pub fn save_admin(&self, id: &str, record: &AdminRecord) -> Result<(), HubStoreError> {
        let json = serde_json::to_vec(record).map_err(|e| HubStoreError::Corrupted {
            key: id.to_string(),
            message: e.to_string(),
        })?;
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        self.db
            .put_opt(format!("admin/{id}").as_bytes(), json, &opts)?;
        Ok(())
    }
}
