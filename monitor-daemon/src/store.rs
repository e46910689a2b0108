//! The daemon's memory: SQLite (WAL) under the state directory. A scan is a row from the
//! moment it is accepted, so queued scans survive a restart and a scan that was running when
//! the daemon died is found and reported as interrupted, never lost. Live watches are rows
//! too, restarted with the daemon; their findings and kills are kept after they are removed.
//!
//! The state is private: the directory 0700, the database and its journal 0600 (reports
//! name files and hold what loading them did; uploads are other users' models). Each scan,
//! watch and watch finding keeps its owner's uid, by which a caller below `read` sees only
//! their own.

use std::{os::unix::fs::PermissionsExt as _, path::Path, sync::Mutex};

use rusqlite::{Connection, OptionalExtension as _, params};
use serde::{Deserialize, Serialize};

pub use monitor_api::ScanStatus as Status;
use monitor_api::stream::{StreamEvent, StreamItem};

fn parse_status(s: &str) -> Status {
    match s {
        "queued" => Status::Queued,
        "running" => Status::Running,
        "done" => Status::Done,
        _ => Status::Interrupted,
    }
}

pub use monitor_api::scans::{ScanRecord, StoredRequest as ScanRequest};

pub struct Store {
    db: Mutex<Connection>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("a stored record: {0}")]
    Json(#[from] serde_json::Error),
    #[error("creating the state directory: {0}")]
    Io(#[from] std::io::Error),
}

impl StoreError {
    /// Whether the file system under the state directory is out of space.
    pub fn is_disk_full(&self) -> bool {
        match self {
            StoreError::Sql(rusqlite::Error::SqliteFailure(e, _)) => {
                e.code == rusqlite::ErrorCode::DiskFull
            }
            StoreError::Io(e) => e.raw_os_error() == Some(libc::ENOSPC),
            _ => false,
        }
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS scans (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    request TEXT NOT NULL,
    status TEXT NOT NULL,
    verdict TEXT,
    format TEXT,
    exit_code INTEGER,
    created_at INTEGER NOT NULL,
    finished_at INTEGER,
    report TEXT
);
CREATE INDEX IF NOT EXISTS scans_by_verdict ON scans (verdict, seq);
CREATE TABLE IF NOT EXISTS findings (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    scan_id TEXT NOT NULL REFERENCES scans (id) ON DELETE CASCADE,
    rule TEXT NOT NULL,
    severity TEXT NOT NULL,
    finding TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS findings_by_scan ON findings (scan_id);
CREATE TABLE IF NOT EXISTS events (
    scan_id TEXT NOT NULL REFERENCES scans (id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    event TEXT NOT NULL,
    PRIMARY KEY (scan_id, seq)
);
CREATE TABLE IF NOT EXISTS watches (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    spec TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS watch_findings (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    watch_id TEXT NOT NULL,
    rule TEXT NOT NULL,
    severity TEXT NOT NULL,
    finding TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS watch_findings_by_watch ON watch_findings (watch_id, seq);
CREATE TABLE IF NOT EXISTS watch_kills (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    watch_id TEXT NOT NULL,
    kill TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
";

/// A live watch as stored.
#[derive(Debug, Clone, Serialize)]
pub struct WatchRecord {
    pub id: String,
    pub spec: monitor_watch::WatchSpec,
    /// Unix time in milliseconds.
    pub created_at: i64,
    /// The uid of who added it; `None` for the configuration's (discovery) and watches
    /// stored before owners were.
    pub owner: Option<u32>,
}

/// Which findings to list.
#[derive(Debug, Default)]
pub struct FindingsFilter<'a> {
    pub source: Option<Source>,
    pub severity: Option<&'a str>,
    pub rule: Option<&'a str>,
    /// Only those of this uid's scans and watches.
    pub owner: Option<u32>,
}

/// Columns added since the first schema: `(table, column, type)`, added where missing.
const ADDED_COLUMNS: [(&str, &str, &str); 3] = [
    ("scans", "owner_uid", "INTEGER"),
    ("watches", "owner_uid", "INTEGER"),
    ("watch_findings", "owner_uid", "INTEGER"),
];

/// Where findings come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Scan,
    Watch,
}

impl Store {
    /// Opens (or creates) the database at `path`; its directory becomes 0700 and its files
    /// 0600, whatever they were before.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let private = |path: &Path, mode| match std::fs::set_permissions(
            path,
            std::fs::Permissions::from_mode(mode),
        ) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
            private(dir, 0o700)?;
        }
        // SQLite makes its journal and shared-memory files with the database's mode.
        let mut db_file = path.as_os_str().to_owned();
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        for suffix in ["", "-wal", "-shm"] {
            db_file.push(suffix);
            private(Path::new(&db_file), 0o600)?;
            db_file = path.as_os_str().to_owned();
        }
        let db = Connection::open(path)?;
        db.pragma_update(None, "journal_mode", "WAL")?;
        db.pragma_update(None, "synchronous", "NORMAL")?;
        db.pragma_update(None, "foreign_keys", "ON")?;
        db.execute_batch(SCHEMA)?;
        for (table, column, kind) in ADDED_COLUMNS {
            let present = db
                .prepare(&format!(
                    "SELECT 1 FROM pragma_table_info('{table}') WHERE name = ?1"
                ))?
                .exists(params![column])?;
            if !present {
                db.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {kind}"))?;
            }
        }
        Ok(Store { db: Mutex::new(db) })
    }

    fn db(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite consistent (each call is one
        // statement or one transaction), so the poison is not worth dying for.
        self.db.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// After a restart: scans that were running are interrupted; queued ones come back, oldest
    /// first.
    pub fn recover(&self) -> Result<(u64, Vec<(String, ScanRequest)>), StoreError> {
        let db = self.db();
        let interrupted = db.execute(
            "UPDATE scans SET status = 'interrupted', verdict = 'error', exit_code = 2, \
             finished_at = ?1 WHERE status = 'running'",
            params![now_ms()],
        )?;
        let mut stmt =
            db.prepare("SELECT id, request FROM scans WHERE status = 'queued' ORDER BY seq")?;
        let queued = stmt
            .query_map([], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        let queued = queued
            .into_iter()
            .map(|(id, req)| Ok((id, serde_json::from_str(&req)?)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok((interrupted as u64, queued))
    }

    pub fn insert(&self, id: &str, request: &ScanRequest) -> Result<(), StoreError> {
        self.db().execute(
            "INSERT INTO scans (id, request, status, created_at, owner_uid) \
             VALUES (?1, ?2, 'queued', ?3, ?4)",
            params![
                id,
                serde_json::to_string(request)?,
                now_ms(),
                request.owner.as_ref().map(|o| o.uid)
            ],
        )?;
        Ok(())
    }

    pub fn set_running(&self, id: &str) -> Result<(), StoreError> {
        self.db().execute(
            "UPDATE scans SET status = 'running' WHERE id = ?1",
            params![id],
        )?;
        Ok(())
    }

    /// Ends a running scan whose report could not be stored (a full disk): an error, as a
    /// scan running when the daemon died is. Nothing if it is no longer running.
    pub fn abandon(&self, id: &str) -> Result<(), StoreError> {
        self.db().execute(
            "UPDATE scans SET status = 'interrupted', verdict = 'error', exit_code = 2, \
             finished_at = ?2 WHERE id = ?1 AND status = 'running'",
            params![id, now_ms()],
        )?;
        Ok(())
    }

    /// Stores the finished report with its findings and trace in one transaction, so a
    /// crash leaves either the running row or all of it.
    pub fn finish(&self, id: &str, done: &Finished<'_>) -> Result<(), StoreError> {
        let mut db = self.db();
        let tx = db.transaction()?;
        tx.execute(
            "UPDATE scans SET status = 'done', verdict = ?2, format = ?3, exit_code = ?4, \
             finished_at = ?5, report = ?6 WHERE id = ?1",
            params![
                id,
                done.verdict,
                done.format,
                done.exit_code,
                now_ms(),
                serde_json::to_string(done.report)?
            ],
        )?;
        for (rule, severity, finding) in &done.findings {
            tx.execute(
                "INSERT INTO findings (scan_id, rule, severity, finding) VALUES (?1, ?2, ?3, ?4)",
                params![id, rule, severity, serde_json::to_string(finding)?],
            )?;
        }
        for (seq, event) in done.events.iter().enumerate() {
            tx.execute(
                "INSERT INTO events (scan_id, seq, event) VALUES (?1, ?2, ?3)",
                params![id, seq as i64, serde_json::to_string(event)?],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Findings of scans and watches, newest first, optionally of one source, severity or
    /// rule.
    pub fn findings(
        &self,
        filter: &FindingsFilter<'_>,
        limit: u32,
        offset: u32,
    ) -> Result<Vec<StreamItem>, StoreError> {
        let FindingsFilter {
            source,
            severity,
            rule,
            owner,
        } = *filter;
        let db = self.db();
        let (scans, watches) = match source {
            None => (true, true),
            Some(Source::Scan) => (true, false),
            Some(Source::Watch) => (false, true),
        };
        let mut stmt = db.prepare(
            "SELECT src, owner, finding FROM (                SELECT 'scan' AS src, f.scan_id AS owner, f.finding,                       COALESCE(s.finished_at, s.created_at) AS t, f.seq                FROM findings f JOIN scans s ON s.id = f.scan_id                WHERE ?1 AND (?3 IS NULL OR f.severity = ?3) AND (?4 IS NULL OR f.rule = ?4)                  AND (?7 IS NULL OR s.owner_uid = ?7)              UNION ALL                SELECT 'watch', w.watch_id, w.finding, w.created_at, w.seq FROM watch_findings w                WHERE ?2 AND (?3 IS NULL OR w.severity = ?3) AND (?4 IS NULL OR w.rule = ?4)                  AND (?7 IS NULL OR w.owner_uid = ?7)              ) ORDER BY t DESC, seq DESC LIMIT ?5 OFFSET ?6",
        )?;
        let rows = stmt
            .query_map(
                params![scans, watches, severity, rule, limit, offset, owner],
                |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, String>(2)?,
                    ))
                },
            )?
            .collect::<Result<Vec<_>, _>>()?;
        rows.into_iter()
            .map(|(src, owner, finding)| {
                let finding = StreamEvent::Finding(serde_json::from_str(&finding)?);
                let item = match src.as_str() {
                    "scan" => StreamItem::scan(owner, finding),
                    _ => StreamItem::watch(owner, finding),
                };
                Ok(item)
            })
            .collect()
    }

    /// Stores a new watch of `owner`'s.
    pub fn insert_watch(
        &self,
        id: &str,
        spec: &monitor_watch::WatchSpec,
        owner: Option<u32>,
    ) -> Result<(), StoreError> {
        self.db().execute(
            "INSERT INTO watches (id, spec, created_at, owner_uid) VALUES (?1, ?2, ?3, ?4)",
            params![id, serde_json::to_string(spec)?, now_ms(), owner],
        )?;
        Ok(())
    }

    /// Replaces a stored watch's spec (its policy changed, or what it learned); `false` when
    /// there is no such watch.
    pub fn update_watch(
        &self,
        id: &str,
        spec: &monitor_watch::WatchSpec,
    ) -> Result<bool, StoreError> {
        Ok(self.db().execute(
            "UPDATE watches SET spec = ?2 WHERE id = ?1",
            params![id, serde_json::to_string(spec)?],
        )? > 0)
    }

    /// Removes a watch; its findings and kills stay. Returns whether it existed.
    pub fn remove_watch(&self, id: &str) -> Result<bool, StoreError> {
        Ok(self
            .db()
            .execute("DELETE FROM watches WHERE id = ?1", params![id])?
            > 0)
    }

    /// Every watch, oldest first.
    pub fn watches(&self) -> Result<Vec<WatchRecord>, StoreError> {
        let db = self.db();
        let mut stmt =
            db.prepare("SELECT id, spec, created_at, owner_uid FROM watches ORDER BY seq")?;
        let rows = stmt
            .query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, i64>(2)?,
                    row.get::<_, Option<u32>>(3)?,
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        rows.into_iter()
            .map(|(id, spec, created_at, owner)| {
                Ok(WatchRecord {
                    id,
                    spec: serde_json::from_str(&spec)?,
                    created_at,
                    owner,
                })
            })
            .collect()
    }

    /// Keeps a finding of watch `watch_id`, whose owner is `owner`.
    pub fn add_watch_finding(
        &self,
        watch_id: &str,
        owner: Option<u32>,
        rule: &str,
        severity: &str,
        finding: &serde_json::Value,
    ) -> Result<(), StoreError> {
        self.db().execute(
            "INSERT INTO watch_findings (watch_id, rule, severity, finding, created_at, \
             owner_uid) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                watch_id,
                rule,
                severity,
                serde_json::to_string(finding)?,
                now_ms(),
                owner
            ],
        )?;
        Ok(())
    }

    /// Keeps a kill made by a watch's policy.
    pub fn add_watch_kill(
        &self,
        watch_id: &str,
        kill: &serde_json::Value,
    ) -> Result<(), StoreError> {
        self.db().execute(
            "INSERT INTO watch_kills (watch_id, kill, created_at) VALUES (?1, ?2, ?3)",
            params![watch_id, serde_json::to_string(kill)?, now_ms()],
        )?;
        Ok(())
    }

    /// A watch's kills, newest first.
    pub fn watch_kills(
        &self,
        watch_id: &str,
        limit: u32,
    ) -> Result<Vec<serde_json::Value>, StoreError> {
        let db = self.db();
        let mut stmt = db.prepare(
            "SELECT kill FROM watch_kills WHERE watch_id = ?1 ORDER BY seq DESC LIMIT ?2",
        )?;
        let rows = stmt
            .query_map(params![watch_id, limit], |row| row.get::<_, String>(0))?
            .collect::<Result<Vec<_>, _>>()?;
        rows.iter().map(|k| Ok(serde_json::from_str(k)?)).collect()
    }

    /// A scan's stored trace, in order.
    pub fn events(
        &self,
        id: &str,
        limit: u32,
        offset: u32,
    ) -> Result<Vec<serde_json::Value>, StoreError> {
        let db = self.db();
        let mut stmt = db.prepare(
            "SELECT event FROM events WHERE scan_id = ?1 ORDER BY seq LIMIT ?2 OFFSET ?3",
        )?;
        let rows = stmt
            .query_map(params![id, limit, offset], |row| row.get::<_, String>(0))?
            .collect::<Result<Vec<_>, _>>()?;
        rows.iter().map(|e| Ok(serde_json::from_str(e)?)).collect()
    }

    /// The owner's uid of scan `id` (without reading its report): `None` if there is no
    /// such scan, `Some(None)` if it has no owner.
    pub fn owner_of(&self, id: &str) -> Result<Option<Option<u32>>, StoreError> {
        Ok(self
            .db()
            .query_row(
                "SELECT owner_uid FROM scans WHERE id = ?1",
                params![id],
                |row| row.get::<_, Option<u32>>(0),
            )
            .optional()?)
    }

    pub fn get(&self, id: &str) -> Result<Option<ScanRecord>, StoreError> {
        let db = self.db();
        let row = db
            .query_row(
                "SELECT id, request, status, verdict, format, exit_code, created_at, finished_at, \
                 report FROM scans WHERE id = ?1",
                params![id],
                raw_record,
            )
            .optional()?;
        row.map(|r| r.into_record(true)).transpose()
    }

    /// Newest first, without reports; only `owner`'s if given.
    pub fn list(
        &self,
        verdict: Option<&str>,
        owner: Option<u32>,
        limit: u32,
        offset: u32,
    ) -> Result<Vec<ScanRecord>, StoreError> {
        let db = self.db();
        let mut stmt = db.prepare(
            "SELECT id, request, status, verdict, format, exit_code, created_at, finished_at, \
             NULL FROM scans WHERE (?1 IS NULL OR verdict = ?1) AND (?4 IS NULL OR owner_uid = ?4) \
             ORDER BY seq DESC LIMIT ?2 OFFSET ?3",
        )?;
        let rows = stmt
            .query_map(params![verdict, limit, offset, owner], raw_record)?
            .collect::<Result<Vec<_>, _>>()?;
        rows.into_iter().map(|r| r.into_record(false)).collect()
    }

    /// Deletes finished scans, and watches' findings and kills, older than `days` days.
    pub fn expire(&self, days: u64) -> Result<usize, StoreError> {
        if days == 0 {
            return Ok(0);
        }
        let cutoff = now_ms() - (days as i64) * 86_400_000;
        let db = self.db();
        let mut removed = db.execute(
            "DELETE FROM scans WHERE status IN ('done', 'interrupted') AND created_at < ?1",
            params![cutoff],
        )?;
        removed += db.execute(
            "DELETE FROM watch_findings WHERE created_at < ?1",
            params![cutoff],
        )?;
        removed += db.execute(
            "DELETE FROM watch_kills WHERE created_at < ?1",
            params![cutoff],
        )?;
        Ok(removed)
    }
}

/// What a finished scan leaves in the store.
pub struct Finished<'a> {
    pub verdict: &'a str,
    pub format: Option<&'a str>,
    pub exit_code: u8,
    /// The report in its renderings (`json`, `text`, `sarif`).
    pub report: &'a serde_json::Value,
    /// `(rule, severity, finding)`.
    pub findings: Vec<(String, String, serde_json::Value)>,
    /// The trace, bounded by the caller.
    pub events: Vec<serde_json::Value>,
}

struct RawRecord {
    id: String,
    request: String,
    status: String,
    verdict: Option<String>,
    format: Option<String>,
    exit_code: Option<u8>,
    created_at: i64,
    finished_at: Option<i64>,
    report: Option<String>,
}

fn raw_record(row: &rusqlite::Row<'_>) -> rusqlite::Result<RawRecord> {
    Ok(RawRecord {
        id: row.get(0)?,
        request: row.get(1)?,
        status: row.get(2)?,
        verdict: row.get(3)?,
        format: row.get(4)?,
        exit_code: row.get(5)?,
        created_at: row.get(6)?,
        finished_at: row.get(7)?,
        report: row.get(8)?,
    })
}

impl RawRecord {
    fn into_record(self, with_report: bool) -> Result<ScanRecord, StoreError> {
        Ok(ScanRecord {
            id: self.id,
            status: parse_status(&self.status),
            request: serde_json::from_str(&self.request)?,
            verdict: self.verdict,
            format: self.format,
            exit_code: self.exit_code,
            created_at: self.created_at,
            finished_at: self.finished_at,
            report: match (with_report, self.report) {
                (true, Some(text)) => Some(serde_json::from_str(&text)?),
                _ => None,
            },
            phase: None,
        })
    }
}

/// Bytes an unprivileged writer may still use on the file system of `dir`.
pub fn free_bytes(dir: &Path) -> Result<u64, StoreError> {
    let stat = nix::sys::statvfs::statvfs(dir).map_err(std::io::Error::from)?;
    Ok(stat.blocks_available().saturating_mul(stat.fragment_size()))
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(path: &str) -> ScanRequest {
        ScanRequest {
            asked: monitor_api::ScanRequest {
                exercise: false,
                audit: false,
                ..monitor_api::ScanRequest::new(path)
            },
            uploaded: false,
            owner: None,
        }
    }

    #[test]
    fn a_restart_requeues_the_queued_and_interrupts_the_running() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("state/monitor.db");
        {
            let store = Store::open(&db).unwrap();
            store.insert("a", &request("/a")).unwrap();
            store.insert("b", &request("/b")).unwrap();
            store.insert("c", &request("/c")).unwrap();
            store.set_running("a").unwrap();
            let finding = serde_json::json!({"rule": "exec.program"});
            let done = Finished {
                verdict: "clean",
                format: Some("pickle"),
                exit_code: 0,
                report: &serde_json::json!({"verdict": "clean"}),
                findings: vec![("exec.program".into(), "high".into(), finding)],
                events: vec![serde_json::json!({"syscall": "execve"})],
            };
            store.finish("c", &done).unwrap();
        }
        let store = Store::open(&db).unwrap();
        let (interrupted, queued) = store.recover().unwrap();
        assert_eq!(interrupted, 1);
        assert_eq!(queued.len(), 1);
        assert_eq!(queued[0].0, "b");
        let a = store.get("a").unwrap().unwrap();
        assert_eq!(a.status, Status::Interrupted);
        assert_eq!(a.exit_code, Some(2));
        let c = store.get("c").unwrap().unwrap();
        assert_eq!(c.report.unwrap()["verdict"], "clean");
        assert_eq!(store.list(Some("clean"), None, 10, 0).unwrap().len(), 1);
        assert_eq!(
            store.list(None, None, 10, 0).unwrap()[0].id,
            "c",
            "newest first"
        );
        assert!(store.get("nope").unwrap().is_none());
        let high = FindingsFilter {
            severity: Some("high"),
            ..FindingsFilter::default()
        };
        let findings = store.findings(&high, 10, 0).unwrap();
        assert_eq!(
            findings[0],
            StreamItem::scan("c", findings[0].event.clone())
        );
        let low = FindingsFilter {
            severity: Some("low"),
            ..FindingsFilter::default()
        };
        assert!(store.findings(&low, 10, 0).unwrap().is_empty());
        assert_eq!(store.events("c", 10, 0).unwrap()[0]["syscall"], "execve");
    }

    #[test]
    fn watches_persist_and_their_findings_outlive_them() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("monitor.db");
        let spec = monitor_watch::WatchSpec {
            name: Some("server".into()),
            selector: monitor_watch::Selector::Pid {
                pid: 1234,
                started: 99,
            },
            policy: Default::default(),
            load_window_ms: 5,
            load_grace_ms: 5,
            learning: None,
        };
        {
            let store = Store::open(&db).unwrap();
            store.insert_watch("w1", &spec, Some(1000)).unwrap();
            store
                .add_watch_finding(
                    "w1",
                    Some(1000),
                    "exec.program",
                    "high",
                    &serde_json::json!({"rule": "exec.program"}),
                )
                .unwrap();
            store
                .add_watch_kill("w1", &serde_json::json!({"pid": 5}))
                .unwrap();
        }
        let store = Store::open(&db).unwrap();
        let watches = store.watches().unwrap();
        assert_eq!(watches.len(), 1);
        assert_eq!(watches[0].owner, Some(1000));
        assert_eq!(watches[0].spec, spec);
        let mut learned = spec.clone();
        learned.policy.kill_at = Some(monitor_rules::Severity::High);
        assert!(store.update_watch("w1", &learned).unwrap());
        assert_eq!(store.watches().unwrap()[0].spec, learned);
        assert!(!store.update_watch("nope", &learned).unwrap());
        assert!(store.remove_watch("w1").unwrap());
        assert!(!store.remove_watch("w1").unwrap());
        let of = |source, owner| FindingsFilter {
            source: Some(source),
            owner,
            ..FindingsFilter::default()
        };
        let findings = store.findings(&of(Source::Watch, None), 10, 0).unwrap();
        assert_eq!(
            findings[0],
            StreamItem::watch("w1", findings[0].event.clone())
        );
        assert_eq!(
            store
                .findings(&of(Source::Watch, Some(1000)), 10, 0)
                .unwrap()
                .len(),
            1
        );
        assert!(
            store
                .findings(&of(Source::Watch, Some(1001)), 10, 0)
                .unwrap()
                .is_empty(),
            "another user's"
        );
        assert!(
            store
                .findings(&of(Source::Scan, None), 10, 0)
                .unwrap()
                .is_empty()
        );
        assert_eq!(store.watch_kills("w1", 10).unwrap()[0]["pid"], 5);
    }
}
