// The web page of `profiles serve`: sign in with an API key, see the account's profiles,
// their snapshots and audit events, and its remote sessions, with a live view to watch and
// drive one. Everything comes from the API (/v1) with the key; the views are addressed by
// the URL's fragment (#/profiles, #/profiles/NAME, #/sessions, #/sessions/ID), which never
// carries the key.

import { api, clearKey, getKey, onUnauthorized, seg, setKey } from "./api.js";
import { ago, bytes, clear, domainsList, h, payloadText, when } from "./dom.js";
import { LiveView } from "./live.js";

const $ = (id) => document.getElementById(id);

let account = null; // GET /v1/account/me of the key signed in with
let generation = 0; // each render's number: a view ignores answers that arrive too late
let leaving = []; // what the current view stops when the page leaves it

// ------------------------------------------------------------------ messages

function showError(err) {
  const alert = $("alert");
  alert.textContent = typeof err === "string" ? err : err.message || String(err);
  alert.hidden = false;
}

function clearError() {
  const alert = $("alert");
  alert.textContent = "";
  alert.hidden = true;
}

function notify(...content) {
  const notice = $("notice");
  clear(notice);
  notice.append(...content);
}

// Run an action of a button: disabled meanwhile, errors shown as the API words them.
async function act(button, busyText, action) {
  const label = button.textContent;
  button.disabled = true;
  if (busyText) button.textContent = busyText;
  clearError();
  try {
    await action();
  } catch (err) {
    showError(err);
  } finally {
    if (button.isConnected) {
      button.disabled = false;
      button.textContent = label;
    }
  }
}

function heading(text) {
  return h("h1", { tabindex: "-1" }, text);
}

function focusHeading(view) {
  const first = view.querySelector("h1");
  if (first) first.focus({ preventScroll: false });
}

// ------------------------------------------------------------------ signing in and out

function showSignIn() {
  $("sign-in").hidden = false;
  $("nav").hidden = true;
  $("who").hidden = true;
  $("sign-out").hidden = true;
  clear($("view"));
}

async function signIn(event) {
  event.preventDefault();
  const input = $("api-key");
  const button = event.target.querySelector("button[type=submit]");
  const key = input.value.trim();
  clearError();
  button.disabled = true;
  notify("Signing in…");
  try {
    account = await api("/account/me", { key });
  } catch (err) {
    notify();
    showError(err);
    input.focus();
    input.select();
    return;
  } finally {
    button.disabled = false;
  }
  setKey(key);
  input.value = "";
  notify(`Signed in to ${account.name}.`);
  await render();
}

function signOut() {
  clearKey();
  account = null;
  stopView();
  clearError();
  notify("Signed out: the key is forgotten.");
  showSignIn();
  $("sign-in-title").focus();
}

onUnauthorized((err) => {
  clearKey();
  account = null;
  stopView();
  showSignIn();
  showError(err);
  $("api-key").focus();
});

// ------------------------------------------------------------------ routing

function stopView() {
  for (const stop of leaving.splice(0)) {
    try {
      stop();
    } catch {
      // the view is going anyway
    }
  }
}

