//! Readable themes and color-blind-safe cell colors, checked in the browser: WCAG 2 contrast
//! of every piece of text the page shows (DOM text and what the canvases draw), in light
//! and dark; the cell palette stays apart under simulated deuteranopia and protanopia and
//! has no green. A screenshot per theme, and one through Chromium's deuteranopia
//! emulation, go to `target/ui-artifacts/`.

use std::time::Duration;

use pathpulse_tests::browser::{Browser, Page};
use pathpulse_tests::wait_for;
use serde_json::json;

use crate::ui::save;

/// WCAG 2 AA for normal-size text.
pub const MIN_CONTRAST: f64 = 4.5;
/// The least CIE76 color difference between two cell classes, or a class and "no data",
/// in normal vision and under each simulated deficiency (about 2.3 is "just noticeable";
/// 20 is apart at a glance in a small cell).
pub const MIN_DELTA_E: f64 = 20.0;

/// Every text on the page with its color and the background it sits on, plus the text the
/// canvases draw (labels in --fg / --muted on the panel or on --grid bands, axis labels in
/// --loss / --jitter, cell values in their class's text color): `[what, fg, bg, ratio]`.
const CONTRAST_JS: &str = r##"(() => {
  const rgb = (c) => {
    const m = String(c).match(/[\d.]+/g) || [];
    if (String(c).startsWith("#")) {
      const h = c.length === 4 ? c.slice(1).split("").map((x) => x + x).join("") : c.slice(1);
      return [0, 2, 4].map((i) => parseInt(h.slice(i, i + 2), 16)).concat([1]);
    }
    return [Number(m[0]), Number(m[1]), Number(m[2]), m.length > 3 ? Number(m[3]) : 1];
  };
  const lin = (v) => { v /= 255; return v <= 0.04045 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); };
  const lum = (c) => 0.2126 * lin(c[0]) + 0.7152 * lin(c[1]) + 0.0722 * lin(c[2]);
  const ratio = (a, b) => { const [x, y] = [lum(a), lum(b)].sort((p, q) => q - p); return (x + 0.05) / (y + 0.05); };
  const bgOf = (el) => {
    for (let e = el; e; e = e.parentElement) {
      const c = rgb(getComputedStyle(e).backgroundColor);
      if (c[3] > 0) return c;
    }
    return rgb(getComputedStyle(document.documentElement).backgroundColor);
  };
  const hex = (c) => "#" + c.slice(0, 3).map((x) => Math.round(x).toString(16).padStart(2, "0")).join("");
  const out = [];
  const add = (what, fg, bg) => out.push([what, hex(fg), hex(bg), ratio(fg, bg)]);
  for (const el of document.body.querySelectorAll("*")) {
    if (el.closest(".sr-only, option, script") || !el.getClientRects().length) continue;
    const own = [...el.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
    if (!own && !["SELECT", "BUTTON"].includes(el.tagName)) continue;
    const text = (el.tagName === "SELECT" ? el.value : el.textContent).trim().slice(0, 40);
    add(el.tagName.toLowerCase() + (el.id ? "#" + el.id : "") + (el.className ? "." + String(el.className).split(" ").join(".") : "") + " " + JSON.stringify(text),
      rgb(getComputedStyle(el).color), bgOf(el));
  }
  const v = (n) => rgb(getComputedStyle(document.documentElement).getPropertyValue(n).trim());
  for (const [f, b] of [["--fg", "--panel"], ["--muted", "--panel"], ["--fg", "--grid"],
                        ["--loss", "--panel"], ["--jitter", "--panel"], ["--fg", "--bg"]])
    add("canvas text " + f + " on " + b, v(f), v(b));
  const p = window.pathpulse;
  p.palette.forEach((c, i) => add("cell value, class " + i, rgb(p.textOn[i]), rgb(c)));
  return out;
})()"##;

