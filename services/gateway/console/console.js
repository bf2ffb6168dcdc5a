"use strict";
// The memo admin console: plain JavaScript against the gateway's /v1 API, with the key the user entered (kept in
// sessionStorage). GET /v1/whoami says what the key may do; what it may not do is not shown.

const RANK = { reader: 0, writer: 1, admin: 2 };
const POLL_MS = 1000;
const PAGE = 20; // reflections per page
const state = { key: sessionStorage.getItem("memo-key"), me: null, collection: null, tab: null, timer: null };

const $ = (selector) => document.querySelector(selector);

// an element with attributes ("on..." are listeners) and children (strings become text, never HTML)
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat(Infinity)) {
    if (child !== null && child !== undefined) node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

const when = (iso) => (iso ? iso.replace("T", " ").slice(0, 19) : "");
const short = (id) => (id ? id.slice(0, 8) : "");
const json = (value) => el("pre", {}, JSON.stringify(value, null, 2));

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// the detail of an error response: a message, or FastAPI's list of invalid fields
function detail(body, status) {
  const d = body && body.detail;
  if (typeof d === "string") return d;
  if (Array.isArray(d)) return d.map((e) => `${(e.loc || []).slice(1).join(".")}: ${e.msg}`).join("; ");
  return `the request failed (${status})`;
}

async function api(method, path, body) {
  const init = { method, headers: { Authorization: `Bearer ${state.key}` } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  const data = (response.headers.get("content-type") || "").includes("json") ? await response.json() : null;
  if (!response.ok) throw new ApiError(response.status, detail(data, response.status));
  return data;
}

function say(message, isError) {
  const status = $("#status");
  status.textContent = message;
  status.className = isError ? "error" : "ok";
  status.hidden = !message;
}

// runs an action; its error is shown (a 401: the key was revoked meanwhile, so sign out)
async function act(action) {
  try {
    say("");
    await action();
  } catch (error) {
    if (error.status === 401) signOut(`Signed out: ${error.message}`);
    else say(error.message, true);
  }
}

function can(role) {
  if (!state.me) return false;
  if (role === "service") return state.me.role === "admin" && state.me.collections === null;
  return RANK[state.me.role] >= RANK[role];
}

// -- signing in -----------------------------------------------------------------------------------------------------
async function signIn(key) {
  state.key = key;
  try {
    state.me = await api("GET", "/v1/whoami");
  } catch (error) {
    signOut(error.status === 401 ? `That key was refused: ${error.message}` : error.message);
    return;
  }
  sessionStorage.setItem("memo-key", key);
  const scope = state.me.collections === null ? "every collection" : `${state.me.collections.length} collection(s)`;
  $("#who").textContent = `${state.me.name} · ${state.me.role} · ${scope}`;
  for (const node of document.querySelectorAll("[data-min-role]")) node.hidden = !can(node.dataset.minRole);
  $("#signin").hidden = true;
  $("#tabs").hidden = $("#signout").hidden = $("#collection-picker").hidden = false;
  say("");
  await loadCollections();
  show(sessionStorage.getItem("memo-tab") || "collections");
}

function signOut(message) {
  sessionStorage.removeItem("memo-key");
  Object.assign(state, { key: null, me: null, collection: null });
  stopPolling();
  $("#who").textContent = "";
  for (const tab of document.querySelectorAll(".tab")) tab.hidden = true;
  $("#tabs").hidden = $("#signout").hidden = $("#collection-picker").hidden = true;
  $("#signin").hidden = false;
  $("#key").value = "";
  say(message || "", Boolean(message));
}

// -- tabs and the collection picker ---------------------------------------------------------------------------------
const LOADERS = {
  collections: loadCollections,
  upload: async () => {},
  jobs: loadJobs,
  documents: loadDocuments,
  versions: loadVersions,
  ask: async () => {},
  executive: loadExecutive,
  audit: loadAudit,
};

function show(tab) {
  const button = document.querySelector(`#tabs [data-tab="${tab}"]`);
  if (!button || button.hidden) tab = "collections";
  state.tab = tab;
  sessionStorage.setItem("memo-tab", tab);
  stopPolling();
  for (const b of document.querySelectorAll("#tabs button")) b.setAttribute("aria-selected", b.dataset.tab === tab);
  for (const section of document.querySelectorAll(".tab")) section.hidden = section.id !== `tab-${tab}`;
  act(LOADERS[tab]);
  if (tab === "jobs") state.timer = setInterval(() => act(loadJobs), POLL_MS);
}

function stopPolling() {
  clearInterval(state.timer);
  state.timer = null;
}

function needCollection() {
  if (!state.collection) throw new ApiError(0, "no collection yet: create one under Collections");
  return state.collection;
}

async function loadCollections() {
  const collections = await api("GET", "/v1/collections");
  const body = $("#collections-table tbody");
  body.replaceChildren(
    ...collections.map((c) => el("tr", {}, el("td", {}, c.name), el("td", {}, el("code", {}, c.id)), el("td", {}, when(c.created_at))))
  );
  const saved = sessionStorage.getItem("memo-collection");
  const chosen = collections.find((c) => c.id === (state.collection || saved)) || collections[0];
  state.collection = chosen ? chosen.id : null;
  $("#collection").replaceChildren(
    ...collections.map((c) => el("option", { value: c.id, selected: c.id === state.collection }, c.name))
  );
}

// -- uploads: one request with every file, its progress from XMLHttpRequest --------------------------------------------
function send(cid, files) {
  const form = new FormData();
  for (const file of files) form.append("file", file);
  const bar = $("#upload-progress");
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", `/v1/collections/${cid}/documents`);
    xhr.setRequestHeader("Authorization", `Bearer ${state.key}`);
    xhr.responseType = "json";
    xhr.upload.onprogress = (event) => {
      if (!event.lengthComputable) return;
      bar.max = event.total;
      bar.value = event.loaded;
      $("#upload-percent").textContent = `${Math.round((100 * event.loaded) / event.total)} %`;
    };
    xhr.onload = () =>
      xhr.status < 300 ? resolve(xhr.response) : reject(new ApiError(xhr.status, detail(xhr.response, xhr.status)));
    xhr.onerror = () => reject(new ApiError(0, "the upload did not reach the gateway"));
    xhr.send(form);
  });
}

