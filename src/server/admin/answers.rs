//! The admin port's JSON answers: a build's summary and the errors of a
//! build or rollback, the generations listing, rollback, and publishing
//! what went live.

use std::path::Path;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};

use super::Admin;
use crate::builder::pipeline::{self, BuildSummary};
use crate::error::Error;
use crate::generation::local;
use crate::server::http::{json, json_error};
use crate::store::publish;

impl Admin {
    /// `GET /generations`: the data directory's generations, newest last,
    /// from their headers; the live one was verified when it went live.
    pub(super) fn generations(&self) -> Response<Full<Bytes>> {
        let entries = match local::list(&self.config.build.data_dir) {
            Ok(entries) => entries,
            Err(e) => return json_error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        };
        let live = self.live.current().as_ref().map(|t| t.sequence());
        let rows: Vec<_> = entries
            .iter()
            .map(|e| {
                let is_live = Some(e.sequence) == live;
                local::describe(e, if is_live { "ok" } else { "not checked" }, is_live)
            })
            .collect();
        json(StatusCode::OK, &rows)
    }

    /// `POST /rollback[?to=N]`: `promo rollback [--to N]` on the data
    /// directory, then the generation that went live (published too, with
    /// `--publish`: the store rolls back to the same generation).
    pub(super) async fn rollback(&self, to: Option<&str>) -> Response<Full<Bytes>> {
        let to = match to.map(str::parse::<u64>) {
            None => None,
            Some(Ok(n)) => Some(n),
            Some(Err(_)) => {
                return json_error(
                    StatusCode::BAD_REQUEST,
                    "?to= takes a generation's sequence (see GET /generations)",
                )
            }
        };
        let admin = self.clone();
        let result = tokio::task::spawn_blocking(move || {
            let (restored, entry) = pipeline::rollback(&admin.config.build.data_dir, to)?;
            admin.go_live(&entry)?;
            Ok::<_, Error>((restored, entry))
        })
        .await
        .expect("the rollback does not panic");
        match result {
            Ok((restored, entry)) => {
                let mut body = serde_json::json!({
                    "generation": entry.sequence,
                    "restored": restored,
                });
                self.publish(&entry.path, &mut body).await
            }
            Err(e) => build_error(e),
        }
    }

    /// With `--publish`, publishes `path` to the store and adds what was
    /// published to `body`; answers 200 with `body`, or 502 if the store
    /// failed (the generation stays live here).
    pub(super) async fn publish(
        &self,
        path: &Path,
        body: &mut serde_json::Value,
    ) -> Response<Full<Bytes>> {
        let Some(url) = self.config.publish.clone() else {
            return json(StatusCode::OK, body);
        };
        let (path, keep) = (path.to_path_buf(), self.config.build.keep);
        let max_delta = self.config.build.max_delta;
        let published =
            tokio::task::spawn_blocking(move || publish::publish(&url, &path, keep, max_delta))
                .await
                .expect("publishing does not panic");
        match published {
            Ok(p) => {
                body["published"] = serde_json::json!({
                    "sequence": p.sequence,
                    "object": p.object,
                    "bytes": p.bytes,
                    "delta": p.delta,
                    "seconds": p.seconds,
                });
                json(StatusCode::OK, body)
            }
            Err(e) => {
                body["error"] =
                    format!("{e}; the generation is live on this server but was not published")
                        .into();
                json(StatusCode::BAD_GATEWAY, body)
            }
        }
    }
}

pub(super) fn summary_json(s: &BuildSummary) -> serde_json::Value {
    serde_json::to_value(s).expect("a build summary serializes")
}

/// The answer to a build or rollback that failed: 409 while the data
/// directory is busy or there is nothing to roll back to, 422 for a feed
/// the guards refused (with its first invalid rows) or a corrupt compressed
/// one, 500 otherwise.
pub(super) fn build_error(e: Error) -> Response<Full<Bytes>> {
    let (status, first_invalid) = match &e {
        Error::Locked { .. } | Error::NothingToRollBack { .. } => (StatusCode::CONFLICT, None),
        Error::TooManyInvalid { first_invalid, .. } | Error::NoValidRows { first_invalid, .. } => {
            (StatusCode::UNPROCESSABLE_ENTITY, Some(first_invalid))
        }
        Error::Io { cause, .. } if cause.kind() == std::io::ErrorKind::InvalidData => {
            (StatusCode::UNPROCESSABLE_ENTITY, None)
        }
        _ if e.is_refusal() => {
            let guard = e.refused_by().unwrap_or_default();
            metrics::counter!(crate::metrics::UPLOADS_REFUSED, "guard" => guard).increment(1);
            (StatusCode::UNPROCESSABLE_ENTITY, None)
        }
        _ => (StatusCode::INTERNAL_SERVER_ERROR, None),
    };
    if status == StatusCode::INTERNAL_SERVER_ERROR {
        tracing::error!("admin: {e}");
    }
    let mut message = e.to_string();
    if status == StatusCode::UNPROCESSABLE_ENTITY {
        message = for_upload(message, first_invalid.is_some_and(|r| !r.is_empty()));
    }
    let mut body = serde_json::json!({ "error": message });
    if let Some(rows) = first_invalid {
        body["first_invalid"] = serde_json::json!(rows);
    }
    json(status, &body)
}

/// A refused feed's message, worded for an upload's client. The library
/// words it for a terminal: `promo build` prints the invalid lines above
/// it, and forces with `--force`. An upload's answer lists them in its
/// `first_invalid` field (`listed`: it lists some), and forces with
/// `?force=true`.
fn for_upload(message: String, listed: bool) -> String {
    let message = message
        .replace(
            "see the lines reported above",
            "see first_invalid in this answer",
        )
        .replace(
            "pass --force to publish it anyway",
            "upload it again with ?force=true to publish it anyway",
        );
    if listed && !message.contains("first_invalid") {
        format!("{message} (the first invalid lines are in first_invalid)")
    } else {
        message
    }
}

pub(super) fn too_large(max: u64) -> Response<Full<Bytes>> {
    json_error(
        StatusCode::PAYLOAD_TOO_LARGE,
        &format!("the upload is larger than --max-upload ({max} bytes); nothing was published"),
    )
}