/// Switch to `scheme`, let the page redraw, check the contrast of all its text; a
/// screenshot `{name}-{scheme}.png`.
pub fn check_theme(b: &mut Browser, page: &Page, dir: &std::path::Path, name: &str, scheme: &str) {
    b.color_scheme(page, scheme);
    let want = if scheme == "dark" {
        "rgb(20, 23, 27)"
    } else {
        "rgb(255, 255, 255)"
    };
    wait_for(Duration::from_secs(5), || {
        (b.eval(page, "getComputedStyle(document.body).backgroundColor") == want).then_some(())
    })
    .unwrap_or_else(|| panic!("{scheme} theme not applied"));
    // The canvases redraw on the media change; give them a frame.
    std::thread::sleep(Duration::from_millis(1000));
    let texts: Vec<(String, String, String, f64)> =
        serde_json::from_value(b.eval(page, CONTRAST_JS)).expect("contrast list");
    assert!(texts.len() > 30, "{scheme}: too few texts found: {texts:?}");
    let worst = texts
        .iter()
        .min_by(|a, b| a.3.total_cmp(&b.3))
        .expect("texts");
    eprintln!(
        "{scheme} theme: {} texts, lowest contrast {:.2}:1 ({} {} on {})",
        texts.len(),
        worst.3,
        worst.0,
        worst.1,
        worst.2
    );
    let low: Vec<String> = texts
        .iter()
        .filter(|t| t.3 < MIN_CONTRAST)
        .map(|t| format!("{} {} on {}: {:.2}", t.0, t.1, t.2, t.3))
        .collect();
    assert!(
        low.is_empty(),
        "{scheme}: text below {MIN_CONTRAST}:1:\n{}",
        low.join("\n")
    );
    save(dir, &format!("{name}-{scheme}.png"), &b.screenshot(page));
}

/// The page's cell palette and its "no data" color in the current theme are apart in
/// normal vision and under simulated deuteranopia and protanopia, and none is green; a
/// screenshot through Chromium's own deuteranopia emulation, `{name}-deuteranopia.png`.
pub fn check_palette(b: &mut Browser, page: &Page, dir: &std::path::Path, name: &str) {
    let mut colors: Vec<String> =
        serde_json::from_value(b.eval(page, "window.pathpulse.palette")).expect("palette");
    let classes = colors.len();
    let nodata = b.eval(
        page,
        "getComputedStyle(document.documentElement).getPropertyValue('--nodata').trim()",
    );
    colors.push(nodata.as_str().expect("--nodata").to_string());
    let rgb: Vec<[f64; 3]> = colors.iter().map(|c| linear(c)).collect();
    for (vision, m) in [
        ("normal", IDENTITY),
        ("deuteranopia", DEUTERANOPIA),
        ("protanopia", PROTANOPIA),
    ] {
        let lab: Vec<[f64; 3]> = rgb.iter().map(|c| to_lab(apply(m, *c))).collect();
        let mut least = (f64::MAX, 0, 0);
        for i in 0..lab.len() {
            for j in i + 1..lab.len() {
                let d = delta_e(lab[i], lab[j]);
                if d < least.0 {
                    least = (d, i, j);
                }
            }
        }
        let (d, i, j) = least;
        eprintln!(
            "palette under {vision}: closest pair {} / {} ΔE {d:.1}; L* {:?}",
            colors[i],
            colors[j],
            lab.iter().map(|l| l[0].round()).collect::<Vec<_>>()
        );
        assert!(
            d >= MIN_DELTA_E,
            "{vision}: {} and {} are too alike (ΔE {d:.1} < {MIN_DELTA_E}); palette {colors:?}",
            colors[i],
            colors[j]
        );
    }
    // No class is green (CIE LCh hue 100°–170° with any real chroma): the scale never
    // asks anyone to tell red from green.
    for (c, l) in colors[..classes].iter().zip(rgb.iter().map(|c| to_lab(*c))) {
        let (chroma, hue) = (
            l[1].hypot(l[2]),
            l[2].atan2(l[1]).to_degrees().rem_euclid(360.0),
        );
        assert!(
            chroma < 15.0 || !(100.0..170.0).contains(&hue),
            "{c} is green (hue {hue:.0}°, chroma {chroma:.0})"
        );
    }
    b.call(
        Some(&page.session),
        "Emulation.setEmulatedVisionDeficiency",
        json!({ "type": "deuteranopia" }),
    );
    std::thread::sleep(Duration::from_millis(500));
    save(
        dir,
        &format!("{name}-deuteranopia.png"),
        &b.screenshot(page),
    );
    b.call(
        Some(&page.session),
        "Emulation.setEmulatedVisionDeficiency",
        json!({ "type": "none" }),
    );
}

