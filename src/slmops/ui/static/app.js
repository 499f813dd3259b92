// slmops console: live serving charts (polling the console's JSON, drawn as SVG) and small
// progressive enhancements. No inline scripts (the pages send a strict CSP).
"use strict";
(function () {
  const PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"];
  const KEEP = 120; // points per series
  const SVGNS = "http://www.w3.org/2000/svg";

  function el(name, attrs) {
    const node = document.createElementNS(SVGNS, name);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    return node;
  }

  function niceMax(v) {
    if (!(v > 0)) return 1;
    const exp = Math.pow(10, Math.floor(Math.log10(v)));
    for (const step of [1, 2, 2.5, 5, 10]) if (v <= step * exp) return step * exp;
    return 10 * exp;
  }

  function draw(figure, series) {
    const svg = figure.querySelector("svg");
    const W = 320, H = 140, L = 34, R = 6, T = 6, B = 16;
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    const names = Object.keys(series).sort();
    let tMin = Infinity, tMax = -Infinity, yMax = 0;
    for (const n of names) for (const [t, y] of series[n]) {
      tMin = Math.min(tMin, t); tMax = Math.max(tMax, t); if (y != null) yMax = Math.max(yMax, y);
    }
    yMax = niceMax(yMax * 1.05);
    const span = Math.max(tMax - tMin, 10);
    const sx = (t) => L + (W - L - R) * (t - (tMax - span)) / span;
    const sy = (y) => T + (H - T - B) * (1 - y / yMax);
    for (let i = 0; i <= 4; i++) {
      const y = sy(yMax * i / 4);
      svg.appendChild(el("line", {x1: L, x2: W - R, y1: y, y2: y, stroke: "#eee"}));
      const label = el("text", {x: L - 3, y: y + 3, "text-anchor": "end", "font-size": 9, fill: "#666"});
      label.textContent = +(yMax * i / 4).toPrecision(3);
      svg.appendChild(label);
    }
    const legend = figure.querySelector("[data-role=legend]");
    legend.textContent = "";
    names.forEach((n, i) => {
      const color = PALETTE[i % PALETTE.length];
      const pts = series[n].filter(([, y]) => y != null).map(([t, y]) => `${sx(t).toFixed(1)},${sy(y).toFixed(1)}`);
      const line = el("polyline", {class: "series", points: pts.join(" "), fill: "none", stroke: color,
                                   "stroke-width": 1.8, "data-series": n, "data-count": pts.length});
      svg.appendChild(line);
      const key = document.createElement("span");
      key.className = "key";
      key.style.setProperty("--c", color);
      key.textContent = n;
      legend.appendChild(key);
    });
  }

  function cell(value) {
    const td = document.createElement("td");
    td.className = "num";
    td.textContent = value == null ? "-" : (+value).toLocaleString(undefined, {maximumFractionDigits: 2});
    return td;
  }

  function watch(section) {
    const url = section.dataset.sampleUrl;
    const interval = +section.dataset.interval || 1000;
    const figures = Array.from(section.querySelectorAll("figure.live"));
    const series = Object.fromEntries(figures.map((f) => [f.dataset.metric, {}]));
    const status = section.querySelector("[data-role=status]");
    const counter = section.querySelector("[data-role=samples]");
    const latest = section.querySelector("[data-role=latest]");
    let samples = 0;

    async function tick() {
      let data;
      try {
        const resp = await fetch(url, {headers: {accept: "application/json"}, credentials: "same-origin"});
        data = await resp.json();
      } catch (e) {
        data = {ok: false, error: "the console did not answer"};
      }
      if (!data.ok) {
        status.textContent = data.error || "unreachable";
        status.className = "badge status down";
        return;
      }
      status.textContent = "up";
      status.className = "badge status up";
      samples += 1;
      counter.textContent = samples;
      const t = data.t;
      latest.textContent = "";
      for (const [version, row] of Object.entries(data.versions || {})) {
        for (const f of figures) {
          const m = f.dataset.metric;
          if (!(m in row)) continue;
          const s = (series[m][version] = series[m][version] || []);
          s.push([t, row[m]]);
          if (s.length > KEEP) s.shift();
        }
        const tr = document.createElement("tr");
        tr.dataset.version = version;
        const name = document.createElement("td");
        name.textContent = version;
        tr.appendChild(name);
        for (const k of ["requests_per_second", "error_rate_pct", "latency_p50_ms", "latency_p95_ms", "ttft_p50_ms",
                         "tokens_per_second", "queue_depth", "batch_size", "memory_mb", "requests_total"]) {
          tr.appendChild(cell(row[k]));
        }
        latest.appendChild(tr);
      }
      if (data.server_memory_mb != null) {
        const s = (series.memory_mb["server (RSS)"] = series.memory_mb["server (RSS)"] || []);
        s.push([t, data.server_memory_mb]);
        if (s.length > KEEP) s.shift();
      }
      for (const f of figures) {
        draw(f, series[f.dataset.metric]);
        const values = Object.values(series[f.dataset.metric]).map((s) => s[s.length - 1][1]).filter((v) => v != null);
        f.querySelector("[data-role=last]").textContent = values.length ? "now " + values.map((v) => +(+v).toPrecision(3)).join(" / ") : "";
      }
    }

    async function loop() {
      await tick();
      setTimeout(loop, interval);
    }
    loop();
  }

  document.addEventListener("DOMContentLoaded", () => {
    document.querySelectorAll("section.endpoint[data-sample-url]").forEach(watch);
    document.querySelectorAll("[data-autosubmit]").forEach((node) =>
      node.addEventListener("change", () => node.form && node.form.requestSubmit()));
  });
})();