async function upload(event) {
  event.preventDefault();
  const files = $("#files").files;
  const cid = needCollection();
  const button = event.submitter;
  button.disabled = true;
  $("#upload-result").replaceChildren();
  try {
    const { uploads } = await send(cid, files);
    $("#upload-result").replaceChildren(
      ...uploads.map((u) =>
        el(
          "li",
          {},
          `${u.document.filename}: `,
          u.duplicate ? "already uploaded (no new job)" : `document ${short(u.document.id)}, job ${short(u.job.id)} queued`
        )
      )
    );
    say(`${uploads.length} file(s) uploaded; follow them under Jobs`);
  } finally {
    button.disabled = false;
  }
}

// -- jobs ------------------------------------------------------------------------------------------------------------
async function jobAction(id, verb) {
  await api("POST", `/v1/jobs/${id}/${verb}`);
  say(`job ${short(id)}: ${verb} asked`);
  await loadJobs();
}

async function loadJobs() {
  const cid = needCollection();
  const [jobs, docs] = await Promise.all([
    api("GET", `/v1/collections/${cid}/jobs`),
    api("GET", `/v1/collections/${cid}/documents`),
  ]);
  const names = Object.fromEntries(docs.map((d) => [d.id, d.filename]));
  const rows = jobs.reverse().map((j) => {
    const live = j.state === "queued" || j.state === "running";
    const actions = [];
    if (can("writer") && live && !j.cancel_requested)
      actions.push(el("button", { type: "button", onclick: () => act(() => jobAction(j.id, "cancel")) }, "Cancel"));
    if (can("writer") && (j.state === "failed" || j.state === "cancelled"))
      actions.push(el("button", { type: "button", onclick: () => act(() => jobAction(j.id, "retry")) }, "Retry"));
    const stats = Object.keys(j.stats || {}).length ? el("details", {}, el("summary", {}, "stats"), json(j.stats)) : null;
    return el(
      "tr",
      { "data-job-id": j.id, "data-state": j.state },
      el("td", {}, when(j.created_at)),
      el("td", {}, j.kind),
      el("td", {}, names[j.document_id] || short(j.document_id)),
      el("td", { class: `state ${j.state}` }, j.state + (j.cancel_requested && live ? " (cancelling)" : "")),
      el("td", { class: "stage" }, j.stage),
      el("td", {}, el("progress", { value: j.done, max: Math.max(j.total, 1) }), ` ${j.done}/${j.total}`, stats),
      el("td", { class: "error" }, j.error || ""),
      el("td", {}, actions)
    );
  });
  $("#jobs-table tbody").replaceChildren(...rows);
}

