"use strict";
// The sealgate console: plain DOM, no framework, no build step.  Every
// server value is put in the page with textContent, never as HTML.
(function () {
  let me = null;
  let timer = null;
  const $ = (sel) => document.querySelector(sel);

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "text") e.textContent = v;
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v);
    }
    for (const c of children) e.append(c);
    return e;
  }

  // ISO 8601 in the viewer's zone, with the offset: unambiguous to anyone
  // it is pasted to, and the same form the CLI and the API use.
  function when(t) {
    if (!t) return "–";
    const d = new Date(t * 1000);
    const pad = (n) => String(Math.trunc(Math.abs(n))).padStart(2, "0");
    const off = -d.getTimezoneOffset();
    const zone = off === 0 ? "Z" : (off > 0 ? "+" : "-") + pad(off / 60) + ":" + pad(off % 60);
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T` +
           `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}${zone}`;
  }

  function say(text, bad) {
    const s = $("#status");
    s.textContent = text;
    s.className = "status" + (bad ? " bad" : " good");
  }

  async function api(path, options) {
    options = options || {};
    const headers = {"accept": "application/json"};
    if (options.body !== undefined) headers["content-type"] = "application/json";
    if (me && me.csrf) headers["x-sealgate-csrf"] = me.csrf;
    const r = await fetch(path, {method: options.method || "GET", credentials: "same-origin",
                                 headers, body: options.body === undefined ? undefined : JSON.stringify(options.body)});
    if (r.status === 401) {
      location.href = "/login";
      throw new Error("not signed in");
    }
    const type = r.headers.get("content-type") || "";
    const data = /^application\/(problem\+)?json/.test(type) ? await r.json() : await r.text();
    if (!r.ok) throw new Error((data && data.error) || ("HTTP " + r.status));
    return data;
  }

  // -- approvals -------------------------------------------------------------

  function notifications(t) {
    if (!t.notifications || !t.notifications.length) return el("span", {class: "hint", text: "no notifications configured"});
    const list = el("ul", {class: "notes"});
    for (const d of t.notifications) {
      const text = `${d.target}: ${d.event} ${d.state}` + (d.attempts > 1 ? ` after ${d.attempts} attempts` : "") +
                   (d.error ? ` (${d.error})` : "");
      list.append(el("li", {class: d.state === "failed" ? "bad" : "", text}));
    }
    return list;
  }

  async function decide(t, action, reasonBox) {
    const reason = reasonBox.value.trim();
    if (action === "deny" && !reason) {
      say("A denial needs a reason.", true);
      reasonBox.focus();
      return;
    }
    try {
      const r = await api(`/api/approvals/${encodeURIComponent(t.id)}/${action}`, {method: "POST", body: {reason}});
      say(`Ticket ${r.id}: ${r.state}` + (r.state === "pending" ? ` (${r.approvals.length}/${r.needed} approvals)` : ""));
    } catch (e) {
      say(`Ticket ${t.id}: ${e.message}`, true);
    }
    refreshQueue();
  }

  // The exact command, with what a detector found marked; or, for a viewer
  // who may not see those values, the masked form (the API decides).
  function commandBlock(t) {
    const pre = el("pre", {class: "command", id: "command-" + t.id});
    let at = 0;
    const marks = (t.revealed && t.marks) ? [...t.marks].sort((a, b) => a[0] - b[0]) : [];
    for (const [start, end, detector] of marks) {
      if (start < at) continue;
      pre.append(t.command.slice(at, start),
        el("mark", {class: "detected", title: "found by the " + detector + " detector", text: t.command.slice(start, end)}));
      at = end;
    }
    pre.append(t.command.slice(at));
    const note = t.revealed
      ? (marks.length ? "Exactly what will run; marked values are sensitive (" + [...new Set(marks.map(m => m[2]))].join(", ") + ")." : "Exactly what will run.")
      : "Sensitive values are masked for you; the ticket's approvers see them.";
    return el("div", {class: "command-wrap"}, pre, el("p", {class: "hint", text: note}));
  }

  function ticketCard(t) {
    const reasonId = "reason-" + t.id;
    const reason = el("textarea", {id: reasonId, rows: "2", maxlength: "1000"});
    const left = Math.max(0, Math.round(t.expires - Date.now() / 1000));
    const mine = me && t.requester === (me.id || me.subject);
    const card = el("article", {class: "ticket", id: "ticket-" + t.id, "aria-labelledby": "title-" + t.id},
      el("h2", {id: "title-" + t.id},
        el("span", {text: `${t.requester} on ${t.connection}`}), " ",
        el("code", {class: "tid", text: t.id})),
      el("p", {class: "summary", id: "summary-" + t.id, text: t.summary || ""}),
      commandBlock(t),
      el("dl", {class: "meta"},
        el("dt", {text: "Where"}), el("dd", {text: [t.protocol, t.target].filter(Boolean).join(" · ")}),
        // In a fleet: the node holding the command (any node's console decides it).
        ...(t.node ? [el("dt", {text: "Node"}), el("dd", {id: "node-" + t.id, text: t.node})] : []),
        el("dt", {text: "Rule"}), el("dd", {text: t.rule + (t.rule_reason ? ": " + t.rule_reason : "")}),
        el("dt", {text: "Approvers"}), el("dd", {text: t.approvers.join(", ") + ` (${t.approvals.length}/${t.needed})`}),
        el("dt", {text: "Requested"}), el("dd", {text: when(t.created)}),
        el("dt", {text: "Expires in"}), el("dd", {text: `${Math.floor(left / 60)}m ${left % 60}s`}),
        el("dt", {text: "Session"}), el("dd", {}, el("a", {href: "#session/" + t.session, text: t.session})),
        el("dt", {text: "Notified"}), el("dd", {}, notifications(t))));
    if (mine) {
      card.append(el("p", {class: "hint", text: "This is your own request: you cannot decide it."}),
        el("button", {type: "button", id: "cancel-" + t.id, onclick: () => decide(t, "cancel", reason)}, "Cancel my request"));
    } else if (me && (me.roles.includes("approver") || me.roles.includes("admin"))) {
      card.append(
        el("label", {for: reasonId, text: "Reason (required to deny)"}), reason,
        el("div", {class: "actions"},
          el("button", {type: "button", class: "primary", id: "approve-" + t.id, onclick: () => decide(t, "approve", reason)}, "Approve"),
          el("button", {type: "button", class: "danger", id: "deny-" + t.id, onclick: () => decide(t, "deny", reason)}, "Deny")));
    }
    return card;
  }

  async function refreshQueue() {
    let data;
    try {
      data = await api("/api/approvals?all=1");
    } catch (e) {
      say("Cannot load tickets: " + e.message, true);
      return;
    }
    const pending = data.tickets.filter(t => t.state === "pending");
    $("#pending-count").textContent = String(pending.length);
    const queue = $("#queue");
    // Keep a reason being typed across refreshes.
    const typing = document.activeElement && document.activeElement.tagName === "TEXTAREA" ? document.activeElement : null;
    const keep = {};
    for (const box of queue.querySelectorAll("textarea")) keep[box.id] = box.value;
    if (typing && pending.some(t => "reason-" + t.id === typing.id)) {
      // Refresh everything but the card being written in.
      for (const card of [...queue.children]) if (!card.contains(typing)) card.remove();
      for (const t of pending) if (!$("#ticket-" + t.id)) queue.append(ticketCard(t));
    } else {
      queue.replaceChildren(...pending.map(ticketCard));
      for (const [id, v] of Object.entries(keep)) { const box = document.getElementById(id); if (box) box.value = v; }
    }
    if (!pending.length) queue.replaceChildren(el("p", {class: "empty", text: "No command is waiting for approval."}));
    const body = $("#decided tbody");
    body.replaceChildren(...data.tickets.filter(t => t.state !== "pending").reverse().slice(0, 50).map(t =>
      el("tr", {id: "decided-" + t.id},
        el("td", {}, el("code", {text: t.id})), el("td", {class: "state-" + t.state, text: t.state}),
        el("td", {text: t.requester}), el("td", {}, el("code", {text: t.command})),
        el("td", {text: t.decided_by || "–"}), el("td", {text: t.reason || ""}))));
    const focus = location.hash.startsWith("#ticket/") ? $("#ticket-" + location.hash.slice(8)) : null;
    if (focus) focus.classList.add("focus");
  }

  // -- sessions --------------------------------------------------------------

  // Terminal output shown as text: drop colour/cursor escapes (CSI, OSC) and stray controls.
  function plain(text) {
    return String(text)
      .replace(/\x1b\[[0-?]*[ -\/]*[@-~]/g, "")
      .replace(/\x1b\][^\x07\x1b]*(\x07|\x1b\\)/g, "")
      .replace(/\x1b[()][0-9A-Za-z]/g, "")
      .replace(/\r\n/g, "\n")
      .replace(/[\x00-\x08\x0b\x0c\x0e-\x1a\x1c-\x1f\x7f]/g, "");
  }

  async function refreshSessions() {
    const form = new FormData($("#filters"));
    const q = new URLSearchParams();
    for (const [k, v] of form.entries()) {
      if (!v) continue;
      // datetime-local fields are in the viewer's zone; the API takes Unix seconds.
      q.set(k, (k === "since" || k === "until") ? String(new Date(v).getTime() / 1000) : v);
    }
    const data = await api("/api/sessions?" + q.toString());
    $("#session-count").textContent = `${data.sessions.length} session(s)` +
      (data.sessions.length >= 100 ? " (the newest 100: narrow the search)" : "");
    // In a fleet every node's sessions are listed, each with the node that recorded it.
    const fleet = data.sessions.some(s => s.node);
    $("#node-col").hidden = !fleet;
    $("#sessions tbody").replaceChildren(...data.sessions.map(s =>
      el("tr", {},
        el("td", {}, el("a", {href: "#session/" + s.id, text: s.id})), el("td", {text: when(s.opened)}),
        el("td", {text: s.state}), el("td", {text: s.protocol || ""}), el("td", {text: s.connection || ""}),
        el("td", {text: s.identity}), el("td", {text: String(s.bytes_from_client + s.bytes_to_client)}),
        ...(fleet ? [el("td", {text: s.node || ""})] : []))));
  }

  async function showSession(id) {
    $("#session-id").textContent = id;
    $("#transcript").textContent = "loading…";
    $("#verify").textContent = "checking…";
    $("#verify").className = "verify";
    const s = await api("/api/sessions/" + encodeURIComponent(id));
    const meta = $("#session-meta");
    meta.replaceChildren();
    for (const [k, v] of [["Identity", s.identity], ["Connection", s.connection], ["Protocol", s.protocol],
                          ["Client", s.client], ["State", s.state], ["Opened", when(s.opened)],
                          ["Closed", when(s.closed)], ["Frames", s.frames], ["Root", s.root || "–"],
                          ...(s.node ? [["Node", s.node]] : [])]) {
      meta.append(el("dt", {text: k}), el("dd", {text: String(v)}));
    }
    $("#events").replaceChildren(...s.events.map(e => {
      const what = e.type === "event" ? `${e.event} ${JSON.stringify(e.fields)}` : e.type;
      return el("li", {}, el("time", {datetime: new Date(e.time * 1000).toISOString(), text: when(e.time)}),
                " ", el("code", {text: what}));
    }));
    // Downloads and the player come from the session's protocol plugin (its export formats).
    const formats = s.formats || [];
    $("#downloads").replaceChildren(...formats.map(f =>
      el("li", {}, el("a", {href: f.url, download: "", id: "download-" + f.name, text: f.title}),
         " ", el("code", {text: `${f.name} (${f.extension})`}))));
    $("#downloads-none").hidden = formats.length > 0;
    const player = $("#player");
    player.replaceChildren();
    $("#terminal").hidden = true;
    const cast = formats.find(f => f.player === "asciicast");
    if (cast && window.AsciinemaPlayer) {
      // The player fetches the cast itself (same origin: the login cookie goes along).
      $("#terminal").hidden = false;
      window.AsciinemaPlayer.create(cast.url, player, {preload: true, idleTimeLimit: 2, fit: "width"});
    }
    api(`/api/sessions/${encodeURIComponent(id)}/transcript`).then(t => { $("#transcript").textContent = plain(t) || "(nothing recorded)"; })
      .catch(e => { $("#transcript").textContent = "transcript unavailable: " + e.message; });
    api(`/api/sessions/${encodeURIComponent(id)}/verify`).then(v => {
      const p = $("#verify");
      p.className = "verify " + (v.ok ? "good" : "bad");
      p.textContent = v.ok ? `✔ verified: ${v.frames} frames sealed, log checked up to checkpoint ${v.checkpoint}` +
                             (v.warnings.length ? ` (${v.warnings.join("; ")})` : "")
                           : "✘ verification failed: " + v.problems.join("; ");
    }).catch(e => { $("#verify").textContent = "cannot verify: " + e.message; });
  }

  async function refreshNotifications() {
    const data = await api("/api/notifications");
    $("#deliveries tbody").replaceChildren(...data.deliveries.map(d =>
      el("tr", {class: d.state === "failed" ? "bad" : ""},
        el("td", {text: d.target}), el("td", {}, el("a", {href: "#ticket/" + d.ticket, text: d.ticket})),
        el("td", {text: d.event}), el("td", {text: d.state}), el("td", {text: String(d.attempts)}),
        el("td", {text: d.error || ""}))));
  }

  // -- witnesses -------------------------------------------------------------

  // The witnessing object of /readyz (public, no secret: names, sizes, lags,
  // errors; never a witness's URL), or null when no witness is configured.
  // /readyz answers 503 while the gateway is not ready, with the same object.
  async function witnessing() {
    const r = await fetch("/readyz", {credentials: "same-origin", headers: {"accept": "application/json"}});
    const data = await r.json();
    return data.witnessing || null;
  }

  function quorumLine(w) {
    const latest = `the latest checkpoint has ${w.checkpoint_size} leaves`;
    if (!w.quorum) return {bad: false, text: `No witness quorum is required (witness_quorum = 0); ${latest}.`};
    const by = `${w.quorum} witness${w.quorum === 1 ? "" : "es"}`;
    const head = `Quorum ${w.quorum} of ${w.witnesses.length}: ` +
                 (w.witnessed_size ? `size ${w.witnessed_size} is cosigned by ${by}` : `no checkpoint is cosigned by ${by} yet`) +
                 `; ${latest}`;
    if (!w.lag_leaves) return {bad: false, text: `${head}; lag 0: the latest checkpoint is witnessed.`};
    return {bad: true, text: `${head}; lag ${w.lag_leaves} leaves: below quorum (the latest checkpoint is not yet published).`};
  }

  function badge(w) {
    const nav = $("#nav-witnesses");
    nav.hidden = !w;
    if (!w) return;
    const behind = w.quorum ? w.lag_leaves : Math.max(...w.witnesses.map(x => x.lag_leaves));
    $("#witness-badge").textContent = behind ? `lag ${behind}` : "ok";
    $("#witness-badge").className = "badge" + (behind ? " behind" : "");
  }

  async function refreshWitnesses() {
    const w = await witnessing();
    badge(w);
    if (!w) {
      $("#quorum").textContent = "No witnesses are configured ([[witnesses]] in the gateway's config).";
      $("#quorum").className = "verify";
      $("#witnesses tbody").replaceChildren();
      return;
    }
    const q = quorumLine(w);
    $("#quorum").textContent = q.text;
    $("#quorum").className = "verify " + (q.bad ? "bad" : "good");
    $("#witnesses tbody").replaceChildren(...w.witnesses.map(x => {
      const state = x.error ? `failing (${x.failures} attempt${x.failures === 1 ? "" : "s"})`
                            : (x.lag_leaves ? "catching up" : "up to date");
      return el("tr", {class: x.lag_leaves || x.error ? "bad" : ""},
        el("td", {}, el("code", {text: x.name})), el("td", {class: "size", text: String(x.size)}),
        el("td", {class: "lag", text: String(x.lag_leaves)}), el("td", {class: "state", text: state}),
        el("td", {text: when(x.last_success)}), el("td", {class: "error", text: x.error || ""}));
    }));
  }

  // -- nodes -----------------------------------------------------------------

  async function refreshNodes() {
    const data = await api("/api/nodes");
    $("#nodes-mode").textContent = data.fleet
      ? "Every gateway of the fleet; a node that stops renewing its lease is down."
      : "A single gateway (no fleet database configured).";
    $("#nodes tbody").replaceChildren(...data.nodes.map(n =>
      el("tr", {id: "node-row-" + n.name, class: n.state === "down" ? "bad" : ""},
        el("th", {scope: "row", text: n.name}), el("td", {class: "state", text: n.state}),
        el("td", {text: n.down_reason || ""}), el("td", {text: n.renewed ? when(n.renewed) : ""}),
        el("td", {text: n.admin || ""}))));
  }

  // -- routing ---------------------------------------------------------------

  function show(name) {
    for (const v of document.querySelectorAll("main > section")) v.hidden = v.id !== "view-" + name;
    for (const a of document.querySelectorAll("nav a")) a.removeAttribute("aria-current");
    const nav = $("#nav-" + (name === "session" ? "sessions" : name));
    if (nav) nav.setAttribute("aria-current", "page");
  }

  async function route() {
    clearInterval(timer);
    const hash = location.hash || "#queue";
    try {
      if (hash === "#queue" || hash.startsWith("#ticket/")) {
        show("queue");
        await refreshQueue();
        timer = setInterval(refreshQueue, 2000);
      } else if (hash === "#sessions") {
        show("sessions");
        await refreshSessions();
      } else if (hash.startsWith("#session/")) {
        show("session");
        await showSession(decodeURIComponent(hash.slice(9)));
      } else if (hash === "#notifications") {
        show("notifications");
        await refreshNotifications();
      } else if (hash === "#witnesses") {
        show("witnesses");
        await refreshWitnesses();
        timer = setInterval(() => refreshWitnesses().catch(e => say(e.message, true)), 2000);
      } else if (hash === "#nodes") {
        show("nodes");
        await refreshNodes();
        timer = setInterval(() => refreshNodes().catch(e => say(e.message, true)), 2000);
      }
    } catch (e) {
      say(e.message, true);
    }
  }

  async function start() {
    me = await api("/api/me");
    $("#whoami").textContent = `${me.id || me.subject}` + (me.roles.length ? ` (${me.roles.join(", ")})` : "");
    $("#logout").addEventListener("click", async () => {
      await api("/logout", {method: "POST", body: {}}).catch(() => {});
      location.href = "/login";
    });
    $("#filters").addEventListener("submit", (e) => { e.preventDefault(); refreshSessions().catch(err => say(err.message, true)); });
    window.addEventListener("hashchange", route);
    // The nav's witness badge follows the lag on every view; absent when none is configured.
    const follow = () => witnessing().then(badge).catch(() => {});
    await follow();
    setInterval(follow, 5000);
    await route();
    document.body.classList.add("ready");
  }

  start().catch(e => say(e.message, true));
})();
