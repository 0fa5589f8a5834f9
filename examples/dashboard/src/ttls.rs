//! Each cached route's lifetime, from configuration: `--route-ttl metrics=10m,chat_search=off`
//! (`LARDER_ROUTE_TTL`) changes a route's TTL or switches its caching off without a code
//! change (seed 002: "temporarily set the TTL to 0").
//!
//! A name is a rule's name, and covers everything that caches the same data: the route, the
//! part of `/api/dashboard` that holds it, the assistant's typed values. `off` sends the
//! route's reads to the database (`Cache-Status: larder; fwd=bypass; detail=bypass-if`) and
//! reads the dashboard part from the database every time; writes still invalidate.

use std::{collections::BTreeMap, time::Duration};

/// The names a TTL can be set for, with their default lifetimes (the HTTP contract's table).
pub const DEFAULTS: [(&str, Duration); 11] = [
    ("user_me", Duration::from_secs(5 * 60)),
    ("connectors_status", Duration::from_secs(5 * 60)),
    ("metrics", Duration::from_secs(15 * 60)),
    ("chat_stats", Duration::from_secs(10 * 60)),
    ("chat_search", Duration::from_secs(5 * 60)),
    ("chat_sessions", Duration::from_secs(5 * 60)),
    ("announcements", Duration::from_secs(60)),
    ("assistant", Duration::from_secs(30 * 60)),
    ("schema", Duration::from_secs(60 * 60)),
    ("thread_context", Duration::from_secs(2 * 60 * 60)),
    ("ai_reply", Duration::from_secs(24 * 60 * 60)),
];

/// The lifetime of every cached route: `None` is off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteTtls {
    ttls: BTreeMap<&'static str, Option<Duration>>,
}

impl Default for RouteTtls {
    fn default() -> Self {
        RouteTtls {
            ttls: DEFAULTS.iter().map(|(n, d)| (*n, Some(*d))).collect(),
        }
    }
}

impl RouteTtls {
    /// The defaults with `settings` applied: each `NAME=DURATION` or `NAME=off`; a duration
    /// is a number with `s`, `m`, `h` or `d` (seconds without one). An unknown name, a bad
    /// duration or `0` is an error that names what is accepted.
    pub fn parse<S: AsRef<str>>(settings: &[S]) -> anyhow::Result<RouteTtls> {
        let mut ttls = RouteTtls::default();
        for setting in settings {
            let setting = setting.as_ref().trim();
            if setting.is_empty() {
                continue;
            }
            let Some((name, value)) = setting.split_once('=') else {
                anyhow::bail!("--route-ttl {setting:?}: expected NAME=DURATION or NAME=off");
            };
            let (name, value) = (name.trim(), value.trim());
            let Some(slot) = ttls.ttls.get_mut(name) else {
                let names: Vec<&str> = DEFAULTS.iter().map(|(n, _)| *n).collect();
                anyhow::bail!(
                    "--route-ttl: unknown route {name:?}; the routes are {}",
                    names.join(", ")
                );
            };
            *slot = match value {
                "off" => None,
                _ => Some(parse_duration(value).ok_or_else(|| {
                    anyhow::anyhow!(
                        "--route-ttl {name}={value}: expected a duration (90s, 10m, 2h, 1d) or off"
                    )
                })?),
            };
        }
        Ok(ttls)
    }

    /// The lifetime of `name`, `None` when its caching is off.
    ///
    /// # Panics
    ///
    /// If `name` is not one of [`DEFAULTS`] (a mistake in this crate).
    pub fn get(&self, name: &str) -> Option<Duration> {
        *self
            .ttls
            .get(name)
            .unwrap_or_else(|| panic!("no TTL is configured for {name:?}"))
    }

    /// Every route and its lifetime in seconds (`null`: off), for `/_cache/stats`.
    pub fn to_json(&self) -> serde_json::Value {
        self.ttls
            .iter()
            .map(|(n, d)| ((*n).to_owned(), serde_json::json!(d.map(|d| d.as_secs()))))
            .collect::<serde_json::Map<_, _>>()
            .into()
    }
}

/// `90`, `90s`, `10m`, `2h`, `1d`; never zero.
fn parse_duration(value: &str) -> Option<Duration> {
    let (number, unit) = match value.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => value.split_at(at),
        None => (value, "s"),
    };
    let n: u64 = number.parse().ok().filter(|n| *n > 0)?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return None,
    };
    Some(Duration::from_secs(n.checked_mul(seconds)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_change_a_ttl_or_switch_a_route_off() {
        let ttls =
            RouteTtls::parse(&["metrics=10m", " chat_search = off", "ai_reply=2d", ""]).unwrap();
        assert_eq!(ttls.get("metrics"), Some(Duration::from_secs(600)));
        assert_eq!(ttls.get("chat_search"), None);
        assert_eq!(ttls.get("ai_reply"), Some(Duration::from_secs(2 * 86_400)));
        assert_eq!(ttls.get("user_me"), Some(Duration::from_secs(300)));
        assert_eq!(
            RouteTtls::parse(&["user_me=90"]).unwrap().get("user_me"),
            Some(Duration::from_secs(90))
        );
        for bad in [
            "metrics",
            "metric=5m",
            "metrics=0",
            "metrics=5w",
            "metrics=m",
        ] {
            let e = RouteTtls::parse(&[bad]).unwrap_err().to_string();
            assert!(e.contains("--route-ttl"), "{bad}: {e}");
        }
    }
}
