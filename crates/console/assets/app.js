// Sagaflow console: plain JavaScript, no build step, nothing loaded from
// elsewhere. Every value from the server is escaped before it is shown.
"use strict";

const main = document.getElementById("main");
let timer = null;
let me = { role: "none", read_only: true };

function esc(v) {
  return String(v ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}
function when(ms) {
  return ms == null ? "" : new Date(ms).toISOString().replace("T", " ").replace("Z", "");
}
function pretty(v) {
  return esc(JSON.stringify(v, null, 2));
}
function flash(text, isError) {
  const f = document.getElementById("flash");
  f.textContent = text;
  f.className = isError ? "error" : "";
  f.style.display = "block";
  setTimeout(() => { f.style.display = "none"; }, 5000);
}
function token() {
  return sessionStorage.getItem("sagaflow-console-token") || "";
}
async function api(path, options) {
  const opts = Object.assign({ headers: {} }, options || {});
  const t = token();
  if (t) opts.headers["Authorization"] = "Bearer " + t;
  if (opts.body && typeof opts.body !== "string") {
    opts.body = JSON.stringify(opts.body);
    opts.headers["Content-Type"] = "application/json";
  }
  const r = await fetch(path, opts);
  const body = await r.json().catch(() => ({}));
  if (!r.ok) {
    const msg = (body.error && (body.error.code + ": " + body.error.message)) || r.status;
    throw new Error(msg);
  }
  return body;
}
function poll(fn, ms) {
  clearInterval(timer);
  timer = setInterval(() => fn().catch(() => {}), ms);
}
function badge(status) {
  return `<span class="status ${esc(status)}">${esc(status)}</span>`;
}

// ------------------------------------------------------------- filters

const FILTER_FIELDS = ["id", "type", "status", "key", "error", "attr", "from", "to"];

function filterForm(prefix, values) {
  const v = values || {};
  return `
  <form class="filters" id="${prefix}-form">
    <label>Saga id (or its start)<input id="${prefix}-id" value="${esc(v.id)}"></label>
    <label>Type<input id="${prefix}-type" value="${esc(v.type)}"></label>
    <label>Status<select id="${prefix}-status">
      ${["", "RUNNING", "COMPENSATING", "COMPLETED", "COMPENSATED", "FAILED"].map((s) => `<option ${s === v.status ? "selected" : ""}>${s}</option>`).join("")}
    </select></label>
    <label>Trigger key<input id="${prefix}-key" value="${esc(v.key)}"></label>
    <label>Error text<input id="${prefix}-error" value="${esc(v.error)}"></label>
    <label>Attribute (name=value)<input id="${prefix}-attr" value="${esc(v.attr)}" placeholder="customer_id=c-1"></label>
    <label>Started from<input id="${prefix}-from" type="datetime-local" value="${esc(v.from)}"></label>
    <label>to<input id="${prefix}-to" type="datetime-local" value="${esc(v.to)}"></label>
    <button type="submit" id="${prefix}-submit" class="primary">Search</button>
  </form>`;
}
function readFilter(prefix) {
  const out = {};
  for (const f of FILTER_FIELDS) {
    const el = document.getElementById(`${prefix}-${f}`);
    if (el && el.value.trim()) out[f] = el.value.trim();
  }
  return out;
}
function filterQuery(f) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(f)) {
    if (k === "attr") {
      const i = v.indexOf("=");
      if (i > 0) q.append("attr." + v.slice(0, i).trim(), v.slice(i + 1).trim());
    } else if (k === "from" || k === "to") {
      q.append(k, String(Date.parse(v + "Z")));
    } else {
      q.append(k, v);
    }
  }
  return q.toString();
}

// ------------------------------------------------------------- pages

