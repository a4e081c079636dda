//! The fault-localization verdict (metrics' `localize`) that explains an alert, for its
//! `verdict` annotation. Pure: verdicts and labels in, the matching verdict out.

use std::collections::{BTreeMap, BTreeSet};

use pathpulse_metrics::localize::{Scope, Verdict};

use super::engine::{Alert, AlertState};

fn label<'a>(l: &'a BTreeMap<String, String>, k: &str) -> Option<&'a str> {
    l.get(k).map(String::as_str)
}

/// Whether verdict `v` is about the subject these alert labels name.
pub fn explains(v: &Verdict, l: &BTreeMap<String, String>) -> bool {
    let s = Some(v.suspect.as_str());
    let any = |keys: &[&str]| keys.iter().any(|k| label(l, k) == s);
    match v.scope {
        Scope::Lan => any(&["src", "agent"]),
        // The suspect is a site, or an agent without one.
        Scope::SiteUplink => any(&["src_site", "dst_site", "site", "src", "agent"]),
        Scope::Isp => any(&["isp"]),
        Scope::Target => any(&["dst"]),
        // A router: its evidence names the observer and the target.
        Scope::Transit => match (label(l, "src"), label(l, "dst")) {
            (Some(src), Some(dst)) => {
                v.evidence.starts_with(&format!("{src} "))
                    && v.evidence.ends_with(&format!(" {dst}"))
            }
            _ => false,
        },
    }
}

/// The annotation text of the first verdict explaining these labels.
pub fn annotation(verdicts: &[Verdict], l: &BTreeMap<String, String>) -> Option<String> {
    verdicts.iter().find(|v| explains(v, l)).map(|v| {
        format!(
            "{} {} ({} confidence): {}",
            v.scope.as_str(),
            v.suspect,
            v.confidence.as_str(),
            v.evidence
        )
    })
}

/// Which firing alerts to notify again because their verdict became known, given the
/// fingerprints already notified with one (`explained`, kept to the alerts firing now).
/// `firing`: the alerts firing now, annotated. A receiver gets the same alert (labels,
/// `startsAt`) again with its `verdict` annotation: Alertmanager and the receivers
/// written for it take a repeated firing alert as an update.
pub fn newly_explained(firing: &[Alert], explained: &mut BTreeSet<String>) -> Vec<Alert> {
    explained.retain(|fp| firing.iter().any(|a| &a.fingerprint == fp));
    firing
        .iter()
        .filter(|a| a.annotations.contains_key("verdict"))
        .filter(|a| explained.insert(a.fingerprint.clone()))
        .cloned()
        .collect()
}

/// Record what was notified: a firing alert sent with a verdict needs no second
/// notification; a resolved one is gone.
pub fn notified(alerts: &[Alert], explained: &mut BTreeSet<String>) {
    for a in alerts {
        match a.state {
            AlertState::Firing if a.annotations.contains_key("verdict") => {
                explained.insert(a.fingerprint.clone());
            }
            AlertState::Resolved => {
                explained.remove(&a.fingerprint);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pathpulse_metrics::localize::Confidence;

    fn v(scope: Scope, suspect: &str, evidence: &str) -> Verdict {
        Verdict {
            scope,
            suspect: suspect.into(),
            confidence: Confidence::High,
            paths: 2,
            evidence: evidence.into(),
        }
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn verdicts_match_the_alert_they_explain() {
        let path = labels(&[
            ("src", "a"),
            ("dst", "192.0.2.1"),
            ("src_site", "paris"),
            ("isp", "isp-x"),
        ]);
        let cases = [
            (v(Scope::Target, "192.0.2.1", "x"), true),
            (v(Scope::Target, "192.0.2.2", "x"), false),
            (v(Scope::Isp, "isp-x", "x"), true),
            (v(Scope::SiteUplink, "paris", "x"), true),
            (v(Scope::Lan, "a", "x"), true),
            (v(Scope::Lan, "b", "x"), false),
            (
                v(
                    Scope::Transit,
                    "10.0.0.1",
                    "a sees loss from hop 3 (10.0.0.1, transit) to 192.0.2.1",
                ),
                true,
            ),
            (
                v(
                    Scope::Transit,
                    "10.0.0.1",
                    "b sees loss from hop 3 (10.0.0.1, transit) to 192.0.2.1",
                ),
                false,
            ),
        ];
        for (verdict, want) in cases {
            assert_eq!(explains(&verdict, &path), want, "{verdict:?}");
        }
        let text = annotation(
            &[v(Scope::Isp, "isp-x", "2 sites of isp-x lose packets")],
            &path,
        );
        assert_eq!(
            text.as_deref(),
            Some("isp isp-x (high confidence): 2 sites of isp-x lose packets")
        );
        assert_eq!(annotation(&[], &path), None);
    }

    fn alert(fp: &str, state: AlertState, verdict: Option<&str>) -> Alert {
        let mut annotations = BTreeMap::new();
        if let Some(v) = verdict {
            annotations.insert("verdict".to_string(), v.to_string());
        }
        Alert {
            fingerprint: fp.into(),
            state,
            alertname: "PathpulseLoss".into(),
            kind: "loss".into(),
            severity: "warning".into(),
            labels: BTreeMap::new(),
            annotations,
            starts_at_ms: 1,
            ends_at_ms: None,
            value: None,
            threshold: None,
            window_seconds: 3.0,
        }
    }

    /// A firing alert is notified again once, when its verdict first shows; not when it
    /// fired with one already; again after it resolved and fired anew.
    #[test]
    fn a_verdict_that_shows_late_is_notified_once() {
        use AlertState::{Firing, Resolved};
        let mut seen = BTreeSet::new();
        notified(
            &[alert("a", Firing, None), alert("b", Firing, Some("isp x"))],
            &mut seen,
        );
        let now = [alert("a", Firing, None), alert("b", Firing, Some("isp x"))];
        assert!(
            newly_explained(&now, &mut seen).is_empty(),
            "no verdict yet for a"
        );
        let now = [
            alert("a", Firing, Some("target t")),
            alert("b", Firing, Some("isp x")),
        ];
        let again = newly_explained(&now, &mut seen);
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].fingerprint, "a");
        assert!(newly_explained(&now, &mut seen).is_empty(), "once");
        // b resolves and fires again later, verdict known only then.
        notified(&[alert("b", Resolved, None)], &mut seen);
        notified(&[alert("b", Firing, None)], &mut seen);
        let now = [alert("b", Firing, Some("isp x"))];
        let again = newly_explained(&now, &mut seen);
        assert_eq!(
            again
                .iter()
                .map(|a| a.fingerprint.as_str())
                .collect::<Vec<_>>(),
            ["b"]
        );
        assert_eq!(seen, BTreeSet::from(["b".to_string()]), "a no longer fires");
    }
}
