//! `remedyctl incident review ID` and `remedyctl report`: the post-incident
//! review document and the incident metrics, both computed by the
//! coordinator from its store.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use remedy_proto::v1 as pb;
use remedy_shared::Timestamp;

use crate::client::Ctx;
use crate::output;

/// `incident review ID [--out FILE]`: the Markdown review, to stdout or
/// a file.
pub async fn review(ctx: &mut Ctx, id: &str, out: Option<&Path>) -> anyhow::Result<()> {
    let request = pb::GetIncidentRequest { id: id.to_owned() };
    let review = ctx.client.review_incident(request).await.map_err(|s| ctx.explain(s))?.into_inner();
    match out {
        Some(path) => {
            std::fs::write(path, &review.markdown)
                .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
            eprintln!("review of {} written to {}", review.id, path.display());
        }
        None => out!("{}", review.markdown),
    }
    Ok(())
}

/// `report --since 30d [--until TIME]`.
pub async fn report(ctx: &mut Ctx, since: &str, until: Option<&str>, include_drills: bool) -> anyhow::Result<()> {
    let now = now_millis();
    let until_ms = match until {
        Some(text) => instant(text, now)?,
        None => 0,
    };
    let since_ms = instant(since, if until_ms == 0 { now } else { until_ms })?;
    let request = pb::GetReportRequest { since_ms, until_ms, include_drills };
    let answer = ctx.client.get_report(request).await.map_err(|s| ctx.explain(s))?.into_inner();
    let mut report: serde_json::Value = serde_json::from_str(&answer.json)
        .map_err(|e| anyhow::anyhow!("the coordinator sent a report that is not JSON: {e}"))?;
    if let Some(map) = report.as_object_mut() {
        map.insert("since".into(), Timestamp::from_millis(answer.since_ms).to_string().into());
        map.insert("until".into(), Timestamp::from_millis(answer.until_ms).to_string().into());
    }
    output::print_one(ctx.fmt, &report, report_text)
}

/// `30d` (that long before `relative_to`) or an RFC 3339 instant.
fn instant(text: &str, relative_to: i64) -> anyhow::Result<i64> {
    if let Some(t) = Timestamp::parse_rfc3339(text) {
        return Ok(t.as_millis());
    }
    let d = remedy_shared::config::parse_duration(text)
        .map_err(|e| anyhow::anyhow!("`{text}` is neither a duration like 30d nor an RFC 3339 time: {e}"))?;
    Ok(relative_to.saturating_sub(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)))
}

/// The wall clock, read in one place in remedyctl: the start of a report's
/// default period, and tables' ages.
#[allow(clippy::disallowed_methods, reason = "remedyctl reads the wall clock here only")]
pub fn now_millis() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The figures a person reads first, then each runbook's.
fn report_text(report: &serde_json::Value) -> String {
    let get = |k: &str| report.get(k).cloned().unwrap_or(serde_json::Value::Null);
    let seconds = |k: &str| match get(k).as_f64() {
        Some(s) => remedy_shared::config::format_duration(Duration::from_secs_f64(s.max(0.0).round())),
        None => "-".to_owned(),
    };
    let plain = |k: &str| match get(k) {
        serde_json::Value::Null => "-".to_owned(),
        serde_json::Value::String(s) => s,
        v => v.to_string(),
    };
    let mut out = format!(
        "period        {} .. {}\nincidents     {} (P0 {}, P1 {}, P2 {}, P3 {}, security {}, open {})\n\
         MTTR          {} (median {})\nMTTA          {}\navailability  {} % (downtime {})\n",
        plain("since"),
        plain("until"),
        plain("total_incidents"),
        plain("p0_incidents"),
        plain("p1_incidents"),
        plain("p2_incidents"),
        plain("p3_incidents"),
        plain("security_incidents"),
        plain("open_incidents"),
        seconds("mttr_seconds"),
        seconds("mttr_median_seconds"),
        seconds("mtta_seconds"),
        plain("availability_percent"),
        seconds("downtime_seconds"),
    );
    if let Some(runbooks) = report.get("runbooks").and_then(|r| r.as_array()).filter(|r| !r.is_empty()) {
        out.push_str("\nRUNBOOK     INCIDENTS  RESOLVED  WITHIN TARGET  HIT RATE  MTTR\n");
        for r in runbooks {
            let field =
                |k: &str| r.get(k).map_or("-".to_owned(), |v| if v.is_null() { "-".into() } else { v.to_string() });
            let rate = r
                .get("target_hit_rate")
                .and_then(|v| v.as_f64())
                .map_or("-".to_owned(), |v| format!("{:.0} %", v * 100.0));
            let mttr = r.get("mttr_seconds").and_then(|v| v.as_f64()).map_or("-".to_owned(), |s| {
                remedy_shared::config::format_duration(Duration::from_secs_f64(s.max(0.0).round()))
            });
            out.push_str(&format!(
                "{:<11} {:<10} {:<9} {:<14} {:<9} {}\n",
                r.get("runbook").and_then(|v| v.as_str()).unwrap_or("-"),
                field("incidents"),
                field("resolved"),
                field("within_target"),
                rate,
                mttr
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_is_a_duration_back_from_until_or_an_instant() {
        let day = 24 * 3600 * 1000;
        assert_eq!(instant("30d", 40 * day).unwrap(), 10 * day);
        assert_eq!(instant("1970-01-02T00:00:00Z", 0).unwrap(), day);
        assert!(instant("last month", 0).is_err());
    }

    #[test]
    fn the_table_shows_absent_figures_as_dashes_not_zeros() {
        let text = report_text(&serde_json::json!({"total_incidents": 2, "mttr_seconds": null, "mtta_seconds": 90.0}));
        assert!(text.contains("MTTR          - "), "{text}");
        assert!(text.contains("MTTA          1m 30s"), "{text}");
    }
}
