//! The console page, rendered on the server from a [`Snapshot`]: every table and the topology
//! picture (inline SVG) are in the HTML, so the page shows data without JavaScript. The
//! template, style and script are embedded in the binary (`page.html`, `console.js`).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::Snapshot;
use super::api::{Link, LinkState, Reachability, Topology};

const TEMPLATE: &str = include_str!("page.html");
const SCRIPT: &str = include_str!("console.js");

/// `s` with HTML's special characters escaped, for text and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The whole page.
pub fn render(s: &Snapshot) -> String {
    let here = format!("{}/{}", s.topology.org, s.topology.site);
    TEMPLATE
        .replace("{{here}}", &escape(&here))
        .replace("{{topology}}", &topology_svg(&s.topology))
        .replace("{{links}}", &links_table(&s.topology.links))
        .replace("{{members}}", &members(s))
        .replace("{{nodes}}", &nodes(s))
        .replace("{{audit}}", &audit(s))
        .replace("{{digest}}", &escape(&s.topology.digest))
        .replace("{{script}}", SCRIPT)
}

/// The CSS class and legend word of a link state.
pub fn state_word(state: LinkState) -> &'static str {
    match state {
        LinkState::Up => "up",
        LinkState::Idle => "idle",
        LinkState::Down => "down",
        LinkState::None => "none",
        LinkState::Unknown => "unknown",
    }
}

/// The label on a link: transport and RTT when up.
pub fn link_label(l: &Link) -> String {
    match (&l.transport, l.rtt_ms) {
        (Some(t), Some(rtt)) => format!("{t} {rtt:.1} ms"),
        (Some(t), None) => t.clone(),
        (None, _) => state_word(l.state).to_owned(),
    }
}

const SITE_W: f64 = 150.0;
const SITE_H: f64 = 34.0;
const ORG_PAD: f64 = 10.0;
const ORG_HEAD: f64 = 24.0;

/// The topology as inline SVG: each org a box around its sites' boxes, orgs on a circle, one
/// line per pair of sites coloured by state and labelled with transport and RTT.
fn topology_svg(t: &Topology) -> String {
    let n = t.orgs.len().max(1);
    let radius = if n == 1 { 0.0 } else { 90.0 + 40.0 * n as f64 };
    let tallest = t
        .orgs
        .iter()
        .map(|o| o.sites.len().max(1))
        .max()
        .unwrap_or(1) as f64;
    let org_w = SITE_W + 2.0 * ORG_PAD;
    let org_h = |sites: usize| ORG_HEAD + sites.max(1) as f64 * (SITE_H + ORG_PAD) + ORG_PAD / 2.0;
    let width = 2.0 * radius + org_w + 40.0;
    let height = 2.0 * radius + org_h(tallest as usize) + 40.0;
    let (cx, cy) = (width / 2.0, height / 2.0);
    let mut centres: BTreeMap<&str, (f64, f64)> = BTreeMap::new();
    let mut boxes = String::new();
    for (i, org) in t.orgs.iter().enumerate() {
        let angle = std::f64::consts::TAU * i as f64 / n as f64 - std::f64::consts::FRAC_PI_2;
        let h = org_h(org.sites.len());
        let (ox, oy) = (
            cx + radius * angle.cos() - org_w / 2.0,
            cy + radius * angle.sin() - h / 2.0,
        );
        let _ = write!(
            boxes,
            r#"<g class="org {status}" data-org="{name}"><rect x="{ox:.0}" y="{oy:.0}" width="{org_w:.0}" height="{h:.0}" rx="8"/><text class="org-name" x="{tx:.0}" y="{ty:.0}">{name}{revoked}</text>"#,
            status = escape(&org.status),
            name = escape(&org.org),
            tx = ox + ORG_PAD,
            ty = oy + 17.0,
            revoked = if org.status == "revoked" {
                " (revoked)"
            } else {
                ""
            },
        );
        for (j, site) in org.sites.iter().enumerate() {
            let (sx, sy) = (ox + ORG_PAD, oy + ORG_HEAD + j as f64 * (SITE_H + ORG_PAD));
            centres.insert(&site.id, (sx + SITE_W / 2.0, sy + SITE_H / 2.0));
            let mut class = String::from("site");
            if site.outbound_only {
                class.push_str(" outbound");
            }
            if site.here {
                class.push_str(" here");
            }
            let _ = write!(
                boxes,
                r#"<g class="{class}" data-site="{id}"><rect x="{sx:.0}" y="{sy:.0}" width="{SITE_W:.0}" height="{SITE_H:.0}" rx="4"/><text x="{tx:.0}" y="{ty:.0}">{name}{mark}</text></g>"#,
                id = escape(&site.id),
                tx = sx + 8.0,
                ty = sy + 21.0,
                name = escape(&site.site),
                mark = match (site.here, site.outbound_only) {
                    (true, true) => " · here · outbound only",
                    (true, false) => " · here",
                    (false, true) => " · outbound only",
                    (false, false) => "",
                },
            );
        }
        boxes.push_str("</g>");
    }
    let mut lines = String::new();
    for l in &t.links {
        let (Some(&(x1, y1)), Some(&(x2, y2))) =
            (centres.get(l.a.as_str()), centres.get(l.b.as_str()))
        else {
            continue;
        };
        let (mx, my) = ((x1 + x2) / 2.0, (y1 + y2) / 2.0);
        let _ = write!(
            lines,
            r#"<g class="link {state}" data-a="{a}" data-b="{b}"><title>{a} – {b}: {state}</title><line x1="{x1:.0}" y1="{y1:.0}" x2="{x2:.0}" y2="{y2:.0}"/><text x="{mx:.0}" y="{my:.0}">{label}</text></g>"#,
            state = state_word(l.state),
            a = escape(&l.a),
            b = escape(&l.b),
            label = escape(&link_label(l)),
        );
    }
    format!(
        r#"<svg id="topology" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width:.0} {height:.0}" width="{width:.0}" height="{height:.0}" role="img" aria-label="consortium topology">{lines}{boxes}</svg>"#
    )
}

