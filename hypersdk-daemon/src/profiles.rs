//! Profiles: named, reusable export options (a job without its `vm`),
//! kept in the store. A job (submitted, or made by a schedule) that names
//! a `profile` takes every option it does not set itself from it; the job
//! is stored resolved, so changing a profile later changes no queued job.
//!
//! ```yaml
//! # PUT /api/v1/profiles/nightly
//! provider: vc1
//! format: ova
//! compress: zstd:3
//! verify: true
//! bwlimit: "Mon-08:00,20M 18:00,off"
//! ```

use serde_json::{Map, Value};

use crate::args;
use crate::model::JobSpec;
use crate::store::{now, Store, StoreError, StoreResult};

impl Store {
    /// Creates or replaces profile `name`.
    pub async fn put_profile(&self, name: String, body: Value) -> StoreResult<()> {
        self.write(move |c| {
            c.exec(
                "save profile",
                "INSERT INTO profiles (name, body, updated_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (name) DO UPDATE SET body = excluded.body, updated_at = excluded.updated_at",
                args![name, body.to_string(), now()],
            )
            .map(drop)
        })
        .await
    }

    /// Profile `name`.
    pub async fn profile(&self, name: String) -> StoreResult<Option<Value>> {
        self.read(move |c| {
            let text = c
                .row(
                    "read profile",
                    "SELECT body FROM profiles WHERE name = ?1",
                    args![name],
                )?
                .map(|r| r.text(0))
                .transpose()?;
            text.map(|t| serde_json::from_str(&t).map_err(|e| StoreError(format!("profile: {e}"))))
                .transpose()
        })
        .await
    }

    /// Every profile: name, options, last change.
    pub async fn profiles(&self) -> StoreResult<Vec<Value>> {
        self.read(|c| {
            c.rows(
                "list profiles",
                "SELECT name, body, updated_at FROM profiles ORDER BY name",
                &[],
            )?
            .iter()
            .map(|r| {
                Ok(serde_json::json!({
                    "name": r.text(0)?,
                    "options": serde_json::from_str::<Value>(&r.text(1)?).unwrap_or(Value::Null),
                    "updated_at": r.text(2)?,
                }))
            })
            .collect()
        })
        .await
    }

    /// Deletes profile `name`; false if there was none.
    pub async fn delete_profile(&self, name: String) -> StoreResult<bool> {
        self.write(move |c| {
            c.exec(
                "delete profile",
                "DELETE FROM profiles WHERE name = ?1",
                args![name],
            )
            .map(|n| n == 1)
        })
        .await
    }
}

/// Checks a profile's options: an object of job fields other than `vm` and
/// `profile`, each valid (provider, if given, among `providers`).
pub fn check_profile(body: &Value, providers: &[String]) -> Result<(), String> {
    let Value::Object(map) = body else {
        return Err("a profile is an object of job options".into());
    };
    for k in ["vm", "profile"] {
        if map.contains_key(k) {
            return Err(format!("{k}: a profile cannot set it"));
        }
    }
    let mut probe = map.clone();
    probe.insert("vm".into(), Value::String("-".into()));
    if !probe.contains_key("provider") {
        let any = providers.first().cloned().unwrap_or_else(|| "-".into());
        probe.insert("provider".into(), Value::String(any));
    }
    let spec: JobSpec = serde_json::from_value(Value::Object(probe)).map_err(|e| e.to_string())?;
    spec.validate(providers)
}

/// A job (as submitted, a JSON object) with its profile's options filled
/// in, as a [`JobSpec`]; the message names the field or the profile.
pub async fn resolve(store: &Store, job: Value, providers: &[String]) -> Result<JobSpec, String> {
    let Value::Object(fields) = job else {
        return Err("expected a job (an object)".into());
    };
    let merged: Map<String, Value> = match fields.get("profile") {
        None => fields,
        Some(Value::String(name)) => {
            let profile = store
                .profile(name.clone())
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("profile: no profile '{name}'"))?;
            let mut base = match profile {
                Value::Object(m) => m,
                _ => Map::new(),
            };
            base.extend(fields);
            base
        }
        Some(_) => return Err("profile: must be a profile name".into()),
    };
    let spec: JobSpec = serde_json::from_value(Value::Object(merged)).map_err(|e| e.to_string())?;
    spec.validate(providers)?;
    Ok(spec)
}