function parseRoute() {
  const hash = location.hash.replace(/^#\/?/, "");
  let parts;
  try {
    parts = hash.split("/").filter(Boolean).map(decodeURIComponent);
  } catch {
    parts = ["?"];
  }
  if (parts.length === 0) return { section: "profiles", view: profilesView, args: [] };
  const [section, ...rest] = parts;
  if (section === "profiles" && rest.length === 0) {
    return { section, view: profilesView, args: [] };
  }
  if (section === "profiles" && rest.length === 1) {
    return { section, view: profileView, args: rest };
  }
  if (section === "sessions" && rest.length === 0) {
    return { section, view: sessionsView, args: [] };
  }
  if (section === "sessions" && rest.length === 1) {
    return { section, view: sessionView, args: rest };
  }
  return { section: null, view: unknownView, args: [] };
}

async function render() {
  stopView();
  generation += 1;
  const mine = generation;
  clearError();
  const view = $("view");
  clear(view);
  if (!getKey()) {
    showSignIn();
    return;
  }
  if (!account) {
    try {
      account = await api("/account/me");
    } catch (err) {
      if (err.status !== 401) showError(err);
      return;
    }
    if (mine !== generation) return;
  }
  $("sign-in").hidden = true;
  $("nav").hidden = false;
  $("who").hidden = false;
  $("who").textContent = `${account.name} · ${account.tier}`;
  $("sign-out").hidden = false;
  const { section, view: show, args } = parseRoute();
  for (const link of document.querySelectorAll("#nav a")) {
    if (link.dataset.section === section) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  const alive = () => mine === generation;
  try {
    await show(view, alive, ...args);
  } catch (err) {
    if (alive()) showError(err);
  }
}

function unknownView(view) {
  view.append(
    heading("Nothing here"),
    h("p", {}, "This page has no such view. ", h("a", { href: "#/profiles" }, "See the profiles.")),
  );
  focusHeading(view);
}

// ------------------------------------------------------------------ tables

// A listing by cursor: load(cursor) -> page; row(item) -> <tr>. The "Load more" button
// appends the next page.
function pagedTable({ caption, columns, load, row, empty, className }) {
  const body = h("tbody");
  const more = h("button", { type: "button", class: "secondary", hidden: true }, "Load more");
  const wrap = h(
    "div",
    { class: "table-wrap" },
    h(
      "table",
      { class: className || "" },
      h("caption", {}, caption),
      h("thead", {}, h("tr", {}, columns.map((c) => h("th", { scope: "col" }, c)))),
      body,
    ),
  );
  const emptyText = h("p", { class: "hint", hidden: true }, empty);
  let cursor = null;
  async function next() {
    const page = await load(cursor);
    for (const item of page.data) body.append(row(item));
    cursor = page.next_cursor;
    more.hidden = !(page.has_more && cursor);
    emptyText.hidden = body.childElementCount > 0;
    wrap.hidden = body.childElementCount === 0;
  }
  async function reload() {
    cursor = null;
    clear(body);
    await next();
  }
  more.addEventListener("click", () => act(more, "Loading…", next));
  return { element: h("div", {}, wrap, emptyText, more), reload };
}

// ------------------------------------------------------------------ profiles

async function profilesView(view, alive) {
  const listing = pagedTable({
    caption: "Profiles of this account",
    columns: ["Name", "Status", "Engine", "Size", "Sessions", "Last used", "Cookie domains"],
    className: "profiles",
    empty: "No profiles yet: create one below, or with 'profiles create NAME'.",
    load: (cursor) => api("/profiles", { query: { limit: 50, cursor } }),
    row: (p) =>
      h(
        "tr",
        { dataset: { profile: p.name } },
        h("th", { scope: "row" }, h("a", { href: `#/profiles/${seg(p.name)}` }, p.name)),
        h("td", {}, h("span", { class: `badge status-${p.status}` }, p.status)),
        h("td", {}, engine(p)),
        h("td", { class: "num" }, bytes(p.blob_size)),
        h("td", { class: "num" }, String(p.usage_count)),
        h("td", {}, p.last_used_at ? h("span", { title: p.last_used_at }, ago(p.last_used_at)) : "never"),
        h("td", { class: "domains" }, domainsList(p.cookie_domains)),
      ),
  });
  const name = h("input", { id: "new-profile", name: "name", required: true, maxlength: 64 });
  const create = h(
    "form",
    {
      class: "inline",
      onsubmit: (e) => {
        e.preventDefault();
        const button = e.target.querySelector("button");
        act(button, "Creating…", async () => {
          const made = await api("/profiles", { method: "POST", body: { name: name.value.trim() } });
          name.value = "";
          notify("Created profile ", h("a", { href: `#/profiles/${seg(made.name)}` }, made.name), ".");
          await listing.reload();
        });
      },
    },
    h("label", { for: "new-profile" }, "New profile name"),
    name,
    h("button", { type: "submit" }, "Create profile"),
  );
  view.append(
    heading("Profiles"),
    listing.element,
    h("section", { "aria-labelledby": "create-title" }, h("h2", { id: "create-title" }, "Create a profile"), create),
  );
  focusHeading(view);
  await listing.reload();
  if (!alive()) return;
}

function engine(p) {
  return p.browser_version ? `${p.browser_name} ${p.browser_version}` : p.browser_name;
}

function details(pairs) {
  return h(
    "dl",
    { class: "details" },
    pairs.map(([term, value]) => [h("dt", {}, term), h("dd", {}, value ?? "—")]),
  );
}

async function profileView(view, alive, ref) {
  const back = h("p", { class: "back" }, h("a", { href: "#/profiles" }, "← All profiles"));
  let profile;
  try {
    profile = await api(`/profiles/${seg(ref)}`);
  } catch (err) {
    if (!alive()) return;
    if (err.status === 404) {
      view.append(
        back,
        heading("Profile not found"),
        h("p", { class: "error-text", id: "not-found" }, err.message),
      );
      focusHeading(view);
      return;
    }
    throw err;
  }
  if (!alive()) return;
  const labels = Object.entries(profile.labels || {}).map(([k, v]) => `${k}=${v}`).join(", ");
  view.append(
    back,
    heading(profile.name),
    details([
      ["Id", h("code", {}, profile.id)],
      ["Status", h("span", { class: `badge status-${profile.status}` }, profile.status)],
      ["Engine", engine(profile)],
      ["Archetype", profile.archetype],
      ["Size", bytes(profile.blob_size)],
      ["Sessions", String(profile.usage_count)],
      ["Last used", profile.last_used_at ? [when(profile.last_used_at), ` (${ago(profile.last_used_at)})`] : "never"],
      ["Cookie domains", domainsList(profile.cookie_domains, 50)],
      ["Labels", labels || "—"],
      ["Description", profile.description || "—"],
      ["Created", when(profile.created_at)],
      ["Updated", when(profile.updated_at)],
    ]),
  );
  view.append(startSessionForm(profile));

  // Snapshots: take, restore, delete.
  const events = pagedTable({
    caption: `Audit events of ${profile.name}, newest first`,
    columns: ["When", "Event", "Details"],
    className: "events",
    empty: "No events.",
    load: (cursor) => api("/audit", { query: { profile: profile.id, limit: 20, cursor } }),
    row: (e) =>
      h(
        "tr",
        {},
        h("td", {}, when(e.at)),
        h("td", {}, h("code", {}, e.type)),
        h("td", { class: "payload" }, payloadText(e.payload)),
      ),
  });
  const snapshots = pagedTable({
    caption: `Snapshots of ${profile.name}, newest first`,
    columns: ["Label", "Taken", "Size", "Cookie domains", "Actions"],
    className: "snapshots",
    empty: "No snapshots yet.",
    load: (cursor) => api(`/profiles/${seg(profile.id)}/snapshots`, { query: { limit: 20, cursor } }),
    row: (s) => snapshotRow(s, async () => {
      await snapshots.reload();
      await events.reload();
    }),
  });
  const label = h("input", { id: "snapshot-label", name: "label", maxlength: 200 });
  const take = h(
    "form",
    {
      class: "inline",
      onsubmit: (e) => {
        e.preventDefault();
        const button = e.target.querySelector("button");
        act(button, "Taking…", async () => {
          const body = label.value.trim() ? { label: label.value.trim() } : {};
          const snap = await api(`/profiles/${seg(profile.id)}/snapshots`, { method: "POST", body });
          label.value = "";
          notify(`Snapshot taken: ${snap.label || snap.id}.`);
          await snapshots.reload();
          await events.reload();
        });
      },
    },
    h("label", { for: "snapshot-label" }, "Label (optional)"),
    label,
    h("button", { type: "submit" }, "Take snapshot"),
  );
  view.append(
    h(
      "section",
      { "aria-labelledby": "snapshots-title" },
      h("h2", { id: "snapshots-title" }, "Snapshots"),
      take,
      snapshots.element,
    ),
    h(
      "section",
      { "aria-labelledby": "events-title" },
      h("h2", { id: "events-title" }, "Audit events"),
      events.element,
    ),
  );
  focusHeading(view);
  await snapshots.reload();
  if (!alive()) return;
  await events.reload();
}

function snapshotRow(s, changed) {
  const actions = h("td", { class: "actions" });
  const row = h(
    "tr",
    { dataset: { snapshot: s.id } },
    h("th", { scope: "row" }, s.label || h("code", {}, s.id)),
    h("td", {}, when(s.captured_at)),
    h("td", { class: "num" }, bytes(s.blob_size)),
    h("td", { class: "domains" }, domainsList(s.cookie_domains)),
    actions,
  );
  const name = s.label || s.id;
  function normal() {
    clear(actions);
    const restore = h(
      "button",
      { type: "button", class: "secondary", "aria-label": `Restore ${name} as a new profile` },
      "Restore",
    );
    restore.addEventListener("click", () =>
      act(restore, "Restoring…", async () => {
        const made = await api(`/profile-snapshots/${seg(s.id)}/restore`, { method: "POST", body: {} });
        notify(
          `Snapshot ${name} restored as a new profile: `,
          h("a", { href: `#/profiles/${seg(made.name)}` }, made.name),
          ".",
        );
        await changed();
      }),
    );
    const remove = h(
      "button",
      { type: "button", class: "danger", "aria-label": `Delete ${name}` },
      "Delete",
    );
    remove.addEventListener("click", confirming);
    actions.append(restore, " ", remove);
    return remove;
  }
  function confirming() {
    clear(actions);
    const yes = h("button", { type: "button", class: "danger" }, "Confirm delete");
    const no = h("button", { type: "button", class: "secondary" }, "Cancel");
    yes.addEventListener("click", () =>
      act(yes, "Deleting…", async () => {
        await api(`/profile-snapshots/${seg(s.id)}`, { method: "DELETE" });
        notify(`Snapshot ${name} deleted.`);
        await changed();
      }),
    );
    no.addEventListener("click", () => normal().focus());
    actions.append(h("span", { class: "confirm" }, `Delete ${name}?`), " ", yes, " ", no);
    yes.focus();
  }
  normal();
  return row;
}

// ------------------------------------------------------------------ sessions

function startSessionForm(profile, profiles = null) {
  const id = profile ? "start" : "start-any";
  const startUrl = h("input", {
    id: `${id}-url`,
    name: "start_url",
    type: "url",
    placeholder: "https://example.com/",
  });
  const readonly = h("input", { id: `${id}-readonly`, name: "readonly", type: "checkbox" });
  let select = null;
  if (!profile) {
    select = h(
      "select",
      { id: `${id}-profile`, name: "profile_id" },
      h("option", { value: "" }, "No profile: an ephemeral browser"),
      (profiles || []).map((p) => h("option", { value: p.id }, p.name)),
    );
  }
  const form = h(
    "form",
    {
      class: "stack",
      onsubmit: (e) => {
        e.preventDefault();
        const button = e.target.querySelector("button[type=submit]");
        act(button, "Starting the browser…", async () => {
          const body = {};
          const chosen = profile ? profile.id : select.value;
          if (chosen) body.profile_id = chosen;
          if (startUrl.value.trim()) body.start_url = startUrl.value.trim();
          if (readonly.checked) body.readonly = true;
          notify("Starting a session…");
          const record = await api("/sessions", { method: "POST", body });
          notify(`Session ${record.id} is ${record.status}.`);
          location.hash = `#/sessions/${seg(record.id)}`;
        });
      },
    },
    select ? [h("label", { for: `${id}-profile` }, "Profile"), select] : null,
    h("label", { for: `${id}-url` }, "Start URL (optional)"),
    startUrl,
    h(
      "div",
      { class: "check" },
      readonly,
      h("label", { for: `${id}-readonly` }, "Read-only (nothing is committed)"),
    ),
    h("button", { type: "submit" }, profile ? "Start a session on this profile" : "Start session"),
  );
  return h(
    "section",
    { "aria-labelledby": `${id}-title` },
    h("h2", { id: `${id}-title` }, profile ? "Run it" : "Start a session"),
    form,
  );
}

function sessionState(s) {
  return h("span", { class: `badge session-${s.status}` }, s.status);
}

function outcomeText(s) {
  if (s.error) return `${s.error.code}: ${s.error.message}`;
  if (!s.outcome) return s.ended_because || "—";
  const committed = s.outcome.committed ? "committed" : "not committed";
  const why = s.ended_because ? `${s.ended_because}; ` : "";
  return `${why}${s.outcome.outcome}, ${committed}${s.outcome.reason ? ` (${s.outcome.reason})` : ""}`;
}

function stopButton(s, stopped) {
  const button = h(
    "button",
    { type: "button", class: "danger", "aria-label": `Stop session ${s.id}` },
    "Stop",
  );
  button.addEventListener("click", () =>
    act(button, "Stopping…", async () => {
      const final = await api(`/sessions/${seg(s.id)}`, { method: "PATCH", body: { action: "stop" } });
      notify(`Session ${final.id} is ${final.status}: ${outcomeText(final)}.`);
      await stopped(final);
    }),
  );
  return button;
}

async function sessionsView(view, alive) {
  const listing = pagedTable({
    caption: "Sessions of this account on this service, newest first",
    columns: ["Session", "Profile", "Status", "Started", "Clients", "Ended", "Actions"],
    className: "sessions",
    empty: "No sessions yet.",
    load: (cursor) => api("/sessions", { query: { limit: 50, cursor } }),
    row: (s) =>
      h(
        "tr",
        { dataset: { session: s.id } },
        h("th", { scope: "row" }, h("a", { href: `#/sessions/${seg(s.id)}` }, h("code", {}, s.id))),
        h("td", {}, s.profile_name || (s.ephemeral ? "(ephemeral)" : s.profile_id)),
        h("td", {}, sessionState(s), s.readonly ? " read-only" : ""),
        h("td", {}, when(s.started_at)),
        h("td", { class: "num" }, String(s.clients)),
        h("td", {}, s.finished_at ? [when(s.finished_at), h("br"), outcomeText(s)] : "—"),
        h(
          "td",
          { class: "actions" },
          s.status === "running"
            ? [
                h("a", { href: `#/sessions/${seg(s.id)}`, class: "button-link" }, "Live view"),
                " ",
                stopButton(s, () => listing.reload()),
              ]
            : "—",
        ),
      ),
  });
  const refresh = h("button", { type: "button", class: "secondary" }, "Refresh");
  refresh.addEventListener("click", () => act(refresh, "Refreshing…", () => listing.reload()));
  view.append(heading("Sessions"), h("div", { class: "toolbar" }, refresh), listing.element);
  focusHeading(view);
  const [, profiles] = await Promise.all([
    listing.reload(),
    api("/profiles", { query: { limit: 100 } }),
  ]);
  if (!alive()) return;
  view.append(startSessionForm(null, profiles.data));
}

async function sessionView(view, alive, id) {
  const back = h("p", { class: "back" }, h("a", { href: "#/sessions" }, "← All sessions"));
  let record;
  try {
    record = await api(`/sessions/${seg(id)}`);
  } catch (err) {
    if (!alive()) return;
    if (err.status === 404) {
      view.append(
        back,
        heading("Session not found"),
        h("p", { class: "error-text", id: "not-found" }, err.message),
      );
      focusHeading(view);
      return;
    }
    throw err;
  }
  if (!alive()) return;

  const fields = {
    status: h("dd", { id: "session-status" }),
    clients: h("dd"),
    started: h("dd"),
    finished: h("dd"),
    outcome: h("dd"),
  };
  const dl = h(
    "dl",
    { class: "details" },
    h("dt", {}, "Status"),
    fields.status,
    h("dt", {}, "Profile"),
    h(
      "dd",
      {},
      record.profile_name
        ? h("a", { href: `#/profiles/${seg(record.profile_name)}` }, record.profile_name)
        : "none (an ephemeral browser: nothing is kept)",
      record.readonly ? " (read-only: nothing is committed)" : "",
    ),
    h("dt", {}, "Engine"),
    h("dd", {}, record.browser_version ? `${record.engine} ${record.browser_version}` : record.engine),
    h("dt", {}, "Started"),
    fields.started,
    h("dt", {}, "Clients"),
    fields.clients,
    h("dt", {}, "Idle timeout"),
    h("dd", {}, `${record.idle_timeout} s${record.keep_alive ? "" : " (stops when the last client leaves)"}`),
    h("dt", {}, "Ended"),
    fields.finished,
    h("dt", {}, "Outcome"),
    fields.outcome,
  );
  const stopArea = h("p", { class: "toolbar" });
  const liveArea = h("section", { "aria-labelledby": "live-title", class: "live" });
  view.append(back, heading(`Session ${record.id}`), dl, stopArea, liveArea);
  focusHeading(view);

  let live = null;
  let timer = null;
  function show(s) {
    record = s;
    clear(fields.status);
    fields.status.append(sessionState(s));
    fields.clients.textContent = String(s.clients);
    clear(fields.started);
    fields.started.append(when(s.started_at));
    clear(fields.finished);
    fields.finished.append(when(s.finished_at));
    fields.outcome.textContent = s.finished_at || s.error ? outcomeText(s) : "—";
    const running = s.status === "running";
    if (!running && stopArea.firstChild) {
      const hadFocus = stopArea.contains(document.activeElement);
      clear(stopArea);
      if (hadFocus) focusHeading(view);
    }
    if (running && !stopArea.firstChild) stopArea.append(stopButton(s, (final) => show(final)));
    if (!running && live) {
      live.close();
      live = null;
      clear(liveArea);
      liveArea.append(
        h("h2", { id: "live-title" }, "Live view"),
        h("p", { class: "hint" }, `The session is ${s.status}: no live view.`),
      );
    }
    if (!running && timer) {
      clearInterval(timer);
      timer = null;
    }
  }
  show(record);
  if (record.status !== "running") {
    liveArea.append(
      h("h2", { id: "live-title" }, "Live view"),
      h("p", { class: "hint" }, `The session is ${record.status}: no live view.`),
    );
    return;
  }

  // The live view.
  const status = h("p", { id: "live-status", class: "hint", role: "status" }, "Connecting…");
  const canvas = h("canvas", {
    id: "live-canvas",
    class: "screen",
    tabindex: "0",
    width: "1280",
    height: "720",
    role: "application",
    "aria-roledescription": "live view",
    "aria-label":
      "The session's page. Click it, then type: keys go to the remote page. Tab leaves the " +
      "live view; use Send Tab to send one.",
    "aria-describedby": "live-help",
  });
  const tabs = h("select", { id: "live-tab", disabled: true });
  const sendTab = h("button", { type: "button", class: "secondary" }, "Send Tab");
  const reconnect = h("button", { type: "button", class: "secondary" }, "Reconnect");
  liveArea.append(
    h("h2", { id: "live-title" }, "Live view"),
    h(
      "p",
      { id: "live-help", class: "hint" },
      "The browser's page as it runs on the service. Click into it and type to fill a form " +
        "or solve a login by hand; Tab moves on in this page, Send Tab sends it there.",
    ),
    h(
      "div",
      { class: "toolbar" },
      h("label", { for: "live-tab" }, "Page"),
      tabs,
      sendTab,
      reconnect,
    ),
    status,
    h("div", { class: "screen-wrap" }, canvas),
  );

  function connect() {
    if (live) live.close();
    const mine = new LiveView(canvas, {
      onStatus: (text) => {
        if (live === mine) status.textContent = text;
      },
      onTargets: (pages, current) => {
        if (live !== mine) return;
        clear(tabs);
        for (const page of pages) {
          tabs.append(
            h("option", { value: page.targetId, selected: page.targetId === current }, page.title || page.url || page.targetId),
          );
        }
        tabs.disabled = pages.length < 2;
      },
      onClose: (text) => {
        if (live === mine) status.textContent = text;
      },
    });
    live = mine;
    mine.open(record.id).catch((err) => {
      if (live === mine) {
        status.textContent = err.message;
        showError(err);
      }
    });
  }
  tabs.addEventListener("change", () => {
    if (live) live.attach(tabs.value).catch((err) => showError(err));
  });
  sendTab.addEventListener("click", () => {
    if (live) live.sendTab(false);
  });
  reconnect.addEventListener("click", connect);
  connect();

  timer = setInterval(async () => {
    try {
      const latest = await api(`/sessions/${seg(record.id)}`);
      if (alive()) show(latest);
    } catch (err) {
      if (alive()) showError(err);
    }
  }, 2000);
  leaving.push(() => {
    if (timer) clearInterval(timer);
    if (live) live.close();
    live = null;
  });
}

// ------------------------------------------------------------------ start

$("sign-in-form").addEventListener("submit", signIn);
$("sign-out").addEventListener("click", signOut);
window.addEventListener("hashchange", () => {
  notify();
  render();
});
render();
