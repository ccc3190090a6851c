//! Buildbot's own account of what it was asked to do, read from its REST API, so a test
//! counts builds from the CI's side rather than from baton's.

use std::time::Duration;

use serde_json::Value;

/// The test Buildbot (`scripts/buildbot.sh`), named by `BATON_BUILDBOT_URL`.
pub struct BuildbotApi {
    /// `http://host:port`, without a trailing slash.
    pub url: String,
    agent: ureq::Agent,
}

impl BuildbotApi {
    /// The Buildbot named by `BATON_BUILDBOT_URL`; panics (the test fails, never skips) when
    /// the variable is unset or Buildbot does not answer.
    pub fn from_env() -> Self {
        let url = std::env::var("BATON_BUILDBOT_URL").unwrap_or_else(|_| {
            panic!(
                "BATON_BUILDBOT_URL is not set: run `scripts/buildbot.sh` and export BATON_BUILDBOT_URL=http://127.0.0.1:8010 (scripts/test.sh does both)"
            )
        });
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into();
        let api = Self {
            url: url.trim_end_matches('/').to_owned(),
            agent,
        };
        if let Err(e) = api.try_get("builders") {
            panic!(
                "Buildbot at {} does not answer ({e}): run `scripts/buildbot.sh`",
                api.url
            );
        }
        api
    }

    /// `GET /api/v2/<path>`, read to its end: Buildbot 4.3's web server can wedge when a
    /// client hangs up halfway through an answer.
    pub fn try_get(&self, path: &str) -> Result<Value, String> {
        let url = format!("{}/api/v2/{path}", self.url);
        let mut answer = self.agent.get(&url).call().map_err(|e| e.to_string())?;
        let status = answer.status().as_u16();
        let body = answer
            .body_mut()
            .with_config()
            .limit(256 << 20)
            .read_to_string()
            .map_err(|e| e.to_string())?;
        if status != 200 {
            return Err(format!("{status}: {body}"));
        }
        serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))
    }

    /// [`BuildbotApi::try_get`], failing the test on an error.
    pub fn get(&self, path: &str) -> Value {
        self.try_get(path)
            .unwrap_or_else(|e| panic!("GET {}/api/v2/{path}: {e}", self.url))
    }

    /// The id of builder `name`.
    pub fn builder_id(&self, name: &str) -> i64 {
        self.get(&format!("builders?name={name}"))["builders"][0]["builderid"]
            .as_i64()
            .unwrap_or_else(|| panic!("Buildbot has no builder {name}"))
    }

    /// Every build of builder `builder` whose property `tag` is `tag`, oldest first, with
    /// the properties named in `properties` (and `tag`).
    pub fn builds_tagged(&self, builder: &str, tag: &str, properties: &[&str]) -> Vec<Value> {
        let id = self.builder_id(builder);
        let wanted: String = ["tag"]
            .iter()
            .chain(properties)
            .map(|p| format!("&property={p}"))
            .collect();
        let mut found = Vec::new();
        let mut after = 0;
        loop {
            let page = self.get(&format!(
                "builds?builderid={id}&buildid__gt={after}&order=buildid&limit=500{wanted}"
            ));
            let builds = page["builds"].as_array().cloned().unwrap_or_default();
            let Some(last) = builds.last().and_then(|b| b["buildid"].as_i64()) else {
                return found;
            };
            after = last;
            found.extend(
                builds
                    .into_iter()
                    .filter(|b| b["properties"]["tag"][0] == tag),
            );
        }
    }

    /// The buildsets whose reason contains `text` (baton puts `[baton <run>/<stage>/<n>]`
    /// there).
    pub fn buildsets_with_reason(&self, text: &str) -> Vec<Value> {
        let escaped = text.replace(' ', "%20");
        self.get(&format!("buildsets?reason__contains={escaped}"))["buildsets"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}