async function overview() {
  const render = async () => {
    const o = await api("/api/overview");
    const rows = Object.entries(o.counts).map(([type, by]) =>
      `<tr><td>${esc(type)}</td>${["RUNNING", "COMPENSATING", "COMPLETED", "COMPENSATED", "FAILED"].map((s) =>
        `<td><a href="#/sagas?type=${encodeURIComponent(type)}&status=${s}">${by[s] || 0}</a></td>`).join("")}</tr>`).join("");
    const oldest = o.oldest_running
      ? `<a href="#/saga/${encodeURIComponent(o.oldest_running.saga_id)}">${esc(o.oldest_running.saga_id)}</a><div class="muted">since ${when(o.oldest_running.started_at)}</div>`
      : `<span class="muted">none</span>`;
    main.innerHTML = `
      <h1>Overview</h1>
      <div class="cards">
        <div class="card"><div class="muted">Sagas</div><div class="n" id="ov-total">${o.total}</div></div>
        <div class="card"><div class="muted">Started / s (last minute)</div><div class="n">${o.started_per_sec.toFixed(2)}</div></div>
        <div class="card"><div class="muted">Ended / s (last minute)</div><div class="n">${o.ended_per_sec.toFixed(2)}</div></div>
        <div class="card"><div class="muted">Oldest running</div>${oldest}</div>
        <div class="card"><div class="muted">Dead letters (open / all)</div><div class="n"><a href="#/dead-letters" id="ov-dlq">${o.dead_letters_open} / ${o.dead_letters_total}</a></div></div>
        <div class="card"><div class="muted">Unreadable records skipped</div><div class="n">${o.skipped}</div></div>
      </div>
      <h2>By type and status</h2>
      <table id="ov-counts"><tr><th>Type</th><th>Running</th><th>Compensating</th><th>Completed</th><th>Compensated</th><th>Failed</th></tr>${rows}</table>`;
  };
  await render();
  poll(render, 3000);
}

async function sagas(params) {
  const initial = Object.fromEntries(params);
  main.innerHTML = `<h1>Sagas</h1>${filterForm("search", initial)}<div id="results"></div>`;
  const run = async () => {
    const q = filterQuery(readFilter("search"));
    const page = await api("/api/sagas?" + q + "&limit=100");
    const rows = page.sagas.map((s) => `
      <tr class="clickable saga-row" data-id="${esc(s.saga_id)}">
        <td>${esc(s.saga_id)}</td><td>${esc(s.saga_type)} v${esc(s.saga_version)}</td><td>${badge(s.status)}</td>
        <td>${esc(s.key)}</td><td>${esc(s.current_step)}</td><td>${when(s.started_at)}</td><td class="muted">${esc(s.error)}</td>
      </tr>`).join("");
    document.getElementById("results").innerHTML = `
      <p class="muted" id="result-count">${page.sagas.length}${page.next ? "+" : ""} sagas (${page.took_ms.toFixed(1)} ms)</p>
      <table><tr><th>Saga</th><th>Type</th><th>Status</th><th>Key</th><th>Step</th><th>Started</th><th>Error</th></tr>${rows}</table>`;
    for (const tr of document.querySelectorAll("tr.saga-row")) {
      tr.addEventListener("click", () => { location.hash = "#/saga/" + encodeURIComponent(tr.dataset.id); });
    }
  };
  document.getElementById("search-form").addEventListener("submit", (e) => {
    e.preventDefault();
    history.replaceState(null, "", "#/sagas?" + new URLSearchParams(readFilter("search")).toString());
    run().catch((err) => flash(err.message, true));
  });
  await run();
  poll(run, 3000);
}

function durations(events) {
  // Time from each step's (or compensation's) start to this event.
  const startedAt = {};
  return events.map((e) => {
    const key = (e.kind.startsWith("COMPENSATION") ? "c:" : "s:") + (e.step || "");
    if (e.kind === "STEP_STARTED" || e.kind === "COMPENSATION_STEP_STARTED") {
      startedAt[key] = e.at;
      return "";
    }
    return startedAt[key] != null && e.step ? `${e.at - startedAt[key]} ms` : "";
  });
}

