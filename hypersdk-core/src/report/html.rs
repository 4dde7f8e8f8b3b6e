//! The HTML form of an [`ExportReport`]: one page people can mail on, with
//! nothing fetched and nothing run (inline CSS, inline SVG charts).

use std::fmt::Write;

use super::{human_bytes, human_rate, DiskReport, ExportReport};

/// `s` with the five characters HTML gives meaning escaped.
pub(crate) fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c if c.is_control() && c != '\n' && c != '\t' => o.push('\u{FFFD}'),
            c => o.push(c),
        }
    }
    o
}

const STYLE: &str = "body{font:15px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0 auto;max-width:60rem;padding:1rem;color:#1b1f24;background:#fff}\
h1{font-size:1.5rem;margin:.2rem 0}h2{font-size:1.15rem;margin:1.6rem 0 .5rem;border-bottom:1px solid #d0d7de}\
table{border-collapse:collapse;width:100%;margin:.3rem 0}th,td{text-align:left;padding:.25rem .5rem;border-bottom:1px solid #eaeef2;vertical-align:top}\
th{font-weight:600;background:#f6f8fa}td.n{text-align:right;font-variant-numeric:tabular-nums}\
code,pre{font:13px/1.4 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;overflow-wrap:anywhere}\
pre{background:#f6f8fa;padding:.6rem;overflow-x:auto;white-space:pre-wrap}\
.ok{color:#1a7f37;font-weight:600}.warn{color:#9a6700;font-weight:600}.muted{color:#57606a}\
.wrap{overflow-x:auto}svg{max-width:100%;height:auto;display:block}\
@media (prefers-color-scheme:dark){body{background:#0d1117;color:#e6edf3}th{background:#161b22}pre{background:#161b22}th,td{border-color:#30363d}.muted{color:#8b949e}}";

