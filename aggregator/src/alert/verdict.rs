//! The fault-localization verdict (metrics' `localize`) that explains an alert, for its
//! `verdict` annotation. Pure: verdicts and labels in, the matching verdict out.

use std::collections::BTreeMap;

use pathpulse_metrics::localize::{Scope, Verdict};

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
}
