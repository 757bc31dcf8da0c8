//! Steering profiles: named steering that an OpenAI client selects with `"model"` (the only
//! handle a tool such as lm-evaluation-harness has on a loglikelihood request). `/v1/models`
//! lists the served model (unsteered), every profile, and every library vector by name.
//!
//! `--profile NAME=SPEC`, where SPEC is one of
//! - a steering object as in a completion request: `love={"additions": [{"layer": 6, "coeff": 5,
//!   "text": "Love"}, {"layer": 6, "coeff": -5, "text": "Hate"}]}`;
//! - `vector:REF[:SCALE]`: a library vector by name, digest or digest prefix;
//! - `file:PATH[:SCALE]`: a vector file, read at start-up.

use std::path::PathBuf;
use std::sync::Arc;

use serde_json::{json, Value};
use steer_vector::SteeringVector;

use crate::error::ServerError;
use crate::steering::{Steering, SteeringVectorRef};

/// A named steering.
#[derive(Debug, Clone)]
pub struct Profile {
    pub name: String,
    pub steering: Steering,
    /// A vector file's tensors, added with the steering's.
    pub file: Option<ProfileFile>,
}

#[derive(Debug, Clone)]
pub struct ProfileFile {
    pub path: PathBuf,
    pub vector: Arc<SteeringVector>,
    pub scale: f32,
}

impl Profile {
    /// `NAME=SPEC` (see the module's documentation).
    pub fn parse(spec: &str) -> Result<Self, ServerError> {
        let bad = |why: String| ServerError::Config(format!("--profile {spec}: {why}"));
        let (name, what) = spec.split_once('=').ok_or_else(|| bad("expected NAME=SPEC".into()))?;
        let name = name.trim();
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "._-:/".contains(c)) {
            return Err(bad("a name is letters, digits and . _ - : /".into()));
        }
        let (steering, file) = if what.trim_start().starts_with('{') {
            let s: Steering = serde_json::from_str(what).map_err(|e| bad(format!("steering object: {e}")))?;
            (s, None)
        } else if let Some(r) = what.strip_prefix("vector:") {
            let (r, scale) = scaled(r).map_err(bad)?;
            let v = SteeringVectorRef {
                name: r,
                scale: Some(scale as f64),
                first_layer: None,
                last_layer: None,
                force_model: false,
                op: None,
                window: None,
            };
            (Steering { vectors: vec![v], ..Default::default() }, None)
        } else if let Some(p) = what.strip_prefix("file:") {
            let (p, scale) = scaled(p).map_err(bad)?;
            let path = PathBuf::from(p);
            let vector = SteeringVector::load(&path).map_err(|e| bad(format!("{}: {e}", path.display())))?;
            (Steering::default(), Some(ProfileFile { path, vector: Arc::new(vector), scale }))
        } else {
            return Err(bad("SPEC is a steering object ({...}), vector:REF[:SCALE] or file:PATH[:SCALE]".into()));
        };
        if !steering.steers() && file.is_none() {
            return Err(bad("it steers nothing".into()));
        }
        Ok(Self { name: name.to_string(), steering, file })
    }

    /// What `/v1/models` shows of it.
    pub fn describe(&self) -> Value {
        let mut v = serde_json::to_value(&self.steering).unwrap_or_default();
        if let Some(f) = &self.file {
            v["file"] = json!({"path": f.path.display().to_string(), "name": f.vector.meta.name, "scale": f.scale});
        }
        v
    }
}

/// `REF[:SCALE]`: a trailing `:number` is the scale (1 otherwise).
fn scaled(s: &str) -> Result<(String, f32), String> {
    let (r, scale) = match s.rsplit_once(':') {
        Some((r, x)) if !r.is_empty() && x.parse::<f32>().is_ok() => (r, x.parse::<f32>().unwrap_or(1.0)),
        _ => (s, 1.0),
    };
    if r.is_empty() {
        return Err("nothing named".into());
    }
    if !scale.is_finite() {
        return Err(format!("scale {scale}"));
    }
    Ok((r.to_string(), scale))
}

/// Profiles by name: a later one with the same name is refused.
pub fn check_unique(profiles: &[Profile]) -> Result<(), ServerError> {
    for (i, p) in profiles.iter().enumerate() {
        if profiles[..i].iter().any(|q| q.name == p.name) {
            return Err(ServerError::Config(format!("--profile {}: given twice", p.name)));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_bad_ones_say_why() {
        let p = Profile::parse(r#"love={"additions": [{"layer": 1, "coeff": 5, "text": "Love"}], "hook": "block_output"}"#).unwrap();
        assert_eq!((p.name.as_str(), p.steering.additions.len(), p.steering.hook.as_deref()), ("love", 1, Some("block_output")));
        let p = Profile::parse("calm=vector:love-hate:2.5").unwrap();
        assert_eq!((p.steering.vectors[0].name.as_str(), p.steering.vectors[0].scale), ("love-hate", Some(2.5)));
        assert_eq!(Profile::parse("v=vector:abcdef12").unwrap().steering.vectors[0].scale, Some(1.0));
        for (spec, why) in [
            ("novalue", "NAME=SPEC"),
            ("a b=vector:x", "a name"),
            ("x={\"additions\": [], \"colour\": 1}", "unknown field"),
            ("x={}", "steers nothing"),
            ("x=file:/nonexistent/v.safetensors", "/nonexistent"),
            ("x=love", "SPEC is"),
        ] {
            let e = Profile::parse(spec).unwrap_err().to_string();
            assert!(e.contains(why), "{spec}: {e}");
        }
        let twice = [Profile::parse("a=vector:x").unwrap(), Profile::parse("a=vector:y").unwrap()];
        assert!(check_unique(&twice).is_err());
    }
}