/// The page.
pub(crate) fn render(r: &ExportReport) -> String {
    let mut h = String::with_capacity(16 << 10);
    let title = format!("Export of {}", r.vm);
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">\
         <title>{}</title><style>{STYLE}</style></head><body>\n<h1>{}</h1>\n",
        esc(&title),
        esc(&title)
    );
    let verified = if r.verified {
        "<span class=\"ok\">verified: every stored file was read back and matched its digest</span>"
    } else {
        "<span class=\"warn\">not verified: the digests were computed as the files were written, not read back</span>"
    };
    let _ = write!(
        h,
        "<p>{verified}</p>\n<h2>Summary</h2>\n<div class=\"wrap\"><table>"
    );
    let mut row = |k: &str, v: String| {
        let _ = write!(h, "<tr><th scope=\"row\">{}</th><td>{v}</td></tr>", esc(k));
    };
    row("VM", esc(&r.vm));
    row("Provider", esc(&r.provider));
    if let Some(m) = &r.machine {
        row("Platform id", format!("<code>{}</code>", esc(&m.id)));
        row("Power state", esc(&m.power_state.to_string()));
        row("CPUs", m.cpus.to_string());
        row("Memory", human_bytes(m.memory_mib << 20));
        row(
            "Firmware",
            match (m.firmware, m.secure_boot) {
                (crate::vm::Firmware::Bios, _) => "BIOS".into(),
                (crate::vm::Firmware::Uefi, false) => "UEFI".into(),
                (crate::vm::Firmware::Uefi, true) => "UEFI, secure boot".into(),
            },
        );
        let os = if m.guest_os.description.is_empty() {
            &m.guest_os.id
        } else {
            &m.guest_os.description
        };
        row("Guest OS", esc(os));
        if let Some(v) = &m.hardware_version {
            row("Hardware", esc(v));
        }
        let nics: Vec<String> = m
            .nics
            .iter()
            .map(|n| {
                format!(
                    "{} on {}{}",
                    esc(&n.model),
                    esc(&n.network),
                    n.mac
                        .as_deref()
                        .map(|mac| format!(" (<code>{}</code>)", esc(mac)))
                        .unwrap_or_default()
                )
            })
            .collect();
        row(
            "Network",
            if nics.is_empty() {
                "none".into()
            } else {
                nics.join("<br>")
            },
        );
    }
    row("Artifact", format!("<code>{}</code>", esc(&r.location)));
    row(
        "Format",
        esc(match r.format {
            crate::PackageFormat::Ova => "OVA (one tar file)",
            crate::PackageFormat::Ovf => "OVF directory",
        }),
    );
    row(
        "Size stored",
        format!("{} ({} bytes)", human_bytes(r.size), r.size),
    );
    row(
        "Compression",
        esc(r.compression.as_deref().unwrap_or("none")),
    );
    row("Encrypted", if r.encrypted { "yes" } else { "no" }.into());
    row("Manifest digest", esc(&r.digest_algorithm));
    if let Some(t) = &r.started_at {
        row("Started", esc(t));
    }
    row("Duration", format!("{:.1} s", r.duration_secs));
    row(
        "Read",
        format!(
            "{} at {} on average",
            human_bytes(r.bytes_read),
            human_rate(r.throughput_mb_s * 1e6)
        ),
    );
    if r.resumed_bytes > 0 {
        row(
            "Kept from earlier runs",
            format!("{} stored bytes", human_bytes(r.resumed_bytes)),
        );
    }
    if let Some(ova) = &r.ova {
        row(
            "OVA digest",
            format!(
                "<code>{}</code> ({})",
                esc(&ova.digest),
                human_bytes(ova.size)
            ),
        );
    }
    h.push_str("</table></div>\n");

    h.push_str("<h2>Disks</h2>\n<div class=\"wrap\"><table><tr><th>Disk</th><th>Source</th><th class=\"n\">Capacity</th><th class=\"n\">Allocated</th><th class=\"n\">Stored</th><th class=\"n\">Ratio</th><th>Digest</th></tr>");
    for d in &r.disks {
        let stored = r.stored_size_of(&d.file);
        let digest = r
            .files
            .iter()
            .find(|f| f.name == d.file)
            .map(|f| f.digest.as_str())
            .unwrap_or("");
        let ratio = match stored {
            Some(s) if s > 0 => format!("{:.2}×", d.populated as f64 / s as f64),
            _ => "–".into(),
        };
        let fmt = d
            .source_format
            .and_then(|f| serde_json::to_value(f).ok())
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let _ = write!(
            h,
            "<tr><td>{}<br><span class=\"muted\">{}</span></td><td><code>{}</code><br><span class=\"muted\">{}</span></td>\
             <td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td><code>{}</code></td></tr>",
            esc(&d.name),
            esc(&d.file),
            esc(&d.source),
            esc(&fmt),
            human_bytes(d.capacity),
            human_bytes(d.populated),
            stored.map(human_bytes).unwrap_or_else(|| "–".into()),
            ratio,
            esc(digest)
        );
    }
    h.push_str("</table></div>\n<p class=\"muted\">Allocated: guest bytes in non-zero grains. Ratio: allocated ÷ stored.</p>\n");

    h.push_str("<h2>Throughput</h2>\n");
    for d in &r.disks {
        let _ = writeln!(h, "<h3>{}</h3>", esc(&d.name));
        h.push_str(&disk_timing(d));
        h.push_str(&chart(d));
    }

    if !r.attempts.is_empty() {
        h.push_str("<h2>Runs</h2>\n<div class=\"wrap\"><table><tr><th>#</th><th>Started</th><th class=\"n\">Kept from before</th></tr>");
        for (i, a) in r.attempts.iter().enumerate() {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td class=\"n\">{}</td></tr>",
                i + 1,
                esc(&a.started_at),
                human_bytes(a.kept_bytes)
            );
        }
        h.push_str("</table></div>\n");
    }

    h.push_str("<h2>Files</h2>\n<div class=\"wrap\"><table><tr><th>File</th><th class=\"n\">Size</th><th>Stored as</th><th class=\"n\">Stored size</th><th>Digest</th></tr>");
    for f in &r.files {
        let _ = write!(
            h,
            "<tr><td><code>{}</code></td><td class=\"n\">{}</td><td><code>{}</code></td><td class=\"n\">{}</td><td><code>{}</code></td></tr>",
            esc(&f.name),
            human_bytes(f.size),
            esc(&f.stored_name),
            human_bytes(f.stored_size),
            esc(&f.digest)
        );
    }
    h.push_str("</table></div>\n");

    let _ = write!(
        h,
        "<h2>Manifest</h2>\n<p>{verified}</p>\n<pre>{}</pre>\n",
        esc(&r.manifest)
    );

    if !r.options.is_empty() {
        h.push_str("<h2>Options</h2>\n<div class=\"wrap\"><table>");
        for (k, v) in &r.options {
            let _ = write!(
                h,
                "<tr><th scope=\"row\"><code>{}</code></th><td>{}</td></tr>",
                esc(k),
                esc(v)
            );
        }
        h.push_str("</table></div>\n");
    }
    let _ = write!(
        h,
        "<p class=\"muted\">Written by hypersdk {}.</p>\n</body></html>\n",
        env!("CARGO_PKG_VERSION")
    );
    h
}

fn disk_timing(d: &DiskReport) -> String {
    match d.started_secs {
        None => format!(
            "<p class=\"muted\">Finished by an earlier run ({} stored); nothing read in this one.</p>\n",
            human_bytes(d.resumed_bytes)
        ),
        Some(at) => {
            let mut s = format!(
                "<p>Started {at:.1} s into the export, took {:.1} s, read {}",
                d.secs,
                human_bytes(d.bytes_read)
            );
            if d.secs > 0.0 {
                let _ = write!(s, " ({} on average)", human_rate(d.bytes_read as f64 / d.secs));
            }
            if d.resumed_bytes > 0 {
                let _ = write!(
                    s,
                    "; continued where an earlier run stopped ({} kept)",
                    human_bytes(d.resumed_bytes)
                );
            }
            s.push_str(".</p>\n");
            s
        }
    }
}

