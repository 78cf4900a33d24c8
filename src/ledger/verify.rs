//! `ledger verify`: recompute the chain, check signatures, sources, triggers and the signed head.

use rusqlite::Connection;
use serde::Serialize;

use super::key::UserKey;
use super::writer::checkpoint_message;
use super::{EntryFields, FileLock, GENESIS, LedgerPaths, TRIGGERS, sha256_hex};
use crate::error::Result;

#[derive(Debug, Serialize)]
pub struct Report {
    pub ok: bool,
    pub entries: i64,
    pub runs: i64,
    /// Entries signed with another user's key (chain-checked, signature not checkable here).
    pub foreign_signatures: i64,
    pub checkpoint_seq: Option<i64>,
    /// The first bad sequence number, when the chain is broken.
    pub first_bad_seq: Option<i64>,
    pub problems: Vec<String>,
}

#[derive(Serialize)]
struct Checkpoint {
    ledger_id: String,
    seq: i64,
    hash: String,
    key_id: String,
    mac: String,
}

fn read_checkpoint(paths: &LedgerPaths) -> std::result::Result<Checkpoint, String> {
    let path = paths.head();
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("head checkpoint {} unreadable: {e}", path.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("head checkpoint is not JSON: {e}"))?;
    let s = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
    Ok(Checkpoint {
        ledger_id: s("ledger_id").ok_or("head checkpoint lacks ledger_id")?,
        seq: v
            .get("seq")
            .and_then(|x| x.as_i64())
            .ok_or("head checkpoint lacks seq")?,
        hash: s("hash").ok_or("head checkpoint lacks hash")?,
        key_id: s("key_id").ok_or("head checkpoint lacks key_id")?,
        mac: s("mac").ok_or("head checkpoint lacks mac")?,
    })
}

