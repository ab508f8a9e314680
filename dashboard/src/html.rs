//! The page frame and HTML escaping. Every value from the cluster goes through
//! [`escape`]: object names, subjects and messages are written by workloads
//! and users, and a page must never run what they wrote.
use std::fmt::Write;

/// Escape text for HTML element content and double-quoted attributes.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
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

/// One navigation entry: path and label.
pub const NAV: &[(&str, &str)] = &[
    ("/decisions", "Decisions"),
    ("/denials", "Denials"),
    ("/approvals", "Approvals"),
    ("/models", "Models"),
    ("/budgets", "Budgets"),
    ("/incidents", "Incidents"),
    ("/audit", "Audit trail"),
];

const STYLE: &str = "\
*{box-sizing:border-box}\
body{margin:0;font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;color:#1d2330;background:#f6f7f9}\
header{display:flex;align-items:center;gap:12px;padding:10px 20px;background:#1d2a44;color:#fff;flex-wrap:wrap}\
header strong{font-size:16px}\
nav{display:flex;gap:4px;flex-wrap:wrap}\
nav a{color:#cfd8ea;text-decoration:none;padding:5px 10px;border-radius:4px}\
nav a[aria-current=page]{background:#3b5284;color:#fff}\
nav a:hover{background:#2c3d62}\
.who{margin-left:auto;font-size:12px;color:#cfd8ea;overflow-wrap:anywhere}\
header form{margin:0}\
button{font:inherit;cursor:pointer;border:1px solid #8796b5;background:#fff;color:#1d2a44;border-radius:4px;padding:4px 10px}\
main{padding:16px 20px;max-width:1280px}\
h1{font-size:20px;margin:4px 0 12px}h2{font-size:16px;margin:18px 0 8px}\
table{border-collapse:collapse;width:100%;background:#fff;margin-bottom:14px}\
th,td{text-align:left;padding:6px 8px;border-bottom:1px solid #e3e6eb;vertical-align:top}\
th{background:#eef0f4;font-weight:600;font-size:13px}\
code,pre{font:12px/1.4 ui-monospace,Menlo,Consolas,monospace}\
pre{white-space:pre-wrap;word-break:break-all;background:#f1f3f7;padding:6px;margin:4px 0;border-radius:3px}\
.note{color:#5b6475;font-size:13px}\
.banner{padding:8px 12px;border-radius:4px;margin:8px 0;background:#fff4d6;border:1px solid #e5c66b}\
.bad{color:#a3192b;font-weight:600}.good{color:#1d7a3a;font-weight:600}.warn{color:#9a6400;font-weight:600}\
.pill{display:inline-block;padding:1px 8px;border-radius:9px;font-size:12px;font-weight:600;background:#e3e6eb}\
.Critical,.High,.Deny,.Rejected,.Broken,.Revoked,.Expired,.Exhausted{background:#fbd9dd;color:#8a1020}\
.Medium,.RequireApproval,.Pending,.Unproven{background:#fdebc8;color:#7a4e00}\
.Low,.Allow,.Approved,.NotRequired,.Verified,.Active{background:#d5f0dc;color:#11592a}\
.Redact,.Degrade{background:#dbe6fb;color:#1d3f85}\
.card{background:#fff;border:1px solid #e3e6eb;border-radius:6px;padding:12px;margin-bottom:14px}\
.login{max-width:460px;margin:60px auto}\
.login textarea{width:100%;height:110px;font:12px ui-monospace,monospace}\
footer{padding:10px 20px;color:#5b6475;font-size:12px}\
";

/// What the frame shows around a page.
pub struct Frame<'a> {
    pub title: &'a str,
    /// The current page's path, for `aria-current`.
    pub path: &'a str,
    /// The viewer's user name; `None` on the login page.
    pub user: Option<&'a str>,
    /// Footer text (snapshot time, namespaces shown).
    pub footer: &'a str,
}

/// The whole document around `body`.
pub fn page(frame: &Frame<'_>, body: &str) -> String {
    let mut out = String::with_capacity(body.len() + 4096);
    let _ = write!(
        out,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>PolicyBind · {}</title><style>{STYLE}</style></head><body><header><strong>PolicyBind</strong>",
        escape(frame.title)
    );
    if let Some(user) = frame.user {
        out.push_str("<nav>");
        for (path, label) in NAV {
            let current = if *path == frame.path {
                " aria-current=\"page\""
            } else {
                ""
            };
            let _ = write!(out, "<a href=\"{path}\"{current}>{label}</a>");
        }
        let _ = write!(
            out,
            "</nav><span class=\"who\">Signed in as <b>{}</b></span>\
             <form method=\"post\" action=\"/logout\"><button type=\"submit\">Log out</button></form>",
            escape(user)
        );
    }
    let _ = write!(
        out,
        "</header><main>{body}</main><footer>{}</footer></body></html>",
        escape(frame.footer)
    );
    out
}

/// A table: header cells, then rows of already-escaped cells.
pub fn table(headers: &[&str], rows: &[Vec<String>], empty: &str) -> String {
    if rows.is_empty() {
        return format!("<p class=\"note\">{}</p>", escape(empty));
    }
    let mut out = String::from("<table><thead><tr>");
    for header in headers {
        let _ = write!(out, "<th>{}</th>", escape(header));
    }
    out.push_str("</tr></thead><tbody>");
    for row in rows {
        out.push_str("<tr>");
        for cell in row {
            let _ = write!(out, "<td>{cell}</td>");
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table>");
    out
}

/// A coloured label; `class` picks the colour (effects, states, risk levels).
pub fn pill(class: &str, text: &str) -> String {
    format!(
        "<span class=\"pill {}\">{}</span>",
        escape(class),
        escape(text)
    )
}

/// A time as `2026-12-01 05:31:07Z`.
pub fn time(at: chrono::DateTime<chrono::Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%SZ").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_in_cluster_values_is_escaped() {
        assert_eq!(
            escape("<script>alert(\"x\")</script>&'"),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;&#39;"
        );
    }

    #[test]
    fn the_frame_marks_the_current_page_and_names_the_viewer() {
        let html = page(
            &Frame {
                title: "Models",
                path: "/models",
                user: Some("alice<b>"),
                footer: "",
            },
            "",
        );
        assert!(html.contains("<a href=\"/models\" aria-current=\"page\">Models</a>"));
        assert!(html.contains("alice&lt;b&gt;"));
        assert!(!html.contains("<script"));
    }
}