fn or_dash(v: Option<&str>) -> String {
    v.map_or_else(|| "–".to_owned(), escape)
}

fn links_table(links: &[Link]) -> String {
    let mut rows = String::new();
    for l in links {
        let _ = write!(
            rows,
            r#"<tr class="link-row {state}"><td>{a}</td><td>{b}</td><td><span class="state {state}">{state}</span></td><td>{transport}</td><td>{rtt}</td><td>{sync}</td></tr>"#,
            a = escape(&l.a),
            b = escape(&l.b),
            state = state_word(l.state),
            transport = or_dash(l.transport.as_deref()),
            rtt = l
                .rtt_ms
                .map_or_else(|| "–".to_owned(), |r| format!("{r:.1} ms")),
            sync = or_dash(l.sync.as_deref()),
        );
    }
    if rows.is_empty() {
        rows.push_str(r#"<tr><td colspan="6">no links: one site only</td></tr>"#);
    }
    rows
}

fn members(s: &Snapshot) -> String {
    let m = &s.members;
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<p>Consensus: <b>{}</b></p><table id="members-table"><thead><tr><th>org</th><th>admitted</th><th>gateways</th></tr></thead><tbody>"#,
        escape(&m.consensus)
    );
    for member in &m.members {
        let gateways: Vec<String> = member
            .gateways
            .iter()
            .map(|g| {
                format!(
                    "{}{} ({})",
                    escape(&g.site),
                    if g.outbound_only {
                        ", outbound only"
                    } else {
                        ""
                    },
                    escape(&g.advertise.join(", "))
                )
            })
            .collect();
        let _ = write!(
            out,
            r#"<tr class="member"><td>{}</td><td>{}</td><td>{}</td></tr>"#,
            escape(&member.org),
            member
                .admitted_unix
                .map_or_else(|| "–".to_owned(), utc_seconds),
            gateways.join("<br>")
        );
    }
    out.push_str("</tbody></table><h3>Pending joins</h3>");
    if m.pending.is_empty() {
        out.push_str(r#"<p class="none">none</p>"#);
    } else {
        out.push_str(r#"<table><thead><tr><th>org</th><th>votes</th></tr></thead><tbody>"#);
        for p in &m.pending {
            let _ = write!(
                out,
                r#"<tr class="pending"><td>{}</td><td>{} ({})</td></tr>"#,
                escape(&p.org),
                p.votes.len(),
                escape(&p.votes.join(", "))
            );
        }
        out.push_str("</tbody></table>");
    }
    out.push_str("<h3>Revoked orgs</h3>");
    if m.revoked.is_empty() {
        out.push_str(r#"<p class="none">none</p>"#);
    } else {
        let _ = write!(
            out,
            r#"<p class="revoked">{}</p>"#,
            escape(&m.revoked.join(", "))
        );
    }
    out
}

/// Unix seconds as RFC 3339 UTC (`2026-12-07T19:30:00Z`).
fn utc_seconds(unix: i64) -> String {
    u64::try_from(unix).map_or_else(
        |_| unix.to_string(),
        |secs| {
            let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
            humantime::format_rfc3339_seconds(at).to_string()
        },
    )
}

/// The word shown for a node's reachability.
pub fn reach_word(r: Reachability) -> &'static str {
    match r {
        Reachability::Local => "local",
        Reachability::OtherSite => "other site",
        Reachability::Up => "up",
        Reachability::OnDemand => "on demand",
        Reachability::Down => "down",
        Reachability::NoAddress => "no address",
    }
}

fn ports(p: &BTreeMap<String, u32>) -> String {
    let v: Vec<String> = p.iter().map(|(k, v)| format!("{k} {v}")).collect();
    if v.is_empty() {
        "–".to_owned()
    } else {
        escape(&v.join(", "))
    }
}

fn nodes(s: &Snapshot) -> String {
    let mut out = String::from(
        r#"<table id="nodes-table"><thead><tr><th>org</th><th>node</th><th>consortium name</th><th>client</th><th>ports</th><th>local address here</th><th>reachability</th></tr></thead><tbody>"#,
    );
    for n in &s.nodes.nodes {
        let local = match &n.local_address {
            Some(a) if n.local_ports.is_empty() => escape(a),
            Some(a) => format!("{} ({})", escape(a), ports(&n.local_ports)),
            None => "–".to_owned(),
        };
        let reach = reach_word(n.reachability);
        let _ = write!(
            out,
            r#"<tr class="node"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><span class="reach {}">{}</span></td></tr>"#,
            escape(&n.org),
            escape(&n.name),
            escape(&n.consortium_name),
            or_dash(n.client.as_deref()),
            ports(&n.ports),
            local,
            reach.replace(' ', "-"),
            reach,
        );
    }
    if s.nodes.nodes.is_empty() {
        out.push_str(r#"<tr><td colspan="7">no nodes registered</td></tr>"#);
    }
    out.push_str("</tbody></table>");
    out
}

/// A field of an audit entry as text (strings bare, other values as JSON).
fn field(e: &serde_json::Value, key: &str) -> String {
    match e.get(key) {
        None | Some(serde_json::Value::Null) => "–".to_owned(),
        Some(serde_json::Value::String(s)) => escape(s),
        Some(v) => escape(&v.to_string()),
    }
}

fn audit(s: &Snapshot) -> String {
    let a = &s.audit;
    let mut out = format!(
        r#"<form method="get" action="./"><label>org <input name="org" value="{}"></label> <label>kind <input name="kind" value="{}"></label> <button type="submit">filter</button></form>"#,
        or_empty(a.org.as_deref()),
        or_empty(a.kind.as_deref()),
    );
    if !a.available {
        out.push_str(r#"<p class="none" id="no-audit">no audit trail</p>"#);
        return out;
    }
    out.push_str(r#"<table id="audit-table"><thead><tr><th>at</th><th>org</th><th>kind</th><th>summary</th></tr></thead><tbody>"#);
    for e in &a.entries {
        let _ = write!(
            out,
            r#"<tr class="audit"><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>"#,
            field(e, "at"),
            field(e, "org"),
            field(e, "kind"),
            field(e, "summary"),
        );
    }
    if a.entries.is_empty() {
        out.push_str(r#"<tr><td colspan="4">no entries match</td></tr>"#);
    }
    out.push_str("</tbody></table>");
    out
}

fn or_empty(v: Option<&str>) -> String {
    v.map(escape).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::console::api::{self, Audit, Members, Nodes};

    fn snapshot(audit: Option<Vec<serde_json::Value>>) -> Snapshot {
        let topology = api::Topology {
            org: "org1".into(),
            site: "dc1".into(),
            digest: "ab".into(),
            records: 1,
            orgs: vec![api::TopologyOrg {
                org: "<org1>".into(),
                status: "active".into(),
                sites: vec![api::TopologySite {
                    id: "org1/dc1".into(),
                    site: "dc1".into(),
                    advertise: vec![],
                    outbound_only: true,
                    here: true,
                }],
            }],
            links: vec![],
        };
        Snapshot {
            topology,
            members: Members {
                consensus: "none".into(),
                members: vec![],
                pending: vec![],
                revoked: vec!["org9".into()],
            },
            nodes: Nodes { nodes: vec![] },
            audit: Audit {
                available: audit.is_some(),
                org: None,
                kind: None,
                entries: audit.unwrap_or_default(),
            },
        }
    }

    #[test]
    fn the_page_escapes_names_and_marks_outbound_only_sites() {
        let page = render(&snapshot(None));
        assert!(page.contains("&lt;org1&gt;"));
        assert!(!page.contains("<org1>"));
        assert!(page.contains("class=\"site outbound here\""));
        assert!(page.contains("outbound only"));
        assert!(page.contains("no audit trail"));
        assert!(page.contains("org9"));
        assert!(!page.contains("{{"), "a placeholder is left");
    }

    #[test]
    fn audit_entries_show_their_fields() {
        let entry = serde_json::json!({"at": "2026-12-07T19:00:00Z", "org": "org2", "kind": "node", "summary": "<b>added</b>"});
        let page = render(&snapshot(Some(vec![entry])));
        assert!(!page.contains("no audit trail"));
        assert!(page.contains("<tr class=\"audit\"><td>2026-12-07T19:00:00Z</td><td>org2</td><td>node</td><td>&lt;b&gt;added&lt;/b&gt;</td></tr>"));
    }

    #[test]
    fn a_link_label_names_transport_and_rtt() {
        let mut l = api::Link {
            a: "a/x".into(),
            b: "b/x".into(),
            state: LinkState::Up,
            transport: Some("quic".into()),
            rtt_ms: Some(0.42),
            sync: None,
        };
        assert_eq!(link_label(&l), "quic 0.4 ms");
        l.rtt_ms = None;
        l.transport = Some("tcp".into());
        assert_eq!(link_label(&l), "tcp");
        l.transport = None;
        l.state = LinkState::Idle;
        assert_eq!(link_label(&l), "idle");
    }
}
