// pathpulse live page: mesh matrix (canvas), path view, alerts, agents.
// Plain JS, no dependencies, everything from this server. Live data from /api/events (SSE).
"use strict";

(function () {
  // ---- scales: color-blind-safe (blue → orange → dark red, no green, so never red against
  // green; the e2e test keeps every two classes apart under simulated deuteranopia and
  // protanopia); the worst class is also striped, and large cells carry their value as text.
  const PALETTE = ["#1d5fa8", "#5aa2d0", "#a8d1e7", "#f3bd6a", "#dd6c1c", "#67001f"];
  const TEXT_ON = ["#fff", "#000", "#000", "#000", "#000", "#fff"];
  const SCALES = {
    loss: { bounds: [0, 0.005, 0.01, 0.02, 0.05], labels: ["0", "< 0.5%", "< 1%", "< 2%", "< 5%", "≥ 5%"] },
    p50: { bounds: [1, 5, 20, 50, 150], labels: ["< 1 ms", "< 5 ms", "< 20 ms", "< 50 ms", "< 150 ms", "≥ 150 ms"] },
    p99: { bounds: [1, 5, 20, 50, 150], labels: ["< 1 ms", "< 5 ms", "< 20 ms", "< 50 ms", "< 150 ms", "≥ 150 ms"] },
  };
  const BAD = PALETTE.length - 1;

  function classOf(metric, v) {
    if (v === null || v === undefined || Number.isNaN(v)) return -1;
    const b = SCALES[metric].bounds;
    if (metric === "loss") {
      if (v <= 0) return 0;
      for (let i = 1; i < b.length; i++) if (v < b[i]) return i;
      return BAD;
    }
    for (let i = 0; i < b.length; i++) if (v < b[i]) return i;
    return BAD;
  }

  // ---- state
  const params = new URLSearchParams(location.search);
  const S = {
    metric: pick(params.get("metric"), ["loss", "p50", "p99"], "loss"),
    window: pick(params.get("window"), ["10s", "1m", "5m"], "1m"),
    group: pick(params.get("group"), ["site", "isp", "site-isp", "none"], "site"),
    mesh: null,
    grid: null, // Int32Array: src * ndst + dst -> cell index, -1 none
    agents: null,
    updates: 0,
    collapsedRows: new Set(),
    collapsedCols: new Set(),
    layout: null,
    path: null, // {src, dst, probe}
    es: null,
    // Cost of each live mesh update (parse and draw), for the summary.
    perf: { n: 0, totalMs: 0, maxMs: 0, lastMs: 0, bytes: 0, parseMs: 0, maxParseMs: 0 },
  };
  function pick(v, allowed, dflt) { return allowed.includes(v) ? v : dflt; }

  const $ = (id) => document.getElementById(id);
  const canvas = $("matrix");
  const tooltip = $("tooltip");
  const css = (name) => getComputedStyle(document.documentElement).getPropertyValue(name).trim();

  // ---- cell values
  const F = { src: 0, dst: 1, received: 2, lost: 3, loss: 4, p50: 5, p99: 6 };
  function cellValue(c) {
    if (!c) return null;
    if (S.metric === "loss") return c[F.loss];
    const us = S.metric === "p50" ? c[F.p50] : c[F.p99];
    return us === null ? null : us / 1000;
  }
  function fmt(metric, v) {
    if (v === null || v === undefined) return "no data";
    if (metric === "loss") return (v * 100).toFixed(v >= 0.1 ? 0 : v >= 0.01 ? 1 : 2) + "%";
    if (v < 1) return Math.round(v * 1000) + " µs";
    return v >= 100 ? v.toFixed(0) + " ms" : v >= 10 ? v.toFixed(1) + " ms" : v.toFixed(2) + " ms";
  }
  function fmtShort(metric, v) {
    if (metric === "loss") return v <= 0 ? "0" : v >= 0.095 ? Math.round(v * 100) + "%" : (v * 100).toFixed(1);
    return v >= 10 ? v.toFixed(0) : v.toFixed(1);
  }
  function worse(a, b) {
    if (a === null) return b;
    if (b === null) return a;
    return b > a ? b : a;
  }

  // ---- grouping
  function groupKey(site, isp) {
    const s = site || "(no site)", i = isp || "(no ISP)";
    switch (S.group) {
      case "site": return s;
      case "isp": return i;
      case "site-isp": return s + " / " + i;
      default: return null;
    }
  }
  function destGroupKey(d) {
    if (S.group === "none") return null;
    if (!d.agent && !d.site && !d.isp) return "targets";
    return groupKey(d.site, d.isp);
  }
  // One collator: `localeCompare` with options builds one per call (tens of ms a draw
  // at 200 × 200).
  const NUMERIC = new Intl.Collator(undefined, { numeric: true });
  // Ordered groups of indexes: [{key, members: [i...]}]; key null means ungrouped.
  function groups(items, keyOf, label) {
    const map = new Map();
    items.forEach((it, i) => {
      const k = keyOf(it);
      if (!map.has(k)) map.set(k, []);
      map.get(k).push(i);
    });
    const keys = [...map.keys()].sort((a, b) => String(a).localeCompare(String(b)));
    return keys.map((k) => ({
      key: k,
      members: map.get(k).sort((a, b) => NUMERIC.compare(label(items[a]), label(items[b]))),
    }));
  }
  // A destination as written, with the agent there when the aggregator knows it.
  const destLabel = (d) => (d.probe === "icmp" ? d.name : d.probe + ":" + d.name) +
    (d.agent && d.agent !== d.name ? " (" + d.agent + ")" : "");

  // ---- layout: lines (rows) and columns with positions
  const GROUP_H = 18;
  function computeLayout() {
    const m = S.mesh;
    const wrapW = $("matrix-wrap").clientWidth || 800;
    const rowGroups = groups(m.sources, (s) => groupKey(s.site, s.isp), (s) => s.name);
    const colGroups = groups(m.destinations, destGroupKey, destLabel);
    // Columns: each item, or one per collapsed group.
    const cols = [];
    for (const g of colGroups) {
      if (g.key !== null && S.collapsedCols.has(g.key)) cols.push({ group: g, members: g.members, agg: true });
      else for (const i of g.members) cols.push({ group: g, members: [i], agg: false });
    }
    const ctx = canvas.getContext("2d");
    ctx.font = "12px system-ui, sans-serif";
    let maxSrc = 40;
    for (const s of m.sources) maxSrc = Math.max(maxSrc, ctx.measureText(s.name).width);
    for (const g of rowGroups) if (g.key !== null) maxSrc = Math.max(maxSrc, ctx.measureText("▾ " + g.key + " (" + g.members.length + ")").width);
    let labelW = Math.min(220, Math.ceil(maxSrc) + 20);
    let cs = Math.floor((wrapW - labelW - 12) / Math.max(1, cols.length));
    cs = Math.max(3, Math.min(36, cs));
    const showLabels = cs >= 11;
    let maxDst = 0;
    if (showLabels) for (const d of m.destinations) maxDst = Math.max(maxDst, ctx.measureText(destLabel(d)).width);
    const bandH = colGroups.some((g) => g.key !== null) ? GROUP_H + 4 : 0;
    const top = bandH + (showLabels ? Math.min(150, Math.ceil(maxDst * 0.72) + 14) : 6);
    let x = labelW;
    for (const c of cols) { c.x = x; c.w = c.agg ? Math.max(cs, 14) : cs; x += c.w; }
    const lines = [];
    let y = top;
    for (const g of rowGroups) {
      const collapsed = g.key !== null && S.collapsedRows.has(g.key);
      if (g.key !== null) {
        const h = collapsed ? Math.max(cs, GROUP_H) : GROUP_H;
        lines.push({ group: g, members: collapsed ? g.members : [], header: true, agg: collapsed, y, h });
        y += h;
      }
      if (!collapsed) for (const i of g.members) { lines.push({ group: g, members: [i], header: false, agg: false, y, h: cs }); y += cs; }
    }
    const overhang = showLabels ? Math.min(200, maxDst) * 0.56 : 0; // rotated labels reach right
    return { cols, lines, colGroups, rowGroups, cs, labelW, top, bandH, showLabels, width: Math.ceil(x + 8 + overhang), height: y + 8 };
  }

  // Worst value over the cells of a line and a column (one cell unless collapsed).
  function valueAt(line, col) {
    const nd = S.mesh.destinations.length;
    let v = null, any = false;
    for (const si of line.members) for (const di of col.members) {
      const ci = S.grid[si * nd + di];
      if (ci < 0) continue;
      any = true;
      v = worse(v, cellValue(S.mesh.cells[ci]));
    }
    return { any, v };
  }

  // ---- drawing
  function draw() {
    if (!S.mesh) return;
    const L = (S.layout = computeLayout());
    const dpr = window.devicePixelRatio || 1;
    canvas.width = Math.ceil(L.width * dpr);
    canvas.height = Math.ceil(L.height * dpr);
    canvas.style.width = L.width + "px";
    canvas.style.height = L.height + "px";
    const ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, L.width, L.height);
    const fg = css("--fg"), muted = css("--muted"), nodata = css("--nodata"), gridc = css("--grid");
    ctx.font = "12px system-ui, sans-serif";
    ctx.textBaseline = "middle";
    // Column group bands.
    if (L.bandH) {
      for (const g of L.colGroups) {
        const cs = L.cols.filter((c) => c.group === g);
        if (!cs.length) continue;
        const x0 = cs[0].x, x1 = cs[cs.length - 1].x + cs[cs.length - 1].w;
        ctx.fillStyle = gridc;
        ctx.fillRect(x0, 2, x1 - x0 - 1, GROUP_H);
        ctx.fillStyle = fg;
        const collapsed = S.collapsedCols.has(g.key);
        clipText(ctx, (collapsed ? "▸ " : "▾ ") + g.key + " (" + g.members.length + ")", x0 + 3, 2 + GROUP_H / 2, x1 - x0 - 6);
      }
    }
    // Column labels, rotated.
    if (L.showLabels) {
      ctx.fillStyle = fg;
      for (const c of L.cols) {
        const text = c.agg ? "∑ " + c.group.key : destLabel(S.mesh.destinations[c.members[0]]);
        ctx.save();
        ctx.translate(c.x + c.w / 2, L.top - 4);
        ctx.rotate(-Math.PI / 3.2);
        ctx.textAlign = "left";
        clipText(ctx, text, 0, 0, 200);
        ctx.restore();
      }
    }
    // Cells first, written as pixels into one image (40,000 canvas fills, or one path of
    // 40,000 rectangles, cost tens of ms a draw; this costs a few); then the line labels
    // and group headers; stripes and values, on large cells only, go on top.
    let cells = 0, withData = 0;
    const gap = L.cs >= 6 ? 1 : 0;
    const x0 = L.labelW, y0 = L.top;
    const bw = Math.max(1, Math.ceil((L.width - x0) * dpr)), bh = Math.max(1, Math.ceil((L.height - y0) * dpr));
    const img = ctx.createImageData(bw, bh);
    const buf = new Uint32Array(img.data.buffer);
    const colors = PALETTE.map(rgba32), blank = rgba32(nodata), marks = [];
    const nd = S.mesh.destinations.length;
    for (const line of L.lines) {
      if (line.header && !line.agg) continue;
      const row = line.agg ? -1 : line.members[0] * nd;
      const ya = Math.round((line.y - y0) * dpr), yb = Math.min(bh, Math.round((line.y + line.h - gap - y0) * dpr));
      for (const col of L.cols) {
        let v;
        if (row >= 0 && !col.agg) {
          // One path: straight from the grid (the common case, 40,000 times).
          const ci = S.grid[row + col.members[0]];
          if (ci < 0) continue;
          v = cellValue(S.mesh.cells[ci]);
        } else {
          const a = valueAt(line, col);
          if (!a.any) continue;
          v = a.v;
        }
        cells++;
        const cls = classOf(S.metric, v);
        if (cls >= 0) withData++;
        const w = col.w - gap, h = line.h - gap;
        const xa = Math.round((col.x - x0) * dpr), xb = Math.min(bw, Math.round((col.x + w - x0) * dpr));
        const c = cls >= 0 ? colors[cls] : blank;
        for (let r = ya; r < yb; r++) buf.fill(c, r * bw + xa, r * bw + xb);
        if (w >= 8 && (cls === BAD || cls >= 0 && w >= 30 && h >= 18)) marks.push([col.x, line.y, w, h, cls, v]);
      }
    }
    ctx.putImageData(img, Math.round(x0 * dpr), Math.round(y0 * dpr));
    ctx.textAlign = "left";
    for (const line of L.lines) {
      if (line.header) {
        ctx.fillStyle = gridc;
        ctx.fillRect(0, line.y, line.agg ? L.labelW - 2 : L.width - 8, line.h - 1);
        ctx.fillStyle = fg;
        ctx.font = "bold 12px system-ui, sans-serif";
        clipText(ctx, (line.agg ? "▸ " : "▾ ") + line.group.key + " (" + line.group.members.length + ")", 4, line.y + line.h / 2, L.labelW - 8);
        ctx.font = "12px system-ui, sans-serif";
      } else if (L.showLabels) {
        const src = S.mesh.sources[line.members[0]];
        ctx.fillStyle = src.up ? fg : muted;
        clipText(ctx, (src.up ? "" : "⚠ ") + src.name, 14, line.y + line.h / 2, L.labelW - 18);
      }
    }
    for (const [x, y, w, h, cls, v] of marks) {
      if (cls === BAD) {
        // Stripe from top-left to bottom-right: the worst class reads without color.
        ctx.strokeStyle = "rgba(255,255,255,0.85)";
        ctx.lineWidth = Math.max(1.5, w / 10);
        ctx.beginPath();
        ctx.moveTo(x + w * 0.15, y + h * 0.15);
        ctx.lineTo(x + w * 0.85, y + h * 0.85);
        ctx.stroke();
      }
      if (w >= 30 && h >= 18) {
        ctx.fillStyle = TEXT_ON[cls];
        ctx.font = "10px system-ui, sans-serif";
        ctx.textAlign = "center";
        ctx.fillText(fmtShort(S.metric, v), x + w / 2, y + h / 2 + (cls === BAD ? h * 0.22 : 0));
        ctx.font = "12px system-ui, sans-serif";
        ctx.textAlign = "left";
      }
    }
    drawFocus(ctx, L);
    renderWorst();
    canvas.dataset.cells = String(cells);
    canvas.dataset.withData = String(withData);
    canvas.dataset.updates = String(S.updates);
    canvas.dataset.metric = S.metric;
    canvas.dataset.window = S.mesh.window;
    $("mesh-empty").hidden = S.mesh.cells.length > 0;
    const n = (x) => x.toLocaleString("en");
    $("mesh-count").textContent = "· " + n(S.mesh.sources.length) + " sources × " + n(S.mesh.destinations.length) +
      " destinations, " + n(S.mesh.cells.length) + " paths, window " + S.mesh.window;
  }

  // The worst paths by the current metric, as a list (findable among 40,000 cells, and
  // readable without the colors).
  const WORST = 10;
  function renderWorst() {
    const m = S.mesh, ol = $("worst");
    // The WORST largest values, kept sorted while counting the rest (no sort of 40,000).
    const top = [];
    let count = 0;
    m.cells.forEach((c, i) => {
      const v = cellValue(c);
      if (v === null || classOf(S.metric, v) <= 0) return;
      count++;
      if (top.length === WORST && v <= top[WORST - 1][0]) return;
      let k = top.length;
      while (k > 0 && top[k - 1][0] < v) k--;
      top.splice(k, 0, [v, i]);
      if (top.length > WORST) top.pop();
    });
    ol.textContent = "";
    ol.dataset.count = String(count);
    $("worst-title").textContent = count
      ? "Worst paths by " + (S.metric === "loss" ? "loss" : S.metric + " RTT") + " (" + count + " not in the best class)"
      : "Every path is in the best class by " + (S.metric === "loss" ? "loss" : S.metric + " RTT");
    for (const [v, i] of top) {
      const c = m.cells[i], src = m.sources[c[F.src]], d = m.destinations[c[F.dst]];
      const li = document.createElement("li");
      const cls = classOf(S.metric, v);
      const sw = document.createElement("span");
      sw.className = "sw";
      sw.style.background = PALETTE[cls];
      li.appendChild(sw);
      const a = document.createElement("a");
      a.textContent = src.name + " → " + destLabel(d) + ": " + fmt(S.metric, v) + " (" + SCALES[S.metric].labels[cls] + ")";
      a.href = "#path";
      a.addEventListener("click", (ev) => { ev.preventDefault(); openPath(src.name, d.name, d.probe); });
      li.appendChild(a);
      li.dataset.src = src.name;
      li.dataset.dst = d.name;
      ol.appendChild(li);
    }
  }

  // "#rrggbb" or "#rgb" as one RGBA pixel of an ImageData's Uint32Array (little-endian).
  function rgba32(hex) {
    let h = String(hex).trim().replace("#", "");
    if (h.length === 3) h = h.split("").map((c) => c + c).join("");
    const n = parseInt(h.slice(0, 6), 16) || 0;
    return ((255 << 24) | ((n & 0xff) << 16) | (n & 0xff00) | ((n >> 16) & 0xff)) >>> 0;
  }

  function clipText(ctx, text, x, y, maxW) {
    if (ctx.measureText(text).width <= maxW) { ctx.fillText(text, x, y); return; }
    let t = text;
    while (t.length > 1 && ctx.measureText(t + "…").width > maxW) t = t.slice(0, -1);
    ctx.fillText(t + "…", x, y);
  }

  function drawLegend() {
    const sc = SCALES[S.metric];
    const el = $("legend");
    el.textContent = "";
    const title = document.createElement("span");
    title.textContent = (S.metric === "loss" ? "loss" : S.metric + " RTT") + ":";
    el.appendChild(title);
    sc.labels.forEach((lab, i) => el.appendChild(swatch(PALETTE[i], lab + (i === BAD ? " (striped)" : ""))));
    el.appendChild(swatch(css("--nodata"), "no data"));
  }
  function swatch(color, label) {
    const s = document.createElement("span");
    const b = document.createElement("span");
    b.className = "sw";
    b.style.background = color;
    s.appendChild(b);
    s.appendChild(document.createTextNode(label));
    return s;
  }

  // ---- hit testing, tooltip, clicks
  function hit(ev) {
    const L = S.layout;
    if (!L) return null;
    const r = canvas.getBoundingClientRect();
    const x = ev.clientX - r.left, y = ev.clientY - r.top;
    const line = L.lines.find((l) => y >= l.y && y < l.y + l.h) || null;
    const col = L.cols.find((c) => x >= c.x && x < c.x + c.w) || null;
    const band = L.bandH && y < L.bandH ? L.colGroups.find((g) => {
      const cs = L.cols.filter((c) => c.group === g);
      return cs.length && x >= cs[0].x && x < cs[cs.length - 1].x + cs[cs.length - 1].w;
    }) : null;
    return { x, y, line, col: y >= L.top ? col : null, band, inLabels: x < L.labelW };
  }
  canvas.addEventListener("mousemove", (ev) => {
    const h = hit(ev);
    if (!h || !h.line || !h.col || h.line.header && !h.line.agg) { tooltip.hidden = true; return; }
    const { any, v } = valueAt(h.line, h.col);
    if (!any) { tooltip.hidden = true; return; }
    const srcName = h.line.agg ? "∑ " + h.line.group.key : S.mesh.sources[h.line.members[0]].name;
    const dstName = h.col.agg ? "∑ " + h.col.group.key : destLabel(S.mesh.destinations[h.col.members[0]]);
    let text = srcName + " → " + dstName + "\n";
    if (!h.line.agg && !h.col.agg) {
      const c = S.mesh.cells[S.grid[h.line.members[0] * S.mesh.destinations.length + h.col.members[0]]];
      text += "loss " + fmt("loss", c[F.loss]) + " (" + c[F.lost] + " of " + (c[F.lost] + c[F.received]) + ")\n" +
        "p50 " + fmt("p50", c[F.p50] === null ? null : c[F.p50] / 1000) + ", p99 " + fmt("p99", c[F.p99] === null ? null : c[F.p99] / 1000);
    } else {
      text += "worst " + fmt(S.metric, v) + " (click to expand)";
    }
    tooltip.textContent = text;
    tooltip.hidden = false;
    tooltip.style.left = (h.x + 14) + "px";
    tooltip.style.top = (h.y + 14) + "px";
  });
  canvas.addEventListener("mouseleave", () => { tooltip.hidden = true; });
  canvas.addEventListener("click", (ev) => {
    const h = hit(ev);
    if (!h) return;
    if (h.band) { toggle(S.collapsedCols, h.band.key); return; }
    if (h.line && h.line.header && (h.inLabels || !h.line.agg)) { toggle(S.collapsedRows, h.line.group.key); return; }
    if (!h.line || !h.col) return;
    if (h.col.agg) { toggle(S.collapsedCols, h.col.group.key); return; }
    if (h.line.agg) { toggle(S.collapsedRows, h.line.group.key); return; }
    const si = h.line.members[0], di = h.col.members[0];
    if (S.grid[si * S.mesh.destinations.length + di] < 0) return;
    const d = S.mesh.destinations[di];
    openPath(S.mesh.sources[si].name, d.name, d.probe);
  });
  function toggle(set, key) {
    if (set.has(key)) set.delete(key); else set.add(key);
    draw();
  }

  // ---- keyboard: the canvas is one tab stop (a roving focus over its cells): arrows move,
  // Home / End go to the row's ends, PageUp / PageDown 10 rows, Enter or Space opens the
  // path (or expands a collapsed group), Escape closes the path view. The focused cell is
  // ringed on the canvas and described in #matrix-focus (a polite live region).
  // S.focus: {line, col}: keys that survive redraws and live updates.
  const lineKey = (l) => (l.agg ? "g:" + l.group.key : "s:" + S.mesh.sources[l.members[0]].name);
  const colKey = (c) => {
    if (c.agg) return "g:" + c.group.key;
    const d = S.mesh.destinations[c.members[0]];
    return "d:" + d.probe + ":" + d.name;
  };
  // Lines that hold cells (group headers are not, unless collapsed into one line).
  const navLines = (L) => L.lines.filter((l) => !l.header || l.agg);
  // Indexes of the focused cell in the current layout, or null.
  function focusAt(L) {
    const lines = navLines(L);
    if (!lines.length || !L.cols.length) return null;
    let li = S.focus ? lines.findIndex((l) => lineKey(l) === S.focus.line) : -1;
    let ci = S.focus ? L.cols.findIndex((c) => colKey(c) === S.focus.col) : -1;
    if (li < 0) li = 0;
    if (ci < 0) ci = 0;
    return { lines, li, ci, line: lines[li], col: L.cols[ci] };
  }
  function describeCell(line, col) {
    const srcName = line.agg ? "group " + line.group.key : S.mesh.sources[line.members[0]].name;
    const dstName = col.agg ? "group " + col.group.key : destLabel(S.mesh.destinations[col.members[0]]);
    const { any, v } = valueAt(line, col);
    let text = srcName + " → " + dstName + ": ";
    if (!any) return text + "no path";
    if (!line.agg && !col.agg) {
      const c = S.mesh.cells[S.grid[line.members[0] * S.mesh.destinations.length + col.members[0]]];
      text += "loss " + fmt("loss", c[F.loss]) + " (" + c[F.lost] + " of " + (c[F.lost] + c[F.received]) + "), p50 " +
        fmt("p50", c[F.p50] === null ? null : c[F.p50] / 1000) + ", p99 " + fmt("p99", c[F.p99] === null ? null : c[F.p99] / 1000);
    } else {
      text += "worst " + (S.metric === "loss" ? "loss" : S.metric + " RTT") + " " + fmt(S.metric, v);
    }
    const cls = classOf(S.metric, v);
    if (cls >= 0) text += ", class " + SCALES[S.metric].labels[cls];
    return text;
  }
  function drawFocus(ctx, L) {
    const f = document.activeElement === canvas ? focusAt(L) : null;
    const out = $("matrix-focus");
    if (!f) { canvas.dataset.focus = ""; out.textContent = ""; return; }
    const { line, col, li, ci, lines } = f;
    S.focus = { line: lineKey(line), col: colKey(col) };
    const x = col.x, y = line.y, w = col.w - 1, h = line.h - 1;
    ctx.lineWidth = 2;
    ctx.strokeStyle = css("--bg");
    ctx.strokeRect(x + 1, y + 1, w - 2, h - 2);
    ctx.strokeStyle = css("--fg");
    ctx.strokeRect(x - 1, y - 1, w + 2, h + 2);
    // Said again when the focus moves, not on every live update (once a second).
    const key = S.focus.line + "|" + S.focus.col;
    if (canvas.dataset.focus !== key) {
      out.textContent = describeCell(line, col) + " (row " + (li + 1) + " of " + lines.length +
        ", column " + (ci + 1) + " of " + L.cols.length + ")";
    }
    canvas.dataset.focus = key;
    // Keep the focused cell in view inside the scrolling wrapper.
    const wrap = $("matrix-wrap");
    if (x < wrap.scrollLeft + L.labelW) wrap.scrollLeft = Math.max(0, x - L.labelW);
    else if (x + col.w > wrap.scrollLeft + wrap.clientWidth) wrap.scrollLeft = x + col.w - wrap.clientWidth;
    if (y < wrap.scrollTop + L.top) wrap.scrollTop = Math.max(0, y - L.top);
    else if (y + line.h > wrap.scrollTop + wrap.clientHeight) wrap.scrollTop = y + line.h - wrap.clientHeight;
  }
  function activate(line, col) {
    if (col.agg) { toggle(S.collapsedCols, col.group.key); return; }
    if (line.agg) { toggle(S.collapsedRows, line.group.key); return; }
    const si = line.members[0], di = col.members[0];
    if (S.grid[si * S.mesh.destinations.length + di] < 0) return;
    const d = S.mesh.destinations[di];
    openPath(S.mesh.sources[si].name, d.name, d.probe, canvas);
  }
  canvas.addEventListener("keydown", (ev) => {
    const L = S.layout;
    const f = L && focusAt(L);
    if (!f) return;
    let { li, ci } = f;
    const last = (n) => Math.max(0, n - 1);
    switch (ev.key) {
      case "ArrowUp": li = Math.max(0, li - 1); break;
      case "ArrowDown": li = Math.min(last(f.lines.length), li + 1); break;
      case "ArrowLeft": ci = Math.max(0, ci - 1); break;
      case "ArrowRight": ci = Math.min(last(L.cols.length), ci + 1); break;
      case "Home": ci = 0; if (ev.ctrlKey) li = 0; break;
      case "End": ci = last(L.cols.length); if (ev.ctrlKey) li = last(f.lines.length); break;
      case "PageUp": li = Math.max(0, li - 10); break;
      case "PageDown": li = Math.min(last(f.lines.length), li + 10); break;
      case "Enter": case " ": ev.preventDefault(); activate(f.line, f.col); return;
      default: return;
    }
    ev.preventDefault();
    S.focus = { line: lineKey(f.lines[li]), col: colKey(L.cols[ci]) };
    draw();
  });
  canvas.addEventListener("focus", () => draw());
  canvas.addEventListener("blur", () => draw());
  document.addEventListener("keydown", (ev) => {
    if (ev.key === "Escape" && S.path) { ev.preventDefault(); closePath(); }
  });

  // ---- mesh data
  function applyMesh(m) {
    S.mesh = m;
    const nd = m.destinations.length;
    const grid = new Int32Array(m.sources.length * nd).fill(-1);
    m.cells.forEach((c, i) => { grid[c[F.src] * nd + c[F.dst]] = i; });
    S.grid = grid;
    S.updates++;
    draw();
    setLive("live", "live · " + new Date(m.generated_ms).toLocaleTimeString());
  }
  function setLive(state, text) {
    const el = $("live");
    el.dataset.state = state;
    el.textContent = text;
  }
  function connect() {
    if (S.es) S.es.close();
    if (!window.EventSource) { poll(); return; }
    const es = new EventSource("/api/events?window=" + encodeURIComponent(S.window));
    S.es = es;
    es.addEventListener("mesh", (e) => {
      const t0 = performance.now();
      const m = JSON.parse(e.data);
      const t1 = performance.now();
      applyMesh(m);
      const ms = performance.now() - t0, p = S.perf;
      p.n++; p.totalMs += ms; p.maxMs = Math.max(p.maxMs, ms); p.lastMs = ms; p.bytes = e.data.length;
      p.parseMs += t1 - t0; p.maxParseMs = Math.max(p.maxParseMs, t1 - t0);
    });
    es.addEventListener("agents", (e) => applyAgents(JSON.parse(e.data)));
    es.onerror = () => setLive("error", "reconnecting…");
  }
  function poll() {
    fetchJson("/api/mesh?window=" + encodeURIComponent(S.window)).then(applyMesh).catch(() => setLive("error", "unreachable"));
    fetchJson("/api/agents").then(applyAgents).catch(() => {});
    setTimeout(poll, 2000);
  }
  function fetchJson(url) {
    return fetch(url, { cache: "no-store" }).then((r) => {
      if (!r.ok) { const e = new Error(url + ": " + r.status); e.status = r.status; throw e; }
      return r.json();
    });
  }

  // ---- agents
  function applyAgents(a) {
    S.agents = a;
    const tb = $("agents").querySelector("tbody");
    tb.textContent = "";
    const rows = a.agents.slice().sort((x, y) => (x.state === y.state ? NUMERIC.compare(x.name, y.name) : x.state === "down" ? -1 : 1));
    for (const ag of rows) {
      const tr = document.createElement("tr");
      tr.dataset.agent = ag.name;
      tr.dataset.state = ag.state;
      const total = ag.rtt_kernel_clock + ag.rtt_monotonic_clock;
      const cells = [
        [ag.state === "up" ? "● up" : "○ down", "state-" + ag.state],
        [ag.name], [[ag.site, ag.isp].filter(Boolean).join(" / ") || "—"],
        [ag.last_report_age_ms === null ? "never" : Math.round(ag.last_report_age_ms / 1000) + " s ago", "num"],
        [String(ag.paths), "num"],
        [String(ag.send_errors + ag.recv_errors), "num"],
      ];
      for (const [t, cls] of cells) {
        const td = document.createElement("td");
        td.textContent = t;
        if (cls) td.className = cls;
        tr.appendChild(td);
      }
      tr.title = (ag.addr ? "from " + ag.addr + ", " : "") + ag.reports + " reports, scheduling lag " +
        ag.scheduling_lag_us + " µs, " + ag.stray_replies + " stray replies, " +
        (total ? Math.round(100 * ag.rtt_kernel_clock / total) + "% of RTTs from kernel stamps" : "no RTT yet");
      tb.appendChild(tr);
    }
  }

  // ---- alerts (from the alert engine; 404 means none)
  function loadAlerts() {
    fetchJson("/api/alerts")
      .then((a) => renderAlerts(alertList(a)))
      .catch((e) => renderAlerts([], e.status === 404 ? null : String(e.message || e)))
      .finally(() => setTimeout(loadAlerts, 5000));
  }
  // `[{labels, annotations, state, startsAt}]`, or wrapped as `{alerts}` / `{data: {alerts}}`
  // (Prometheus' API, whose alerts say `activeAt`).
  function alertList(a) {
    const list = Array.isArray(a) ? a : a && Array.isArray(a.alerts) ? a.alerts :
      a && a.data && Array.isArray(a.data.alerts) ? a.data.alerts : [];
    return list.map((x) => Object.assign({}, x, { startsAt: x.startsAt || x.activeAt }));
  }
  // Shown in the panel (a storm of thousands would cost the page seconds of DOM work);
  // the rest are counted, and all are in /api/alerts.
  const MAX_ALERTS = 50;
  function renderAlerts(list, error) {
    const ul = $("alerts");
    ul.textContent = "";
    ul.dataset.count = String(list.length);
    if (!list.length) {
      const li = document.createElement("li");
      li.className = "muted";
      li.textContent = error ? "Alerts unavailable: " + error : "No alerts";
      ul.appendChild(li);
      return;
    }
    const rank = { firing: 0, pending: 1 };
    list.sort((a, b) => (rank[a.state] ?? 2) - (rank[b.state] ?? 2) || String(b.startsAt).localeCompare(String(a.startsAt)));
    for (const al of list.slice(0, MAX_ALERTS)) {
      const labels = al.labels || {}, ann = al.annotations || {};
      const li = document.createElement("li");
      const state = String(al.state || "firing").toLowerCase();
      const badge = document.createElement("span");
      badge.className = "badge " + state;
      badge.textContent = state;
      li.appendChild(badge);
      const name = document.createElement("b");
      name.textContent = labels.alertname || "alert";
      li.appendChild(name);
      if (labels.severity) li.appendChild(document.createTextNode(" · " + labels.severity));
      if (al.startsAt) li.appendChild(document.createTextNode(" · since " + since(al.startsAt)));
      if (labels.src && labels.dst) {
        li.appendChild(document.createTextNode(" · "));
        const a = document.createElement("a");
        a.textContent = labels.src + " → " + labels.dst;
        a.href = "#path";
        a.addEventListener("click", (ev) => { ev.preventDefault(); openPath(labels.src, labels.dst, labels.probe || "icmp"); });
        li.appendChild(a);
      }
      const rest = Object.keys(labels).filter((k) => !["alertname", "severity", "src", "dst"].includes(k));
      if (rest.length) {
        const d = document.createElement("div");
        d.className = "labels";
        d.textContent = rest.map((k) => k + "=" + labels[k]).join(" ");
        li.appendChild(d);
      }
      for (const k of Object.keys(ann)) {
        const d = document.createElement("div");
        d.className = "ann";
        const b = document.createElement("b");
        b.textContent = k + ": ";
        d.appendChild(b);
        d.appendChild(document.createTextNode(String(ann[k])));
        li.appendChild(d);
      }
      ul.appendChild(li);
    }
    if (list.length > MAX_ALERTS) {
      const li = document.createElement("li");
      li.className = "muted more";
      const rest = list.slice(MAX_ALERTS), n = (st) => rest.filter((a) => String(a.state || "firing").toLowerCase() === st).length;
      li.textContent = "… and " + rest.length + " more (" + n("firing") + " firing, " + n("pending") + " pending): all in /api/alerts";
      ul.appendChild(li);
    }
  }
  function since(iso) {
    const t = Date.parse(iso);
    if (Number.isNaN(t)) return String(iso);
    const s = Math.max(0, Math.round((Date.now() - t) / 1000));
    return s < 120 ? s + " s" : s < 7200 ? Math.round(s / 60) + " min" : Math.round(s / 3600) + " h";
  }

  // ---- path view
  let pathTimer = null;
  // `opener`: the element focus returns to when the view closes (else the element that
  // had it when the view opened).
  function openPath(src, dst, probe, opener) {
    S.path = { src, dst, probe, opener: opener || document.activeElement };
    $("path-section").hidden = false;
    $("path-title").textContent = src + " → " + (probe === "icmp" ? dst : probe + ":" + dst);
    loadPath();
    $("path-section").scrollIntoView({ block: "nearest" });
  }
  function closePath() {
    const opener = S.path && S.path.opener;
    S.path = null;
    $("path-section").hidden = true;
    clearTimeout(pathTimer);
    if (opener && opener.isConnected && opener.focus) opener.focus();
  }
  $("path-close").addEventListener("click", closePath);
  function loadPath() {
    clearTimeout(pathTimer);
    const p = S.path;
    if (!p) return;
    fetchJson("/api/path/" + encodeURIComponent(p.src) + "/" + encodeURIComponent(p.dst) + "?probe=" + encodeURIComponent(p.probe))
      .then((v) => { if (S.path === p) renderPath(v); })
      .catch((e) => { $("path-stats").textContent = "Path unavailable: " + e.message; })
      .finally(() => { if (S.path === p) pathTimer = setTimeout(loadPath, 10000); });
  }
  function ms(us) { return us === null || us === undefined ? "—" : fmt("p50", us / 1000); }
  function renderPath(v) {
    const t = $("path-stats");
    t.textContent = "";
    // Loss per direction: STAMP paths only (a stateful reflector numbers what it reflects).
    const directional = v.windows.some((w) => w.forward_loss !== null || w.reverse_loss !== null);
    const head = ["window", "p50", "p90", "p99", "min", "loss", "loss ≤ (95%)", "replies", "MOS"];
    if (directional) head.push("fwd / rev loss");
    const tr = document.createElement("tr");
    head.forEach((h, i) => {
      const th = document.createElement("th");
      th.textContent = h;
      if (i) th.className = "num";
      if (i === 9) th.title = "forward: lost on the way to the reflector; reverse: reflected, then lost on the way back";
      tr.appendChild(th);
    });
    t.appendChild(tr);
    for (const w of v.windows) {
      const r = document.createElement("tr");
      const vals = [w.window, ms(w.p50_us), ms(w.p90_us), ms(w.p99_us), ms(w.min_us),
        fmt("loss", w.loss), w.loss_upper === null ? "—" : fmt("loss", w.loss_upper),
        String(w.received), w.mos === null ? "—" : w.mos.toFixed(2)];
      if (directional) {
        vals.push(w.forward_loss === null && w.reverse_loss === null ? "—"
          : fmt("loss", w.forward_loss) + " / " + fmt("loss", w.reverse_loss));
      }
      vals.forEach((x, i) => { const td = document.createElement("td"); td.textContent = x; if (i) td.className = "num"; r.appendChild(td); });
      t.appendChild(r);
    }
    const cap = document.createElement("caption");
    cap.className = "muted";
    cap.textContent = "RFC 3550 jitter " + ms(v.jitter_us === null ? null : Math.round(v.jitter_us)) +
      " · since start: " + v.sent + " sent, " + v.received + " received, " + v.lost + " lost" +
      (directional ? " · fwd: lost on the way to the reflector, rev: on the way back" : "");
    t.appendChild(cap);
    renderHops(v);
    drawSmoke(v);
    drawLossJitter(v);
  }
  // The hop list toward the target (ICMP paths with hop discovery), last minute.
  function renderHops(v) {
    const t = $("path-hops");
    if (!t) return;
    t.textContent = "";
    t.hidden = !v.hops.length;
    if (!v.hops.length) return;
    const head = ["hop", "address", "role", "p50", "loss (1 min)", "note"];
    const tr = document.createElement("tr");
    head.forEach((h, i) => { const th = document.createElement("th"); th.textContent = h; if (i === 3 || i === 4) th.className = "num"; tr.appendChild(th); });
    t.appendChild(tr);
    for (const h of v.hops) {
      const r = document.createElement("tr");
      const vals = [String(h.ttl), h.addr || "*", h.role, ms(h.p50_us), fmt("loss", h.loss),
        h.ratelimited ? "rate-limits ICMP (not path loss)" : ""];
      vals.forEach((x, i) => { const td = document.createElement("td"); td.textContent = x; if (i === 3 || i === 4) td.className = "num"; r.appendChild(td); });
      t.appendChild(r);
    }
    const cap = document.createElement("caption");
    cap.className = "muted";
    cap.textContent = "Hops toward " + v.dst;
    t.appendChild(cap);
  }
  function setupCanvas(c) {
    const dpr = window.devicePixelRatio || 1;
    const w = c.clientWidth || 600, h = c.clientHeight || 200;
    c.width = Math.round(w * dpr);
    c.height = Math.round(h * dpr);
    const ctx = c.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    ctx.font = "11px system-ui, sans-serif";
    return { ctx, w, h };
  }
  const PAD = { l: 52, r: 52, t: 8, b: 20 };
  // The time range of a path's graphs: the last hour, or less (down to 10 min) while
  // the history is younger, so a new path is not a sliver at the right edge.
  function timeRange(v) {
    const t1 = v.generated_ms;
    const first = v.history.find((p) => p.rtt_us || p.lost);
    const age = first ? t1 - first.t_ms : 0;
    const span = Math.min(60, Math.max(10, Math.ceil(age / 600000) * 10)) * 60000;
    return [t1 - span, t1];
  }
  function timeAxis(ctx, w, h, t0, t1) {
    const X = (t) => PAD.l + (t - t0) / (t1 - t0) * (w - PAD.l - PAD.r);
    ctx.strokeStyle = css("--grid");
    ctx.fillStyle = css("--muted");
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    const span = Math.round((t1 - t0) / 60000), step = span > 30 ? 10 : span > 10 ? 5 : 2;
    for (let m = span; m >= 0; m -= step) {
      const x = X(t1 - m * 60000);
      ctx.beginPath(); ctx.moveTo(x, PAD.t); ctx.lineTo(x, h - PAD.b); ctx.stroke();
      ctx.fillText(m ? "−" + m + " min" : "now", x, h - PAD.b + 4);
    }
    return X;
  }
  function niceMax(v) {
    if (!(v > 0)) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const k of [1, 2, 2.5, 5, 10]) if (k * p >= v) return k * p;
    return 10 * p;
  }
  function valueAxis(ctx, w, h, max, side, label, color) {
    const Y = (v) => h - PAD.b - Math.min(1, v / max) * (h - PAD.t - PAD.b);
    ctx.fillStyle = color;
    ctx.textBaseline = "middle";
    ctx.textAlign = side === "l" ? "right" : "left";
    // Round ticks: 2 splits in 4 (0.5), 1, 2.5 and 5 in 5 (0.2, 0.5, 1).
    const mant = max / Math.pow(10, Math.floor(Math.log10(max)));
    const n = mant > 1.5 && mant < 2.2 ? 4 : 5;
    for (let i = 0; i <= n; i++) {
      const v = max * i / n;
      const y = Y(v);
      if (side === "l") {
        ctx.strokeStyle = css("--grid");
        ctx.beginPath(); ctx.moveTo(PAD.l, y); ctx.lineTo(w - PAD.r, y); ctx.stroke();
      }
      ctx.fillText(label(v), side === "l" ? PAD.l - 4 : w - PAD.r + 4, y);
    }
    return Y;
  }
  function drawSmoke(v) {
    const { ctx, w, h } = setupCanvas($("smoke"));
    const [t0, t1] = timeRange(v);
    const pts = v.history.filter((p) => p.t_ms + p.step_ms > t0);
    const p99s = pts.filter((p) => p.rtt_us).map((p) => p.rtt_us[6]).sort((a, b) => a - b);
    const top = p99s.length ? p99s[Math.floor(0.95 * (p99s.length - 1))] : 1000;
    const max = niceMax(top * 1.1 / 1000);
    const X = timeAxis(ctx, w, h, t0, t1);
    const Y = valueAxis(ctx, w, h, max, "l", (x) => fmtMs(x, max), css("--muted"));
    const band = css("--band");
    $("smoke").dataset.points = String(pts.filter((p) => p.rtt_us || p.lost).length);
    if (!pts.some((p) => p.rtt_us || p.lost)) {
      ctx.fillStyle = css("--muted");
      ctx.textAlign = "center";
      ctx.fillText("The first point appears about 16 s after the path's first report (10 s periods).", w / 2, h / 2);
    }
    for (const p of pts) {
      const x0 = Math.max(PAD.l, X(p.t_ms)), x1 = X(p.t_ms + p.step_ms);
      if (!p.rtt_us) {
        if (p.lost) { ctx.fillStyle = css("--bad"); ctx.fillRect(x0, PAD.t, x1 - x0, 4); }
        continue;
      }
      const q = p.rtt_us.map((u) => u / 1000);
      const layers = [[0, 6, 0.16], [1, 5, 0.28], [2, 4, 0.45]];
      for (const [lo, hi, a] of layers) {
        ctx.fillStyle = "rgba(" + band + "," + a + ")";
        ctx.fillRect(x0, Y(q[hi]), x1 - x0, Math.max(1, Y(q[lo]) - Y(q[hi])));
      }
      const cls = classOf("loss", p.loss);
      // The worst class in the theme's --bad (the cells' dark red vanishes on a dark page).
      ctx.fillStyle = cls === BAD ? css("--bad") : cls > 0 ? PALETTE[cls] : css("--fg");
      ctx.fillRect(x0, Y(q[3]) - 1, x1 - x0, 2.5);
    }
  }
  function fmtAxis(x) { return x >= 10 ? x.toFixed(0) : x >= 1 ? x.toFixed(1) : x.toFixed(2); }
  // A time in ms on an axis whose top is `max` ms: µs below 1 ms.
  function fmtMs(x, max) { return max < 1 ? Math.round(x * 1000) + " µs" : fmtAxis(x) + " ms"; }
  function drawLossJitter(v) {
    const { ctx, w, h } = setupCanvas($("lossjitter"));
    const [t0, t1] = timeRange(v);
    const pts = v.history.filter((p) => p.t_ms + p.step_ms > t0);
    const maxLoss = Math.max(0.05, ...pts.map((p) => p.loss || 0));
    $("lossjitter").dataset.lossPoints = String(pts.filter((p) => p.lost > 0).length);
    const maxJit = niceMax(Math.max(0.005, ...pts.map((p) => (p.jitter_us || 0) / 1000)) * 1.2);
    const X = timeAxis(ctx, w, h, t0, t1);
    const lossMax = niceMax(maxLoss * 100) / 100;
    const YL = valueAxis(ctx, w, h, lossMax, "l", (x) => +(x * 100).toFixed(2) + "%", css("--loss"));
    const YJ = valueAxis(ctx, w, h, maxJit, "r", (x) => fmtMs(x, maxJit), css("--jitter"));
    // Loss: solid stepped line with a light fill.
    ctx.strokeStyle = css("--loss");
    ctx.lineWidth = 2;
    ctx.setLineDash([]);
    ctx.beginPath();
    let started = false;
    for (const p of pts) {
      if (p.loss === null) { started = false; continue; }
      const x0 = Math.max(PAD.l, X(p.t_ms)), x1 = X(p.t_ms + p.step_ms), y = YL(p.loss);
      if (!started) { ctx.moveTo(x0, y); started = true; } else ctx.lineTo(x0, y);
      ctx.lineTo(x1, y);
    }
    ctx.stroke();
    // Jitter: dashed line.
    ctx.strokeStyle = css("--jitter");
    ctx.setLineDash([5, 3]);
    ctx.beginPath();
    started = false;
    for (const p of pts) {
      if (p.jitter_us === null) { started = false; continue; }
      const x0 = Math.max(PAD.l, X(p.t_ms)), x1 = X(p.t_ms + p.step_ms), y = YJ(p.jitter_us / 1000);
      if (!started) { ctx.moveTo(x0, y); started = true; } else ctx.lineTo(x0, y);
      ctx.lineTo(x1, y);
    }
    ctx.stroke();
    ctx.setLineDash([]);
  }

  // ---- controls
  for (const id of ["metric", "window", "group"]) {
    const el = $(id);
    el.value = S[id];
    el.addEventListener("change", () => {
      S[id] = el.value;
      const q = new URLSearchParams(location.search);
      q.set(id, el.value);
      history.replaceState(null, "", "?" + q.toString());
      if (id === "window") connect();
      if (id === "group") { S.collapsedRows.clear(); S.collapsedCols.clear(); }
      drawLegend();
      draw();
    });
  }
  let resizeTimer = null;
  window.addEventListener("resize", () => { clearTimeout(resizeTimer); resizeTimer = setTimeout(draw, 100); });
  if (window.matchMedia) {
    window.matchMedia("(prefers-color-scheme: dark)").addEventListener("change", () => {
      drawLegend(); draw(); if (S.path) loadPath();
    });
  }

  // ---- test and automation hooks (read-only)
  window.pathpulse = {
    palette: PALETTE.slice(),
    textOn: TEXT_ON.slice(),
    badClass: BAD,
    summary() {
      return {
        updates: S.updates,
        metric: S.metric,
        window: S.mesh ? S.mesh.window : null,
        generated: S.mesh ? S.mesh.generated_ms : null,
        live: $("live").textContent,
        perf: Object.assign({}, S.perf),
        sources: S.mesh ? S.mesh.sources.length : 0,
        destinations: S.mesh ? S.mesh.destinations.length : 0,
        paths: S.mesh ? S.mesh.cells.length : 0,
        cellsDrawn: Number(canvas.dataset.cells),
        cellsWithData: Number(canvas.dataset.withData),
        agents: S.agents ? S.agents.agents.map((a) => ({ name: a.name, state: a.state })) : [],
        alerts: Number($("alerts").dataset.count),
      };
    },
    // Stop live updates (a test then renders meshes of its own with `render`).
    pause() { if (S.es) S.es.close(); S.es = null; },
    // Apply and draw a mesh as /api/mesh returns it; milliseconds taken.
    render(mesh) {
      const t0 = performance.now();
      applyMesh(mesh);
      return performance.now() - t0;
    },
    // The keyboard focus on the matrix: its cell keys and what #matrix-focus says.
    focused() {
      return {
        active: document.activeElement === canvas,
        focus: canvas.dataset.focus || null,
        text: $("matrix-focus").textContent,
        path: S.path ? { src: S.path.src, dst: S.path.dst, probe: S.path.probe } : null,
      };
    },
    // Where the cell of src → dst is drawn, its value and class; sx, sy: a canvas pixel
    // (CSS px) showing the fill color only (away from the stripe and the text).
    cell(src, dst, probe) {
      const L = S.layout;
      if (!L) return null;
      const m = S.mesh;
      const si = m.sources.findIndex((s) => s.name === src);
      const di = m.destinations.findIndex((d) => d.name === dst && (!probe || d.probe === probe));
      if (si < 0 || di < 0) return null;
      const line = L.lines.find((l) => !l.header && l.members[0] === si);
      const col = L.cols.find((c) => !c.agg && c.members[0] === di);
      if (!line || !col) return null;
      const { any, v } = valueAt(line, col);
      const cls = classOf(S.metric, v);
      return {
        x: col.x, y: line.y, w: col.w, h: line.h, present: any, value: v, cls,
        color: cls >= 0 ? PALETTE[cls] : null,
        sx: col.x + Math.floor(col.w * 0.8), sy: line.y + Math.floor(line.h * 0.2),
      };
    },
  };

  drawLegend();
  connect();
  loadAlerts();
})();