type Matrix = [[f64; 3]; 3];
const IDENTITY: Matrix = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];
/// Machado, Oliveira and Fernandes (2009), severity 1.0, applied to linear RGB.
const DEUTERANOPIA: Matrix = [
    [0.367322, 0.860646, -0.227968],
    [0.280085, 0.672501, 0.047413],
    [-0.011820, 0.042940, 0.968881],
];
const PROTANOPIA: Matrix = [
    [0.152286, 1.052583, -0.204868],
    [0.114503, 0.786281, 0.099216],
    [-0.003882, -0.048116, 1.051998],
];

/// `#rrggbb` (or `#rgb`) to linear RGB in 0..1.
fn linear(hex: &str) -> [f64; 3] {
    let h = hex.trim_start_matches('#');
    let h: String = if h.len() == 3 {
        h.chars().flat_map(|c| [c, c]).collect()
    } else {
        h.to_string()
    };
    let ch = |i: usize| {
        let v = u8::from_str_radix(&h[i..i + 2], 16)
            .unwrap_or_else(|e| panic!("color {hex:?}: {e}")) as f64
            / 255.0;
        if v <= 0.04045 {
            v / 12.92
        } else {
            ((v + 0.055) / 1.055).powf(2.4)
        }
    };
    [ch(0), ch(2), ch(4)]
}

fn apply(m: Matrix, c: [f64; 3]) -> [f64; 3] {
    let row = |r: [f64; 3]| (r[0] * c[0] + r[1] * c[1] + r[2] * c[2]).clamp(0.0, 1.0);
    [row(m[0]), row(m[1]), row(m[2])]
}

/// Linear sRGB to CIELAB (D65).
fn to_lab(c: [f64; 3]) -> [f64; 3] {
    let x = (0.4124 * c[0] + 0.3576 * c[1] + 0.1805 * c[2]) / 0.95047;
    let y = 0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2];
    let z = (0.0193 * c[0] + 0.1192 * c[1] + 0.9505 * c[2]) / 1.08883;
    let f = |t: f64| {
        if t > 0.008856 {
            t.cbrt()
        } else {
            7.787 * t + 16.0 / 116.0
        }
    };
    [
        116.0 * f(y) - 16.0,
        500.0 * (f(x) - f(y)),
        200.0 * (f(y) - f(z)),
    ]
}

fn delta_e(a: [f64; 3], b: [f64; 3]) -> f64 {
    ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2) + (a[2] - b[2]).powi(2)).sqrt()
}

/// The checks above on known colors: black and white are 21:1 and far apart, the
/// classic red and green collapse under deuteranopia.
#[test]
fn color_checks_tell_apart_what_they_should() {
    let (w, k) = (to_lab(linear("#fff")), to_lab(linear("#000000")));
    assert!(
        (w[0] - 100.0).abs() < 0.1 && k[0].abs() < 0.1,
        "{w:?} {k:?}"
    );
    let (red, green) = (linear("#d62728"), linear("#2ca02c"));
    let normal = delta_e(to_lab(red), to_lab(green));
    let deut = delta_e(
        to_lab(apply(DEUTERANOPIA, red)),
        to_lab(apply(DEUTERANOPIA, green)),
    );
    assert!(normal > 80.0 && deut < MIN_DELTA_E, "{normal} {deut}");
}