async function sagaPage(id) {
  const render = async () => {
    const d = await api("/api/sagas/" + encodeURIComponent(id));
    const durs = durations(d.events);
    const events = d.events.map((e, i) => {
      const data = ["input", "output", "error"].filter((k) => e[k] != null).map((k) =>
        `<details class="data-${k}" ${k === "error" ? "open" : ""}><summary>${k}</summary><pre>${pretty(e[k])}</pre></details>`).join("");
      return `<div class="event ${esc(e.kind)}" data-kind="${esc(e.kind)}" data-step="${esc(e.step)}">
        <div class="head"><span class="kind">${esc(e.kind)}</span><span>${esc(e.step)}</span>
        ${e.attempt != null ? `<span class="muted">attempt ${esc(e.attempt)}</span>` : ""}
        <span class="muted">${when(e.at)}</span><span class="dur">${durs[i]}</span></div>
        ${e.detail ? `<div class="muted detail">${esc(e.detail)}</div>` : ""}${data}</div>`;
    }).join("");
    const attrs = Object.entries(d.attributes).map(([k, v]) => `<code>${esc(k)}=${esc(v)}</code>`).join(" ");
    const operate = me.role === "operator";
    main.innerHTML = `
      <h1>${esc(d.saga_id)} <span id="saga-status">${badge(d.status)}</span></h1>
      <p>${esc(d.saga_type)} v${esc(d.saga_version)} · started ${when(d.started_at)}${d.ended_at ? " · ended " + when(d.ended_at) : ""}
       · key <code id="saga-key">${esc(d.key)}</code> ${attrs}</p>
      ${d.error ? `<p class="error" id="saga-error">${esc(d.error)}</p>` : ""}
      ${operate ? `<p><button id="retry-button" class="primary">Retry</button> <button id="abort-button" class="danger">Abort</button></p>` : `<p class="muted">${me.read_only ? "read-only console" : "enter the operator token to retry or abort"}</p>`}
      <div class="layout">
        <div class="timeline" id="timeline"><h2>Timeline</h2>${events}</div>
        <div><h2>Path taken</h2>${d.diagram_svg}
          ${d.output != null ? `<h2>Result</h2><pre class="payload" id="saga-output">${pretty(d.output)}</pre>` : ""}</div>
      </div>`;
    if (operate) {
      for (const action of ["retry", "abort"]) {
        document.getElementById(action + "-button").addEventListener("click", async () => {
          if (action === "abort" && !confirm("Abort " + id + "? Its completed steps will be compensated.")) return;
          try {
            await api(`/api/sagas/${encodeURIComponent(id)}/${action}`, { method: "POST", body: { actor: "console" } });
            flash(action + " requested for " + id);
          } catch (err) { flash(err.message, true); }
        });
      }
    }
  };
  await render();
  poll(render, 2000);
}

async function bulk(params) {
  const initial = Object.fromEntries(params);
  main.innerHTML = `<h1>Bulk retry / abort</h1>
    <p class="muted">Pick the sagas with a filter, count them with a dry run, then act. Each action is written to the audit log.</p>
    ${filterForm("bulk", initial)}
    <p><label>Action <select id="bulk-action"><option>retry</option><option>abort</option></select></label>
    <button id="bulk-dry-run">Dry run</button> <span id="bulk-count"></span>
    <button id="bulk-act" class="danger" disabled>Act</button></p><div id="bulk-result"></div>`;
  clearInterval(timer);
  let counted = null;
  document.getElementById("bulk-form").addEventListener("submit", (e) => { e.preventDefault(); });
  document.getElementById("bulk-dry-run").addEventListener("click", async () => {
    const action = document.getElementById("bulk-action").value;
    const q = filterQuery(readFilter("bulk"));
    try {
      const r = await api(`/api/bulk/${action}?${q}`, { method: "POST", body: { dry_run: true } });
      counted = { action, q, n: r.matched };
      document.getElementById("bulk-count").textContent = `${r.matched} sagas match`;
      const act = document.getElementById("bulk-act");
      act.disabled = r.matched === 0;
      act.textContent = `${action} ${r.matched} sagas`;
    } catch (err) { flash(err.message, true); }
  });
  document.getElementById("bulk-act").addEventListener("click", async () => {
    if (!counted) return;
    try {
      const r = await api(`/api/bulk/${counted.action}?${counted.q}`, { method: "POST", body: { actor: "console" } });
      document.getElementById("bulk-result").innerHTML = `<p id="bulk-done">${esc(counted.action)}: ${r.succeeded} accepted, ${r.failed} failed</p>${r.errors.length ? `<pre>${pretty(r.errors)}</pre>` : ""}`;
      document.getElementById("bulk-act").disabled = true;
    } catch (err) { flash(err.message, true); }
  });
}

