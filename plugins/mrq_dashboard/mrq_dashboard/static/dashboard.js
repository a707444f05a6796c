/* MRQ dashboard: renders each page from the JSON API. Everything from jobs (params, results, logs,
 * tracebacks, paths, queue names) is inserted with textContent, never as HTML. No inline script: the
 * Content-Security-Policy forbids it. */
"use strict";
(function () {
  const body = document.body;
  const ROOT = body.dataset.root || "";
  const PAGE = body.dataset.page;
  const READONLY = body.dataset.readonly === "true";
  const STATUS_COLORS = {success: "#3a9d23", failed: "#c42525", queued: "#2f7ed8", started: "#1aadce",
    retry: "#f28f43", maxretries: "#910000", timeout: "#b5179e", abort: "#6b6b6b", cancel: "#999999",
    interrupt: "#e6a700", maxconcurrency: "#492970"};
  let configPromise = null;

  // ------------------------------------------------------------------ DOM helpers
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "text") el.textContent = String(v);
      else if (k === "class") el.className = v;
      else if (k === "href") { const safe = safeHref(v); if (safe) el.setAttribute("href", safe); }
      else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v === true ? "" : String(v));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return el;
  }

  /** A link inside the dashboard: our own paths, or a plugin's relative "page?args" (nothing else). */
  function safeHref(v) {
    const s = String(v);
    if (s.startsWith(ROOT + "/") && !s.startsWith("//")) return s;
    if (/^[a-z0-9_\-/]*(\?[^\s"'<>`]*)?$/i.test(s) && !s.startsWith("/")) return ROOT + "/" + s;
    return null;
  }

  function link(path, params) {
    const qs = new URLSearchParams();
    for (const [k, v] of Object.entries(params || {})) if (v !== null && v !== undefined && v !== "") qs.set(k, v);
    const q = qs.toString();
    return ROOT + "/" + path + (q ? "?" + q : "");
  }

  function fill(tbody, rows) { tbody.replaceChildren(...rows); }

  function fmtNum(v) { return v === null || v === undefined ? "" : Number(v).toLocaleString("en-US"); }

  function fmtDuration(s) {
    if (s === null || s === undefined) return "";
    s = Math.round(s);
    if (s < 60) return s + " s";
    if (s < 3600) return Math.floor(s / 60) + " min " + (s % 60) + " s";
    if (s < 86400) return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
    return Math.floor(s / 86400) + " d " + Math.floor((s % 86400) / 3600) + " h";
  }

  /** The short name of the browser's time zone at that date ("UTC", "CET", "GMT+2"): every time shown is in it. */
  function tzName(d) {
    const part = new Intl.DateTimeFormat("en-US", {timeZoneName: "short"}).formatToParts(d || new Date())
      .find((p) => p.type === "timeZoneName");
    return part ? part.value : "";
  }

  function fmtDate(iso) {
    if (!iso) return "";
    const d = new Date(iso);
    if (isNaN(d)) return String(iso);
    const ago = (Date.now() - d.getTime()) / 1000;
    return d.toLocaleString("sv-SE").replace("T", " ") + " " + tzName(d) + (ago >= 0 ? " (" + fmtDuration(ago) + " ago)" : "");
  }

  /** A date in a table cell: the time of day for today (the full date in its tooltip), else the day. */
  function dateCell(iso) {
    if (!iso) return h("td", {});
    const d = new Date(iso);
    const today = new Date().toDateString() === d.toDateString();
    const text = isNaN(d) ? String(iso) : today ? d.toLocaleTimeString("sv-SE") : d.toLocaleString("sv-SE").slice(0, 16);
    return h("td", {class: "date", title: fmtDate(iso), text});
  }

  function badge(status) { return h("span", {class: "status status-" + String(status).replace(/[^a-z]/g, ""), text: status}); }

  function statusLinks(counts, extra) {
    return Object.entries(counts || {}).sort((a, b) => b[1] - a[1]).map(([s, n]) =>
      h("a", {class: "count status-" + s, href: link("jobs", Object.assign({status: s}, extra)), text: s + " " + fmtNum(n)}));
  }

  function pre(text, cls) { return h("pre", {class: cls || ""}, text === null || text === undefined ? "" : String(text)); }

  function json(value) { return JSON.stringify(value, null, 2); }

  // ------------------------------------------------------------------ API
  /** What an action did, in a status line above the page (cleared by the next action or after 10 s). */
  let noticeTimer = null;
  function showNotice(text) {
    const box = document.getElementById("notice");
    if (!box) return;
    clearTimeout(noticeTimer);
    box.hidden = !text;
    box.textContent = text || "";
    if (text) noticeTimer = setTimeout(() => { box.hidden = true; box.textContent = ""; }, 10000);
  }

  async function jobAction(id, action) {
    const short = "job " + String(id).slice(-8);
    const data = await post("jobs/" + id + "/" + action);
    if (action === "cancel") showNotice(data.cancelled ? "Cancelled " + short + "." : short + " had already ended: nothing to cancel.");
    else showNotice(data.requeued ? "Requeued " + short + ": it waits in its queue." : short + " was not requeued (it is queued or running).");
  }

  function showError(err) {
    const box = document.getElementById("error");
    if (!err) { box.hidden = true; box.textContent = ""; return; }
    box.hidden = false;
    box.textContent = String(err.message || err);
  }

  /** API URLs are absolute on the origin: a page opened as http://user:pass@host/ has those credentials in
   * its address, and fetch() refuses URLs that carry credentials (the browser's auth cache sends them). */
  function apiUrl(path, params) { return location.origin + link("api/" + path, params); }

  async function api(path, params) {
    const response = await fetch(apiUrl(path, params), {credentials: "same-origin", headers: {Accept: "application/json"}});
    const data = await response.json().catch(() => ({error: response.status + " " + response.statusText}));
    if (!response.ok) throw new Error(data.error || response.statusText);
    return data;
  }

  function config() {
    if (!configPromise) configPromise = api("config");
    return configPromise;
  }

  async function post(path, params, payload) {
    const cfg = await config();
    const response = await fetch(apiUrl(path, params), {
      method: "POST", credentials: "same-origin",
      headers: {"X-CSRF-Token": cfg.csrf_token, "Content-Type": "application/json", Accept: "application/json"},
      body: JSON.stringify(payload || {}),
    });
    const data = await response.json().catch(() => ({error: response.status + " " + response.statusText}));
    if (!response.ok) throw new Error(data.error || response.statusText);
    return data;
  }

  function button(label, onclick, cls) {
    if (READONLY) return null;
    return h("button", {type: "button", class: cls || "", text: label, onclick: async (event) => {
      const target = event.currentTarget;
      target.disabled = true;
      try { await onclick(); showError(null); await refreshNow(); } catch (err) { showError(err); }
      finally { target.disabled = false; }
    }});
  }

  function freshness(meta) {
    const el = document.getElementById("freshness");
    if (!meta) { el.textContent = ""; return; }
    const ttl = Number(window.MRQ_CACHE_TTL || 0);
    el.textContent = "counts computed " + fmtDuration(meta.age) + " ago " +
      (ttl > 0 ? "(shared, recomputed at most every " + ttl + " s)" : "(on every request)");
  }

  function pager(data, params) {
    const box = document.getElementById("pager");
    if (!box) return;
    const skip = data.skip || 0, limit = data.limit || 50;
    const items = [];
    if ("next_before" in data) {  // the jobs list: pages by cursor (the last id shown), never by a deep skip
      if (params.cursor || skip) items.push(h("a", {href: link(PAGE, Object.assign({}, params, {cursor: null, skip: null})), text: "← newest", class: "prev"}));
      items.push(h("span", {text: " " + (data.rows || 0) + " jobs shown "}));
      if (data.next_before) items.push(h("a", {href: link(PAGE, Object.assign({}, params, {cursor: data.next_before, skip: null})), text: "older →", class: "next"}));
      box.replaceChildren(...items);
      return;
    }
    if (skip > 0) items.push(h("a", {href: link(PAGE, Object.assign({}, params, {skip: Math.max(0, skip - limit)})), text: "← newer", class: "prev"}));
    items.push(h("span", {text: " rows " + (skip + 1) + "–" + (skip + (data.rows || 0)) + " "}));
    if (data.more) items.push(h("a", {href: link(PAGE, Object.assign({}, params, {skip: skip + limit})), text: "older →", class: "next"}));
    box.replaceChildren(...items);
  }

  function urlParams() { return Object.fromEntries(new URLSearchParams(location.search).entries()); }

  // ------------------------------------------------------------------ pages
  const pages = {};

  pages.overview = async function () {
    const data = await api("overview");
    const card = (label, value, hint, href) => h("a", {class: "card", href: href || null},
      h("span", {class: "value", text: value}), h("span", {class: "label", text: label}), hint ? h("span", {class: "hint", text: hint}) : null);
    document.getElementById("cards").replaceChildren(
      card("workers alive", fmtNum(data.workers_alive), data.workers_dead ? data.workers_dead + " dead" : "", link("workers")),
      card("pool usage", data.pool_usage === null ? "–" : Math.round(data.pool_usage * 100) + "%", data.running + " of " + data.greenlets + " greenlets busy", link("workers")),
      card("jobs/s now", String(data.jobs_per_second), "", null),
      card("queued", fmtNum(data.queued), data.delayed ? fmtNum(data.delayed) + " delayed" : "", link("queues")),
      card("failing", fmtNum(data.failing), "failed, maxretries, timeout...", link("exceptions")),
      card("jobs stored", fmtNum(data.total), "", link("statuses")));
    const hist = data.history;
    MRQChart.line(document.getElementById("chart-done"), {start: hist.start, title: "jobs per minute",
      series: Object.entries(hist.done).map(([s, values]) => ({name: s, values, color: STATUS_COLORS[s]}))});
    MRQChart.line(document.getElementById("chart-queues"), {start: hist.start, title: "queue sizes",
      series: Object.entries(hist.queues).slice(0, 10).map(([q, values]) => ({name: q, values}))});
    MRQChart.line(document.getElementById("chart-rss"), {start: hist.start, title: "memory",
      series: [{name: "MB, all workers", values: hist.rss}]});
    renderPanels(document.getElementById("panels"), data.panels);
    freshness(data.counts);
  };

  function renderPanels(box, panels) {
    box.replaceChildren(...(panels || []).map((panel) => h("section", {class: "panel"},
      h("h2", {text: panel.title}),
      panel.text ? h("p", {text: panel.text}) : null,
      (panel.rows || []).length ? h("table", {}, h("tbody", {}, (panel.rows || []).map((row) =>
        h("tr", {}, (Array.isArray(row) ? row : [row]).map((cell) => h("td", {}, cellNode(cell))))))) : null)));
  }

  function cellNode(cell) {
    if (cell && typeof cell === "object" && !Array.isArray(cell) && "text" in cell) {
      return cell.link ? h("a", {href: cell.link, text: cell.text}) : h("span", {text: cell.text});
    }
    if (cell !== null && typeof cell === "object") return h("code", {text: JSON.stringify(cell)});
    return h("span", {text: cell === null || cell === undefined ? "" : String(cell)});
  }

  pages.statuses = async function () {
    const data = await api("statuses");
    fill(document.querySelector("#statuses tbody"), data.statuses.map((r) => h("tr", {},
      h("td", {}, h("a", {href: link("jobs", {status: r.status})}, badge(r.status))),
      h("td", {class: "num", text: fmtNum(r.count)}))));
    const statuses = data.statuses.map((r) => r.status);
    document.querySelector("#by-queue thead tr").replaceChildren(h("th", {text: "Queue"}), ...statuses.map((s) => h("th", {class: "num", text: s})));
    fill(document.querySelector("#by-queue tbody"), Object.entries(data.queues).sort().map(([q, counts]) => h("tr", {},
      h("td", {}, h("a", {href: link("jobs", {queue: q}), text: q})),
      ...statuses.map((s) => h("td", {class: "num"}, counts[s] ? h("a", {href: link("jobs", {queue: q, status: s}), text: fmtNum(counts[s])}) : "")))));
    freshness(data.counts);
  };

  pages.queues = async function () {
    const params = urlParams();
    const data = await api("queues", {skip: params.skip, limit: params.limit});
    MRQChart.line(document.getElementById("chart-queues"), {start: data.history.start,
      series: Object.entries(data.history.queues).slice(0, 10).map(([q, values]) => ({name: q, values}))});
    fill(document.querySelector("#queues tbody"), data.queues.map((q) => h("tr", {"data-queue": q.name},
      h("td", {}, h("a", {href: link("jobs", {queue: q.name}), text: q.name})),
      h("td", {class: "num", text: fmtNum(q.size)}),
      h("td", {class: "num", text: fmtNum(q.delayed)}),
      h("td", {class: "num", text: String(q.jobs_per_second)}),
      h("td", {text: q.eta_seconds === null ? "" : fmtDuration(q.eta_seconds)}),
      h("td", {class: "counts"}, statusLinks(q.counts, {queue: q.name})),
      h("td", {}, q.paused ? h("span", {class: "status status-paused", text: "paused"}) : h("span", {text: "active"})),
      h("td", {}, q.paused
        ? button("Resume", () => post("queues/" + encodeURIComponent(q.name) + "/resume"), "resume")
        : button("Pause", () => post("queues/" + encodeURIComponent(q.name) + "/pause"), "pause")))));
    pager(Object.assign({rows: data.queues.length}, data), params);
    freshness(data.counts);
  };

  const openStacks = new Set();  // the running jobs whose stack is expanded: kept across refreshes

  pages.workers = async function () {
    const params = urlParams();
    const data = await api("workers", {skip: params.skip, limit: params.limit});
    const alive = data.workers.filter((w) => !w.dead && w.status !== "stop");
    const start = alive.length ? alive[0].history.start : null, step = alive.length ? alive[0].history.step : 60;
    MRQChart.line(document.getElementById("chart-rss"), {start, step, series: alive.slice(0, 10).map((w) => ({name: w.name, values: w.history.rss}))});
    MRQChart.line(document.getElementById("chart-cpu"), {start, step, series: alive.slice(0, 10).map((w) => ({name: w.name, values: w.history.cpu}))});
    fill(document.querySelector("#workers tbody"), data.workers.map((w) => {
      const spark = h("div", {class: "spark"});
      MRQChart.line(spark, {start: w.history.start, step: w.history.step, series: [{name: "MB", values: w.history.rss}]});
      return h("tr", {class: w.dead ? "dead" : (w.status === "stop" ? "stopped" : "")},
        h("td", {}, h("a", {href: link("jobs", {worker: w.id}), text: w.name}), w.dead ? h("span", {class: "status status-failed", text: "dead"}) : null),
        h("td", {text: w.host}), h("td", {class: "num", text: w.pid}),
        h("td", {text: (w.queues || []).join(" ")}),
        h("td", {}, badge(w.status)),
        h("td", {text: w.report_age === null ? "" : fmtDuration(w.report_age) + " ago"}),
        h("td", {class: "num", text: w.cpu_percent === null ? "" : w.cpu_percent}),
        h("td", {class: "num", text: fmtNum(w.rss_mb)}),
        h("td", {}, spark),
        h("td", {class: "num", text: fmtNum(w.done)}),
        h("td", {}, (w.jobs || []).map((j) => h("details", {class: "stack", "data-job": j.id, open: openStacks.has(String(j.id)),
                                                   ontoggle: (event) => { if (event.currentTarget.open) openStacks.add(String(j.id)); else openStacks.delete(String(j.id)); }},
          h("summary", {}, h("a", {href: link("jobs/" + j.id), text: j.path}), " ", j.progress !== null && j.progress !== undefined ? Math.round(j.progress * 100) + "%" : ""),
          pre((j.stack || []).join(""))))));
    }));
    pager(Object.assign({rows: data.workers.length}, data), params);
  };

  // -- jobs
  function jobFilters() {
    const params = urlParams();
    const out = {};
    for (const k of ["queue", "path", "status", "worker", "exceptiontype", "id", "params", "after", "before"]) if (params[k]) out[k] = params[k];
    return out;
  }

  function filterBody(filters) {
    const out = {};
    for (const [k, v] of Object.entries(filters)) {
      if (k === "params") { out.params = v; continue; }
      const values = String(v).split(",").map((x) => x.trim()).filter(Boolean);
      out[k] = values.length === 1 ? values[0] : values;
    }
    return out;
  }

  function jobDetails(job, box) {
    const rows = [["id", job.id], ["path", job.path], ["queue", job.queue], ["status", null], ["worker", job.worker_name ? job.worker_name + " (" + job.worker + ")" : job.worker],
      ["retries", job.retry_count], ["queued", fmtDate(job.datequeued)], ["started", fmtDate(job.datestarted)], ["updated", fmtDate(job.dateupdated)],
      ["expires", fmtDate(job.dateexpires)], ["total time", job.totaltime === undefined ? "" : job.totaltime + " s"],
      ["progress", job.progress === undefined || job.progress === null ? "" : Math.round(job.progress * 100) + "%"], ["exception", job.exceptiontype || ""]];
    const actions = h("div", {class: "actions"},
      ["queued", "started", "retry", "interrupt"].includes(job.status) ? button("Cancel", () => jobAction(job.id, "cancel"), "danger cancel") : null,
      job.status !== "queued" && job.status !== "started" ? button("Requeue", () => jobAction(job.id, "requeue"), "requeue") : null);
    const parts = [
      actions,
      h("dl", {class: "fields"}, rows.filter(([k, v]) => k === "status" || (v !== null && v !== undefined && v !== "")).map(([k, v]) =>
        h("div", {}, h("dt", {text: k}), h("dd", {}, k === "status" ? badge(job.status) : String(v))))),
      h("h3", {text: "Run it here"}), pre(job.command, "command"),
      h("h3", {text: "Params"}), pre(json(job.params), "params"),
    ];
    if ("result" in job) parts.push(h("h3", {text: "Result"}), pre(json(job.result), "result"));
    if (job.stack) parts.push(h("h3", {text: "Current stack (at the worker's last report)"}), pre(job.stack.join(""), "stack"));
    if (job.traceback) parts.push(h("h3", {text: "Traceback"}), pre(job.traceback, "traceback"));
    if ((job.traceback_history || []).length) {
      parts.push(h("h3", {text: "Traceback history (" + job.traceback_history.length + ")"}));
      for (const entry of job.traceback_history) {
        parts.push(h("details", {class: "history"}, h("summary", {}, fmtDate(entry.date), " ", badge(entry.status), " ", entry.exceptiontype || ""), pre(entry.traceback, "traceback")));
      }
    }
    const panels = h("div", {class: "panels"});
    renderPanels(panels, job.panels);
    parts.push(panels);
    box.replaceChildren(...parts);
  }

  pages.jobs = async function () {
    const params = urlParams();
    const filters = jobFilters();
    const cfg = await config();
    const data = await api("jobs", Object.assign({}, filters, {skip: params.skip, cursor: params.cursor, limit: params.limit || 50}));
    const columns = cfg.columns || [];
    const head = document.querySelector("#jobs thead tr");
    if (head.dataset.extra !== String(columns.length)) {
      head.dataset.extra = String(columns.length);
      for (const c of columns) head.appendChild(h("th", {text: c.title}));
      if (!READONLY) head.appendChild(h("th", {text: ""}));
    }
    const width = 11 + columns.length + (READONLY ? 0 : 1);
    const open = new Set([...document.querySelectorAll("#jobs tr.details")].map((tr) => tr.dataset.job));
    const rows = [];
    for (const j of data.jobs) {
      const detailRow = h("tr", {class: "details", "data-job": j.id, hidden: !open.has(j.id)}, h("td", {colspan: width}, h("div", {class: "job-inline"})));
      const toggle = h("button", {type: "button", class: "toggle", title: "logs, result, traceback", text: open.has(j.id) ? "▾" : "▸", onclick: async () => {
        detailRow.hidden = !detailRow.hidden;
        toggle.textContent = detailRow.hidden ? "▸" : "▾";
        if (!detailRow.hidden) await loadInline(j.id, detailRow.querySelector(".job-inline"));
      }});
      rows.push(h("tr", {"data-job": j.id},
        h("td", {}, toggle),
        h("td", {}, h("a", {href: link("jobs/" + j.id), text: String(j.id).slice(-8), title: j.id})),
        h("td", {}, h("a", {href: link("jobs", {path: j.path}), text: j.path})),
        h("td", {class: "params"}, h("code", {text: j.params})),
        h("td", {}, badge(j.status), j.exceptiontype ? h("span", {class: "exc", text: " " + j.exceptiontype}) : null),
        h("td", {}, h("a", {href: link("jobs", {queue: j.queue}), text: j.queue})),
        h("td", {}, j.worker ? h("a", {href: link("jobs", {worker: j.worker}), text: String(j.worker).slice(-6)}) : ""),
        dateCell(j.datequeued), dateCell(j.datestarted), dateCell(j.dateupdated),
        h("td", {class: "num", text: j.totaltime === null || j.totaltime === undefined ? "" : Number(j.totaltime).toFixed(3)}),
        ...columns.map((c) => h("td", {}, cellNode(j.extra[c.name]))),
        READONLY ? null : h("td", {class: "actions"},
          ["queued", "started", "retry", "interrupt"].includes(j.status) ? button("Cancel", () => jobAction(j.id, "cancel"), "danger cancel") : null,
          j.status !== "queued" && j.status !== "started" ? button("Requeue", () => jobAction(j.id, "requeue"), "requeue") : null)));
      rows.push(detailRow);
      if (open.has(j.id)) loadInline(j.id, detailRow.querySelector(".job-inline"));
    }
    fill(document.querySelector("#jobs tbody"), rows);
    if (!data.jobs.length) document.querySelector("#jobs tbody").appendChild(h("tr", {}, h("td", {colspan: width, class: "hint", text: "No job matches these filters."})));
    pager(Object.assign({rows: data.jobs.length}, data), params);
  };

  async function loadInline(id, box) {
    try {
      const [job, logs] = await Promise.all([api("jobs/" + id), api("jobs/" + id + "/logs")]);
      jobDetails(job, box);
      box.append(h("h3", {text: "Logs"}), pre(logs.text || "(no log lines)", "logs"));
    } catch (err) { box.replaceChildren(h("p", {class: "error", text: String(err.message || err)})); }
  }

  function setupJobsForm() {
    const form = document.getElementById("filters");
    const params = urlParams();
    for (const input of form.querySelectorAll("input, select")) if (params[input.name]) input.value = params[input.name];
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const out = {};
      for (const input of form.querySelectorAll("input, select")) if (input.value.trim()) out[input.name] = input.value.trim();
      if (out.limit === "50") delete out.limit;
      location.assign(link("jobs", out));
    });
    document.getElementById("clear-filters").setAttribute("href", link("jobs"));
    config().then((cfg) => {
      const list = document.getElementById("status-names");
      const groups = document.getElementById("groups");
      for (const [name, statuses] of Object.entries(cfg.status_groups)) {
        list.appendChild(h("option", {value: name}));
        groups.appendChild(h("a", {class: "group", href: link("jobs", Object.assign(jobFilters(), {status: name})), text: name, title: statuses.join(", ")}));
      }
    });
    if (READONLY) return;  // no bulk buttons on a read-only dashboard
    const result = document.getElementById("bulk-result");
    const run = (action) => async () => {
      const filters = jobFilters();
      try {
        const {count} = await api("jobs/count", Object.assign({action}, filters));
        const described = Object.keys(filters).length ? Object.entries(filters).map(([k, v]) => k + "=" + v).join(", ") : "no filter: ALL jobs";
        if (!window.confirm(action[0].toUpperCase() + action.slice(1) + " " + count + " job(s) matching " + described + "?")) return;
        const done = await post("jobs/" + action, {}, filterBody(filters));
        result.textContent = done.queued_job ? "queued as job " + done.queued_job : action + ": " + Object.entries(done).filter(([k]) => k !== "filter" && k !== "action").map(([k, v]) => k + " " + v).join(", ");
        showError(null);
        await refreshNow();
      } catch (err) { showError(err); }
    };
    document.getElementById("bulk-cancel").addEventListener("click", run("cancel"));
    document.getElementById("bulk-requeue").addEventListener("click", run("requeue"));
  }

  // -- one job, its logs streaming while it runs
  const jobState = {cursor: null, text: "", status: null, logsTimer: null, logsBox: null, follow: true, followBox: null};

  /** The logs box follows new lines (tail mode) unless the reader scrolled up; scrolling back down resumes. */
  function followControl() {
    if (!jobState.followBox) {
      const input = h("input", {type: "checkbox", id: "follow-logs", onchange: () => {
        jobState.follow = input.checked;
        if (jobState.follow) scrollLogs();
      }});
      input.checked = jobState.follow;
      jobState.followBox = h("label", {class: "follow", title: "keep the newest lines in sight"}, input, " Follow new lines");
    }
    jobState.followBox.hidden = !(jobState.status === "started" || jobState.status === "queued");
    return jobState.followBox;
  }

  function setFollow(on) {
    jobState.follow = on;
    const input = document.getElementById("follow-logs");
    if (input) input.checked = on;
  }

  function scrollLogs() {
    const box = jobState.logsBox;
    if (box) box.scrollTop = box.scrollHeight;
  }

  pages.job = async function () {
    const id = body.dataset.job;
    const job = await api("jobs/" + id);
    jobState.status = job.status;
    document.getElementById("title").textContent = "Job " + id;
    const box = document.getElementById("job");
    const detail = h("div", {});
    jobDetails(job, detail);
    if (!jobState.logsBox) {
      jobState.logsBox = pre(jobState.text || "", "logs");
      jobState.logsBox.addEventListener("scroll", () => {
        const box = jobState.logsBox;
        const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 8;
        if (atBottom !== jobState.follow) setFollow(atBottom);  // scrolled up: pause; back at the end: follow
      });
    }
    jobState.logsBox.id = "logs";
    box.replaceChildren(detail, h("h3", {}, "Logs ", followControl()), jobState.logsBox);
    if (jobState.follow) scrollLogs();
    await pollLogs();
    if (!jobState.logsTimer) jobState.logsTimer = setInterval(async () => {
      if (document.hidden) return;
      if (jobState.status === "started" || jobState.status === "queued") {
        try {
          await pollLogs();
          const fresh = await api("jobs/" + id);
          if (fresh.status !== jobState.status) await render();
        } catch (err) { showError(err); }
      }
    }, 1000);
  };

  async function pollLogs() {
    const id = body.dataset.job;
    const params = jobState.cursor ? {cursor: jobState.cursor} : {};
    const data = await api("jobs/" + id + "/logs", params);
    if (data.text) {
      jobState.text += (jobState.text ? "\n" : "") + data.text;
      jobState.logsBox.textContent = jobState.text;
      if (jobState.follow) scrollLogs();
    } else if (!jobState.text) {
      jobState.logsBox.textContent = "";
    }
    jobState.cursor = data.cursor || jobState.cursor;
  }

  pages.taskpaths = async function () {
    const params = urlParams();
    const data = await api("taskpaths", {skip: params.skip, limit: params.limit});
    fill(document.querySelector("#taskpaths tbody"), data.taskpaths.map((r) => h("tr", {},
      h("td", {}, h("a", {href: link("jobs", {path: r.path}), text: r.path})),
      h("td", {class: "num", text: fmtNum(r.total)}),
      h("td", {class: "counts"}, statusLinks(r.counts, {path: r.path})))));
    pager(Object.assign({rows: data.taskpaths.length}, data), params);
    freshness(data.counts);
  };

  pages.exceptions = async function () {
    const params = urlParams();
    const data = await api("exceptions", {skip: params.skip, limit: params.limit});
    const statuses = data.statuses.join(",");
    fill(document.querySelector("#exceptions tbody"), data.exceptions.map((r) => h("tr", {},
      h("td", {}, h("a", {href: link("jobs", {path: r.path, status: statuses}), text: r.path})),
      h("td", {}, h("a", {class: "exception", href: link("jobs", {path: r.path, exceptiontype: r.exceptiontype, status: statuses}), text: r.exceptiontype || "(none)"})),
      h("td", {class: "num", text: fmtNum(r.count)}),
      dateCell(r.last))));
    if (!data.exceptions.length) document.querySelector("#exceptions tbody").appendChild(h("tr", {}, h("td", {colspan: 4, class: "hint", text: "No failed job."})));
    pager(Object.assign({rows: data.exceptions.length}, data), params);
    freshness(data.counts);
  };

  pages.plugins = async function () {
    const data = await api("plugins");
    const total = data.workers_alive;
    fill(document.querySelector("#plugins tbody"), data.plugins.map((p) => h("tr", {},
      h("td", {text: p.name}), h("td", {text: (p.worker_versions.length ? p.worker_versions.join(", ") : p.version) || "-"}),
      h("td", {}, h("span", {class: "status " + (p.workers ? "status-success" : "status-cancel"),
                             text: total ? (p.workers ? "on " + p.workers + " of " + total + " workers" : "on no worker") : "no live worker"})),
      h("td", {text: p.enabled ? "enabled" : "-"}),
      h("td", {text: (p.hooks || []).join(", ")}), h("td", {}, p.source ? h("code", {text: p.source}) : null))));
  };

  pages.plugin_page = async function () {
    const name = body.dataset.pluginPage;
    const data = await api("p/" + encodeURIComponent(name), urlParams());
    document.getElementById("plugin-text").textContent = data.text || "";
    document.querySelector("#plugin-table thead tr").replaceChildren(...data.columns.map((c) => h("th", {text: c})));
    fill(document.querySelector("#plugin-table tbody"), data.rows.map((row) => h("tr", {}, (Array.isArray(row) ? row : [row]).map((cell) => h("td", {}, cellNode(cell))))));
  };

  // ------------------------------------------------------------------ refresh loop (never piles up)
  let timer = null;
  let running = false;

  async function render() {
    const page = pages[PAGE];
    if (!page || running) return;
    running = true;
    try { await page(); showError(null); } catch (err) { showError(err); } finally { running = false; }
  }

  async function refreshNow() { clearTimeout(timer); await render(); schedule(); }

  function interval() {
    const select = document.getElementById("autorefresh");
    return Number(select.value) || 0;
  }

  function schedule() {
    clearTimeout(timer);
    const seconds = interval();
    if (seconds > 0) timer = setTimeout(async () => { if (!document.hidden) await render(); schedule(); }, seconds * 1000);
  }

  function setupRefresh() {
    const select = document.getElementById("autorefresh");
    const saved = localStorage.getItem("mrq-autorefresh");
    const wanted = saved !== null ? saved : String(Number(body.dataset.autorefresh) || 0);
    if (![...select.options].some((o) => o.value === wanted)) select.appendChild(h("option", {value: wanted, text: wanted + " s"}));
    select.value = wanted;
    select.addEventListener("change", () => { localStorage.setItem("mrq-autorefresh", select.value); schedule(); });
  }

  document.addEventListener("DOMContentLoaded", async () => {
    for (const th of document.querySelectorAll("th[data-tz]")) th.textContent += " (" + tzName() + ")";
    setupRefresh();
    if (PAGE === "jobs") setupJobsForm();
    try { const cfg = await config(); window.MRQ_CACHE_TTL = cfg.cache_ttl; } catch (err) { showError(err); }
    await render();
    schedule();
  });
  document.addEventListener("visibilitychange", () => { if (!document.hidden) refreshNow(); });
})();