// -- documents and their reflections --------------------------------------------------------------------------------
async function loadDocuments() {
  const cid = needCollection();
  const docs = await api("GET", `/v1/collections/${cid}/documents`);
  $("#reflections").replaceChildren();
  $("#documents-table tbody").replaceChildren(
    ...docs.map((d) =>
      el(
        "tr",
        {},
        el("td", {}, d.filename),
        el("td", {}, d.media_type),
        el("td", {}, d.size_bytes),
        el("td", {}, d.status),
        el("td", {}, when(d.created_at)),
        el("td", {}, el("button", { type: "button", onclick: () => act(() => loadReflections(d, 0)) }, "Reflections"))
      )
    )
  );
}

async function loadReflections(doc, offset) {
  const cid = needCollection();
  const page = await api("GET", `/v1/collections/${cid}/documents/${doc.id}/reflections?offset=${offset}&limit=${PAGE}`);
  const pager = el(
    "p",
    { class: "pager" },
    el("button", { type: "button", disabled: offset === 0, onclick: () => act(() => loadReflections(doc, offset - PAGE)) }, "Previous"),
    ` ${page.total ? offset + 1 : 0}–${offset + page.items.length} of ${page.total} `,
    el("button", { type: "button", disabled: offset + PAGE >= page.total, onclick: () => act(() => loadReflections(doc, offset + PAGE)) }, "Next")
  );
  const items = page.items.map((r) =>
    el(
      "li",
      { class: "reflection" },
      el("span", { class: "badge" }, r.kind),
      el("p", {}, el("b", {}, "Q: "), r.question),
      el("p", {}, el("b", {}, "A: "), r.answer),
      r.sources.map((s) => el("details", { class: "source" }, el("summary", {}, `${s.filename} · chunk ${s.seq}`), el("blockquote", {}, s.text)))
    )
  );
  $("#reflections").replaceChildren(el("h3", {}, `Reflections of ${doc.filename}`), pager, el("ol", {}, items));
}

// -- versions ---------------------------------------------------------------------------------------------------------
function figures(metrics) {
  const scalars = Object.entries(metrics).filter(([, v]) => typeof v !== "object" || v === null);
  const nested = Object.entries(metrics).filter(([, v]) => typeof v === "object" && v !== null);
  return [
    el("dl", { class: "metrics" }, scalars.map(([k, v]) => [el("dt", {}, k), el("dd", {}, typeof v === "number" ? +v.toFixed(4) : v)])),
    nested.length ? el("details", {}, el("summary", {}, "more"), json(Object.fromEntries(nested))) : null,
  ];
}

async function activate(v) {
  await api("POST", `/v1/collections/${v.collection_id}/versions/${v.id}/activate`);
  say(`version ${short(v.id)} is now served`);
  await loadVersions();
}

async function loadVersions() {
  const cid = needCollection();
  const versions = (await api("GET", `/v1/collections/${cid}/versions`)).reverse();
  const active = versions.find((v) => v.active);
  $("#versions-table tbody").replaceChildren(
    ...versions.map((v) => {
      const ledger = v.ledger && v.ledger.length ? el("details", {}, el("summary", {}, `${v.ledger.length} entries`), json(v.ledger)) : "";
      const label = active && v.created_at < active.created_at ? "Roll back to this" : "Activate";
      const button =
        can("admin") && v.status === "ready" && !v.active
          ? el("button", { type: "button", onclick: () => act(() => activate(v)) }, label)
          : null;
      return el(
        "tr",
        { "data-version-id": v.id, class: v.active ? "active" : "" },
        el("td", {}, el("code", {}, short(v.id)), v.active ? el("span", { class: "badge live" }, "active") : null),
        el("td", {}, when(v.created_at)),
        el("td", {}, v.mode),
        el("td", {}, v.status),
        el("td", {}, v.n_reflections),
        el("td", {}, figures(v.metrics)),
        el("td", {}, ledger),
        el("td", {}, button)
      );
    })
  );
}

// -- asking -----------------------------------------------------------------------------------------------------------
function sourceList(sources) {
  return el(
    "ul",
    { class: "sources" },
    sources.map((s) =>
      el(
        "li",
        {},
        el("b", {}, s.title),
        ` (score ${s.score.toFixed(2)})`,
        s.passages.map((p) =>
          el(
            "div",
            { class: "passage" },
            el("blockquote", {}, p.text),
            el("ul", {}, p.reflections.map((r) => el("li", {}, `${r.question} → ${r.answer}`)))
          )
        )
      )
    )
  );
}