/// Rates over the timeline: `(second, bytes/s)` over spans of at least a
/// quarter second (and 1/200 of the whole), so a burst into a buffer does
/// not show as an absurd peak.
pub(crate) fn rates(points: &[(f64, u64)]) -> Vec<(f64, f64)> {
    let span = match (points.first(), points.last()) {
        (Some(a), Some(b)) => b.0 - a.0,
        _ => return Vec::new(),
    };
    let min_dt = (span / 200.0).max(0.25);
    let mut out = Vec::new();
    let Some(mut from) = points.first().copied() else {
        return out;
    };
    for &p in &points[1..] {
        let dt = p.0 - from.0;
        if dt >= min_dt {
            out.push((p.0, p.1.saturating_sub(from.1) as f64 / dt));
            from = p;
        }
    }
    out
}

/// A throughput-over-time chart: an inline SVG polyline of the rate,
/// with its axes labelled, and a text equivalent for screen readers.
fn chart(d: &DiskReport) -> String {
    let r = rates(&d.timeline);
    if r.is_empty() {
        return "<p class=\"muted\">No throughput samples (the disk took under a quarter of a second, or no bytes were read in this run).</p>\n".into();
    }
    let (w, hgt, left, bottom) = (640.0_f64, 200.0_f64, 70.0_f64, 24.0_f64);
    let t_max = d
        .timeline
        .last()
        .map_or(1.0, |p| p.0)
        .max(f64::MIN_POSITIVE);
    let peak = r.iter().map(|p| p.1).fold(0.0_f64, f64::max);
    let y_max = if peak > 0.0 { peak * 1.1 } else { 1.0 };
    let x = |t: f64| left + (t / t_max) * (w - left - 10.0);
    let y = |v: f64| 8.0 + (1.0 - v / y_max) * (hgt - bottom - 8.0);
    // A step line: each rate holds from the previous point to its own.
    let mut pts = String::new();
    let mut prev_t = d.timeline.first().map_or(0.0, |p| p.0);
    for (t, v) in &r {
        let _ = write!(
            pts,
            "{:.1},{:.1} {:.1},{:.1} ",
            x(prev_t),
            y(*v),
            x(*t),
            y(*v)
        );
        prev_t = *t;
    }
    let avg = if d.secs > 0.0 {
        d.bytes_read as f64 / d.secs
    } else {
        0.0
    };
    let label = format!(
        "Throughput of disk {} over {:.1} s: peak {}, average {}",
        d.name,
        t_max,
        human_rate(peak),
        human_rate(avg)
    );
    let mut s = format!(
        "<svg viewBox=\"0 0 {w} {hgt}\" width=\"{w}\" height=\"{hgt}\" role=\"img\" aria-label=\"{}\" xmlns=\"http://www.w3.org/2000/svg\">",
        esc(&label)
    );
    let _ = write!(
        s,
        "<title>{}</title>\
         <line x1=\"{left}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#8c959f\"/>\
         <line x1=\"{left}\" y1=\"8\" x2=\"{left}\" y2=\"{}\" stroke=\"#8c959f\"/>\
         <text x=\"{}\" y=\"16\" font-size=\"11\" text-anchor=\"end\" fill=\"currentColor\">{}</text>\
         <text x=\"{}\" y=\"{}\" font-size=\"11\" text-anchor=\"end\" fill=\"currentColor\">0</text>\
         <text x=\"{left}\" y=\"{}\" font-size=\"11\" fill=\"currentColor\">0 s</text>\
         <text x=\"{}\" y=\"{}\" font-size=\"11\" text-anchor=\"end\" fill=\"currentColor\">{:.1} s</text>\
         <polyline fill=\"none\" stroke=\"#0969da\" stroke-width=\"1.5\" points=\"{}\"/></svg>",
        esc(&label),
        hgt - bottom,
        w - 10.0,
        hgt - bottom,
        hgt - bottom,
        left - 4.0,
        esc(&human_rate(peak * 1.1)),
        left - 4.0,
        hgt - bottom,
        hgt - 6.0,
        w - 10.0,
        hgt - 6.0,
        t_max,
        pts.trim_end()
    );
    s.push('\n');
    let _ = writeln!(s, "<p class=\"muted\">{}</p>", esc(&label));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn everything_shown_is_escaped() {
        assert_eq!(
            esc("<script>alert('x')&\"</script>"),
            "&lt;script&gt;alert(&#39;x&#39;)&amp;&quot;&lt;/script&gt;"
        );
    }

    #[test]
    fn rates_come_from_consecutive_points() {
        let r = rates(&[(0.0, 0), (1.0, 100), (1.0, 150), (1.1, 900), (3.0, 1000)]);
        assert_eq!(r, vec![(1.0, 100.0), (3.0, 450.0)]);
        // Under a quarter second in all: no rate to chart.
        assert!(rates(&[(0.0, 0), (0.01, 4 << 20), (0.04, 4 << 20)]).is_empty());
    }
}