async function deadLetters() {
  const render = async () => {
    const r = await api("/api/dead-letters?limit=200");
    const operate = me.role === "operator";
    const rows = r.dead_letters.map((d) => `
      <tr class="dlq-row" data-id="${d.id}">
        <td>${operate && !d.redriven_at ? `<input type="checkbox" class="dlq-select" value="${d.id}">` : ""}</td>
        <td><a href="#/dead-letter/${d.id}">${d.id}</a></td><td>${when(d.at)}</td><td>${esc(d.code)}</td><td>${esc(d.reason)}</td>
        <td>${esc(d.source_topic)} ${d.source_partition != null ? esc(d.source_partition) + "/" + esc(d.source_offset) : ""}</td>
        <td>${d.redriven_at ? "redriven " + when(d.redriven_at) : '<span class="open">open</span>'}</td>
      </tr>`).join("");
    const checked = new Set([...document.querySelectorAll(".dlq-select:checked")].map((c) => c.value));
    main.innerHTML = `<h1>Dead letters</h1>
      ${operate ? `<p><button id="select-all">Select all open</button> <button id="redrive-selected" class="primary">Redrive selected</button></p>` : ""}
      <table id="dlq-table"><tr><th></th><th>#</th><th>At</th><th>Code</th><th>Reason</th><th>Source</th><th>State</th></tr>${rows}</table>`;
    for (const c of document.querySelectorAll(".dlq-select")) c.checked = checked.has(c.value);
    if (operate) {
      document.getElementById("select-all").addEventListener("click", () => {
        for (const c of document.querySelectorAll(".dlq-select")) c.checked = true;
      });
      document.getElementById("redrive-selected").addEventListener("click", async () => {
        const ids = [...document.querySelectorAll(".dlq-select:checked")].map((c) => Number(c.value));
        if (!ids.length) return flash("nothing selected", true);
        try {
          const res = await api("/api/dead-letters/redrive", { method: "POST", body: { ids, actor: "console" } });
          flash(`redriven: ${res.redriven.length}, errors: ${res.errors.length}`);
          await render();
        } catch (err) { flash(err.message, true); }
      });
    }
  };
  await render();
  poll(async () => {
    if (!document.querySelector(".dlq-select:checked")) await render();
  }, 4000);
}

async function deadLetter(id) {
  clearInterval(timer);
  const d = await api("/api/dead-letters/" + id);
  const headers = d.headers.map(([k, v]) => `<tr><td>${esc(k)}</td><td>${esc(v)}</td></tr>`).join("");
  main.innerHTML = `<h1>Dead letter ${d.id}</h1>
    <p><b>${esc(d.code)}</b> ${esc(d.reason)}</p>
    <p>From <code>${esc(d.source_topic)}</code> partition ${esc(d.source_partition)} offset ${esc(d.source_offset)}; stored at ${esc(d.topic)}/${d.partition}/${d.offset}, ${when(d.at)}.
     ${d.redriven_at ? `Redriven ${when(d.redriven_at)} by ${esc(d.redriven_by)}.` : ""}</p>
    ${me.role === "operator" && !d.redriven_at ? `<p><button id="redrive-one" class="primary">Redrive to ${esc(d.source_topic)}</button></p>` : ""}
    <h2>Key</h2><pre class="payload">${esc(d.key)}</pre>
    <h2>Payload (${esc(d.payload_format)}, ${d.value_bytes} bytes)</h2><pre class="payload" id="dlq-payload">${pretty(d.payload)}</pre>
    <h2>Headers</h2><table>${headers}</table>`;
  const b = document.getElementById("redrive-one");
  if (b) b.addEventListener("click", async () => {
    try {
      await api("/api/dead-letters/redrive", { method: "POST", body: { ids: [d.id], actor: "console" } });
      flash("redriven");
      await deadLetter(id);
    } catch (err) { flash(err.message, true); }
  });
}