async function ask(event) {
  event.preventDefault();
  const button = event.submitter;
  button.disabled = true;
  $("#answer").replaceChildren(el("p", {}, "Asking…"));
  try {
    const a = await api("POST", "/v1/query", { collection_id: needCollection(), question: $("#question").value });
    const steps = a.trace.map((s) =>
      el(
        "li",
        { class: "step" },
        el("p", {}, el("b", {}, s.sub_question)),
        el("p", {}, "Memory: ", el("span", { class: "memory-answer" }, s.memory_answer), " ",
          el("span", { class: `badge ${s.supported ? "live" : ""}` }, s.supported ? "supported" : s.idk ? "does not know" : "unsupported")),
        s.chosen_from
          ? el("p", { class: "choice" }, s.chosen
            ? `the best rated of ${s.chosen_from} reflections about the question`
            : `none of ${s.chosen_from} reflections about the question rated high enough: its own answer`)
          : null,
        s.sources.length ? sourceList(s.sources) : null
      )
    );
    $("#answer").replaceChildren(
      el("h3", {}, "Answer"),
      el("p", { id: "final-answer", class: a.abstained ? "abstained" : "" }, a.answer),
      el("p", { class: "meta" }, `executive ${a.executive} · memory ${a.memory} · version ${short(a.memory_version_id)}`),
      el("h3", {}, "Plan"),
      el("ol", { id: "plan" }, steps),
      el("h3", {}, "Sources"),
      a.sources.length ? el("div", { id: "sources" }, sourceList(a.sources)) : el("p", {}, "none (abstained)")
    );
  } catch (error) {
    $("#answer").replaceChildren();
    throw error;
  } finally {
    button.disabled = false;
  }
}

// -- the Executive and the audit log ------------------------------------------------------------------------------------
async function loadExecutive() {
  const e = await api("GET", "/v1/admin/executive");
  $("#executive-current").replaceChildren(
    ...Object.entries({ Backend: e.backend, Model: e.model || "(default)", "Base URL": e.base_url || "", "API key": e.has_api_key ? "set" : "none" })
      .flatMap(([k, v]) => [el("dt", {}, k), el("dd", { "data-field": k }, v)])
  );
  const form = $("#swap-form");
  form.backend.value = e.backend;
  form.model.value = e.model || "";
  form.base_url.value = e.base_url || "";
  form.api_key.value = "";
}

async function swap(event) {
  event.preventDefault();
  const form = event.target;
  const body = { backend: form.backend.value };
  for (const name of ["model", "base_url", "api_key"]) if (form[name].value.trim()) body[name] = form[name].value.trim();
  const button = event.submitter;
  button.disabled = true;
  try {
    const e = await api("PUT", "/v1/admin/executive", body);
    await loadExecutive();
    say(`the Executive is now ${e.backend}${e.model ? `: ${e.model}` : ""}`);
  } finally {
    button.disabled = false;
  }
}

async function loadAudit() {
  const entries = await api("GET", "/v1/admin/audit?limit=200");
  const change = (value) => (value ? el("details", {}, el("summary", {}, "show"), json(value)) : "");
  $("#audit-table tbody").replaceChildren(
    ...entries.map((e) =>
      el(
        "tr",
        {},
        el("td", {}, e.id),
        el("td", {}, when(e.at)),
        el("td", {}, e.key_id ? el("code", {}, short(e.key_id)) : "CLI"),
        el("td", { class: "action" }, e.action),
        el("td", {}, e.target),
        el("td", {}, change(e.before)),
        el("td", {}, change(e.after))
      )
    )
  );
}

// -- wiring -------------------------------------------------------------------------------------------------------------
$("#signin-form").addEventListener("submit", (event) => {
  event.preventDefault();
  signIn($("#key").value.trim());
});
$("#signout").addEventListener("click", () => signOut());
$("#tabs").addEventListener("click", (event) => event.target.dataset.tab && show(event.target.dataset.tab));
$("#collection").addEventListener("change", (event) => {
  state.collection = event.target.value;
  sessionStorage.setItem("memo-collection", state.collection);
  show(state.tab);
});
$("#create-collection").addEventListener("submit", (event) => {
  event.preventDefault();
  act(async () => {
    const c = await api("POST", "/v1/collections", { name: event.target.elements.namedItem("name").value.trim() });
    state.collection = c.id;
    sessionStorage.setItem("memo-collection", c.id);
    event.target.reset();
    await loadCollections();
    say(`collection ${c.name} created`);
  });
});
$("#upload-form").addEventListener("submit", (event) => act(() => upload(event)));
$("#ask-form").addEventListener("submit", (event) => act(() => ask(event)));
$("#swap-form").addEventListener("submit", (event) => act(() => swap(event)));
if (state.key) signIn(state.key);
