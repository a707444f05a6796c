/* MRQ dashboard: a small SVG line chart (our own code, no library). Labels are text nodes, never HTML.
 *
 * MRQChart.line(container, {start: unixSeconds, step: 60, series: [{name, values: [number|null], color}],
 *                           unit: "jobs"})
 */
"use strict";
(function () {
  const NS = "http://www.w3.org/2000/svg";
  const W = 600, H = 170, L = 44, R = 8, T = 10, B = 22;
  const PALETTE = ["#2f7ed8", "#8bbc21", "#910000", "#1aadce", "#492970", "#f28f43", "#77a1e5", "#c42525",
                   "#a6c96a", "#6b6b6b"];

  function svg(tag, attrs) {
    const el = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
    return el;
  }

  function niceMax(v) {
    if (!(v > 0)) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }

  function fmt(v) {
    if (v >= 1e6) return (v / 1e6).toFixed(1) + "M";
    if (v >= 1e4) return Math.round(v / 1e3) + "k";
    return String(Math.round(v * 10) / 10);
  }

  function clock(unix) {
    const d = new Date(unix * 1000);
    return String(d.getHours()).padStart(2, "0") + ":" + String(d.getMinutes()).padStart(2, "0");
  }

  function line(container, opts) {
    const series = (opts.series || []).filter((s) => s && Array.isArray(s.values));
    const n = Math.max(1, ...series.map((s) => s.values.length));
    let max = 0;
    for (const s of series) for (const v of s.values) if (typeof v === "number" && v > max) max = v;
    max = niceMax(max);
    const x = (i) => L + (n <= 1 ? 0 : (i * (W - L - R)) / (n - 1));
    const y = (v) => T + (H - T - B) * (1 - v / max);
    const root = svg("svg", {viewBox: `0 0 ${W} ${H}`, role: "img", class: "linechart", preserveAspectRatio: "none"});
    const title = svg("title");
    title.textContent = opts.title || "";
    root.appendChild(title);
    for (const frac of [0, 0.5, 1]) {
      root.appendChild(svg("line", {x1: L, x2: W - R, y1: y(max * frac), y2: y(max * frac), class: "grid"}));
      const label = svg("text", {x: L - 4, y: y(max * frac) + 4, "text-anchor": "end", class: "axis"});
      label.textContent = fmt(max * frac);
      root.appendChild(label);
    }
    if (opts.start) {
      const first = svg("text", {x: L, y: H - 6, class: "axis"});
      first.textContent = clock(opts.start);
      const last = svg("text", {x: W - R, y: H - 6, "text-anchor": "end", class: "axis"});
      const end = new Date((opts.start + (n - 1) * (opts.step || 60)) * 1000);
      const zone = new Intl.DateTimeFormat("en-US", {timeZoneName: "short"}).formatToParts(end)
        .find((p) => p.type === "timeZoneName");
      last.textContent = clock(end.getTime() / 1000) + (zone ? " " + zone.value : "");
      root.append(first, last);
    }
    series.forEach((s, k) => {
      const color = s.color || PALETTE[k % PALETTE.length];
      let d = "";
      let pen = false;
      s.values.forEach((v, i) => {
        if (typeof v !== "number") { pen = false; return; }
        d += (pen ? " L" : " M") + x(i).toFixed(1) + " " + y(v).toFixed(1);
        pen = true;
      });
      if (d) root.appendChild(svg("path", {d: d.trim(), fill: "none", stroke: color, "stroke-width": 1.8,
                                           "data-series": s.name}));
      s.values.forEach((v, i) => {  // a point without neighbours (a new worker, a sparse sample) shows as a dot
        const alone = typeof v === "number" && typeof s.values[i - 1] !== "number" && typeof s.values[i + 1] !== "number";
        if (alone) root.appendChild(svg("circle", {cx: x(i).toFixed(1), cy: y(v).toFixed(1), r: 2.5, fill: color}));
      });
    });
    const legend = document.createElement("div");
    legend.className = "legend";
    series.forEach((s, k) => {
      const item = document.createElement("span");
      const swatch = document.createElement("i");
      swatch.style.background = s.color || PALETTE[k % PALETTE.length];
      item.append(swatch, document.createTextNode(" " + s.name));
      legend.appendChild(item);
    });
    if (!series.length) {
      const empty = document.createElement("span");
      empty.className = "hint";
      empty.textContent = "no data yet";
      legend.appendChild(empty);
    }
    container.replaceChildren(root, legend);
  }

  window.MRQChart = {line, PALETTE};
})();