async function audit() {
  const render = async () => {
    const r = await api("/api/audit");
    const rows = r.audit.map((a) => `<tr><td>${when(a.at)}</td><td>${esc(a.who)}</td><td>${esc(a.action)}</td><td><code>${esc(a.filter)}</code></td><td>${a.matched}</td><td>${a.succeeded}</td><td>${a.failed}</td></tr>`).join("");
    main.innerHTML = `<h1>Audit</h1><table id="audit-table"><tr><th>When</th><th>Who</th><th>Action</th><th>Filter</th><th>Matched</th><th>Succeeded</th><th>Failed</th></tr>${rows}</table>`;
  };
  await render();
  poll(render, 5000);
}

async function definitionsPage() {
  clearInterval(timer);
  const r = await api("/api/definitions");
  if (!r.definitions.length) {
    main.innerHTML = `<h1>Definitions</h1><p class="muted">No definitions configured (the console's <code>sagas</code> setting).</p>`;
    return;
  }
  main.innerHTML = `<h1>Definitions</h1>` + r.definitions.map((d) => `
    <section class="definition-card" data-type="${esc(d.saga_type)}">
      <h2>${esc(d.saga_type)} v${esc(d.version)}</h2>
      <p class="muted">${esc(d.description)} · trigger ${esc(d.trigger)}
      ${d.search_attributes.length ? " · search attributes " + d.search_attributes.map(esc).join(", ") : ""}
      ${d.sensitive.length ? " · sensitive " + d.sensitive.map(esc).join(", ") : ""}</p>
      ${d.svg}
    </section>`).join("");
}

// ------------------------------------------------------------- routing

async function route() {
  clearInterval(timer);
  const hash = location.hash || "#/";
  const [path, query] = hash.slice(1).split("?");
  const params = new URLSearchParams(query || "");
  for (const a of document.querySelectorAll("header nav a")) {
    a.classList.toggle("active", a.getAttribute("href") === "#" + path);
  }
  try {
    me = await api("/api/whoami");
    document.getElementById("who").textContent = `${me.role}${me.read_only ? " · read-only console" : ""}`;
    if (me.role === "none") {
      main.innerHTML = `<h1>Token needed</h1><p>This console wants a bearer token: enter it above.</p>`;
      return;
    }
    if (path === "/" || path === "") return await overview();
    if (path === "/sagas") return await sagas(params);
    if (path.startsWith("/saga/")) return await sagaPage(decodeURIComponent(path.slice(6)));
    if (path === "/bulk") return await bulk(params);
    if (path === "/dead-letters") return await deadLetters();
    if (path.startsWith("/dead-letter/")) return await deadLetter(path.slice(13));
    if (path === "/audit") return await audit();
    if (path === "/definitions") return await definitionsPage();
    main.innerHTML = `<p>Unknown page.</p>`;
  } catch (err) {
    main.innerHTML = `<p class="error">${esc(err.message)}</p>`;
  }
}

document.getElementById("token-form").addEventListener("submit", (e) => {
  e.preventDefault();
  sessionStorage.setItem("sagaflow-console-token", document.getElementById("token").value);
  document.getElementById("token").value = "";
  route();
});
window.addEventListener("hashchange", route);
route();