pub fn verify(conn: &Connection, paths: &LedgerPaths, key: &UserKey) -> Result<Report> {
    let mut report = Report {
        ok: true,
        entries: 0,
        runs: 0,
        foreign_signatures: 0,
        checkpoint_seq: None,
        first_bad_seq: None,
        problems: Vec::new(),
    };
    let bad = |report: &mut Report, seq: Option<i64>, msg: String| {
        report.ok = false;
        if let (Some(s), None) = (seq, report.first_bad_seq) {
            report.first_bad_seq = Some(s);
        }
        report.problems.push(msg);
    };

    // One consistent view: the head is read under the writers' lock while our read snapshot
    // starts, so a run committing meanwhile cannot make the head look ahead of the database.
    let snapshot = conn.unchecked_transaction()?;
    let conn: &Connection = &snapshot;
    let checkpoint = {
        let _lock = FileLock::acquire(&paths.lock()).ok();
        conn.query_row("SELECT max(seq) FROM entries", [], |_| Ok(()))?;
        read_checkpoint(paths)
    };

    let integrity: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
    if integrity != "ok" {
        bad(
            &mut report,
            None,
            format!("SQLite integrity check failed: {integrity}"),
        );
    }
    for trig in TRIGGERS {
        let n: i64 = conn.query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND name = ?1",
            [trig],
            |r| r.get(0),
        )?;
        if n == 0 {
            bad(
                &mut report,
                None,
                format!("append-only trigger {trig} was removed"),
            );
        }
    }

    let mut stmt = conn.prepare(
        "SELECT seq, run_id, kind, task, idx, op, args, result, error, started_at, duration_us, \
         prev_hash, hash, key_id, mac FROM entries ORDER BY seq",
    )?;
    let mut rows = stmt.query([])?;
    let mut expected_seq = 1i64;
    let mut prev = GENESIS.to_string();
    let mut first_foreign: Option<i64> = None;
    let mut hashes_at: Vec<(i64, String)> = Vec::new();
    // Recorded source -> the first entry that refers to it (run.start or module).
    let mut source_refs: std::collections::BTreeMap<String, i64> = Default::default();
    while let Some(r) = rows.next()? {
        let seq: i64 = r.get(0)?;
        let run_id: String = r.get(1)?;
        let kind: String = r.get(2)?;
        let task: String = r.get(3)?;
        let op: String = r.get(5)?;
        let args: String = r.get(6)?;
        let result: Option<String> = r.get(7)?;
        let error: Option<String> = r.get(8)?;
        let prev_hash: String = r.get(11)?;
        let hash: String = r.get(12)?;
        let key_id: String = r.get(13)?;
        let mac: String = r.get(14)?;
        report.entries += 1;
        if kind == "run.start" {
            report.runs += 1;
        }
        if seq != expected_seq {
            bad(
                &mut report,
                Some(expected_seq),
                format!("entries {expected_seq}..{} are missing (deleted)", seq - 1),
            );
        }
        if prev_hash != prev {
            bad(
                &mut report,
                Some(seq),
                format!("entry {seq} does not link to the entry before it"),
            );
        }
        let fields = EntryFields {
            seq,
            run_id: &run_id,
            kind: &kind,
            task: &task,
            idx: r.get(4)?,
            op: &op,
            args: &args,
            result: result.as_deref(),
            error: error.as_deref(),
            started_at: r.get(9)?,
            duration_us: r.get(10)?,
        };
        let computed = fields.hash(&prev_hash);
        if computed != hash {
            bad(
                &mut report,
                Some(seq),
                format!("entry {seq} was modified (hash mismatch)"),
            );
        }
        if key_id == key.id {
            if key.sign("stagecraft-entry-v1", hash.as_bytes()) != mac {
                bad(
                    &mut report,
                    Some(seq),
                    format!("entry {seq} has an invalid signature (re-hashed?)"),
                );
            }
        } else {
            report.foreign_signatures += 1;
            first_foreign.get_or_insert(seq);
        }
        if kind == "run.start" || kind == "module" {
            let field = if kind == "module" {
                "sha256"
            } else {
                "script_sha256"
            };
            if let Some(sha) = serde_json::from_str::<serde_json::Value>(&args)
                .ok()
                .and_then(|v| v.get(field)?.as_str().map(str::to_string))
            {
                source_refs.entry(sha).or_insert(seq);
            }
        }
        hashes_at.push((seq, hash.clone()));
        prev = hash;
        expected_seq = seq + 1;
    }
    drop(rows);
    drop(stmt);
    let last_seq = expected_seq - 1;

    let mut src = conn.prepare("SELECT sha256, content FROM sources")?;
    let mut srows = src.query([])?;
    while let Some(r) = srows.next()? {
        let sha: String = r.get(0)?;
        let content: Vec<u8> = r.get(1)?;
        let referenced_by = source_refs.remove(&sha);
        if sha256_hex(&content) != sha {
            bad(
                &mut report,
                referenced_by,
                format!("recorded source {sha} was modified"),
            );
        }
    }
    drop(srows);
    drop(src);
    if let Some((sha, seq)) = source_refs.into_iter().min_by_key(|(_, seq)| *seq) {
        bad(
            &mut report,
            Some(seq),
            format!("recorded source {sha} (used by entry {seq}) is missing"),
        );
    }

    match checkpoint {
        Err(e) => bad(&mut report, Some(1), e),
        Ok(cp) => {
            report.checkpoint_seq = Some(cp.seq);
            let ledger_id = super::ledger_id(conn).unwrap_or_default();
            let msg = checkpoint_message(&cp.ledger_id, cp.seq, &cp.hash);
            if cp.key_id != key.id {
                bad(
                    &mut report,
                    None,
                    format!(
                        "head checkpoint is signed by another key ({}); cannot vouch for it",
                        cp.key_id
                    ),
                );
            } else if key.sign("stagecraft-head-v1", msg.as_bytes()) != cp.mac {
                bad(
                    &mut report,
                    None,
                    "head checkpoint signature is invalid (forged checkpoint)".into(),
                );
            } else if cp.ledger_id != ledger_id {
                // Nothing in this database is vouched for by the head: suspect it from entry 1.
                bad(
                    &mut report,
                    Some(1),
                    "head checkpoint belongs to another ledger (database replaced)".into(),
                );
            } else if cp.seq > last_seq {
                bad(
                    &mut report,
                    Some(last_seq + 1),
                    format!(
                        "ledger truncated: the signed head is entry {} but the database ends at {last_seq}",
                        cp.seq
                    ),
                );
            } else if cp.seq > 0 {
                let at = hashes_at
                    .binary_search_by_key(&cp.seq, |(s, _)| *s)
                    .ok()
                    .map(|i| hashes_at[i].1.clone());
                if at.as_deref() != Some(cp.hash.as_str()) {
                    // The whole chain was recomputed: the first entry not signed by us is suspect.
                    let suspect = first_foreign.filter(|s| *s <= cp.seq).unwrap_or(cp.seq);
                    bad(
                        &mut report,
                        Some(suspect),
                        format!(
                            "chain rewritten: entry {} no longer matches the signed head",
                            cp.seq
                        ),
                    );
                }
            }
        }
    }
    Ok(report)
}
