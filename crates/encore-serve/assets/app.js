// Encore's page: search the catalogue, pick liked tracks, compare two models' recommendations.
// Plain JavaScript against the JSON API under /v1; nothing is loaded from elsewhere.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);

const state = {
  models: [],
  picks: [], // [{item_id, name}]
  token: sessionStorage.getItem("encore-token") || "",
  searchSeq: 0,
};

class ApiError extends Error {
  constructor(status, body) {
    const e = (body && body.error) || {};
    const field = e.field ? `${e.field}: ` : "";
    super(`${field}${e.message || "the service answered " + status}`);
    this.status = status;
  }
}

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (state.token) headers["Authorization"] = `Bearer ${state.token}`;
  let response;
  try {
    response = await fetch(path, Object.assign({}, options, { headers }));
  } catch (err) {
    throw new Error(`the service cannot be reached (${err.message})`);
  }
  let body = null;
  try {
    body = await response.json();
  } catch (_) {
    body = null;
  }
  if (response.status === 401) {
    $("#token-bar").hidden = false;
  }
  if (!response.ok) throw new ApiError(response.status, body);
  return body;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("data-")) node.setAttribute(k, v);
    else node[k] = v;
  }
  for (const c of children) node.append(c);
  return node;
}

function titleOf(item) {
  return el("div", { class: "title" },
    el("span", { class: "name", textContent: item.name || item.item_id, title: item.name || item.item_id }),
    el("span", { class: "id", textContent: item.name ? item.item_id : "" }));
}

function showError(box, err) {
  if (err) {
    box.textContent = err.message;
    box.hidden = false;
  } else {
    box.textContent = "";
    box.hidden = true;
  }
}

// --- models ---------------------------------------------------------------------------

function describe(m) {
  const ndcg = m.metrics && m.metrics.test && m.metrics.test["ndcg@10"];
  const parts = [`${m.model} on ${m.dataset}`, `${m.items.toLocaleString()} items`];
  if (m.conditioning) parts.push(`conditioning: ${m.conditioning}`);
  if (ndcg !== undefined) parts.push(`test NDCG@10 ${ndcg.toFixed(4)}`);
  return parts.join(" · ");
}

async function loadModels() {
  try {
    const body = await api("/v1/models");
    state.models = body.models;
    const status = $("#status");
    status.textContent = `${body.models.length} model${body.models.length === 1 ? "" : "s"} loaded`;
    status.className = "status ok";
    ["#panel-a", "#panel-b"].forEach((id, i) => {
      const select = $(`${id} select`);
      select.replaceChildren(...body.models.map((m) =>
        el("option", { value: m.name, textContent: `${m.name} (${m.model})` })));
      select.value = body.models[Math.min(i, body.models.length - 1)].name;
      updateModelInfo(id);
    });
    search();
  } catch (err) {
    const status = $("#status");
    status.textContent = err.status === 401 ? "token needed" : "service unavailable";
    status.className = "status bad";
    showError($("#search-error"), err);
  }
}

function updateModelInfo(panelId) {
  const name = $(`${panelId} select`).value;
  const m = state.models.find((x) => x.name === name);
  $(`${panelId} .model-info`).textContent = m ? describe(m) : "";
}

// --- search and picks ------------------------------------------------------------------

let searchTimer = null;

async function search() {
  const q = $("#search").value;
  const seq = ++state.searchSeq;
  const model = $("#panel-a select").value;
  const params = new URLSearchParams({ q, limit: "25" });
  if (model) params.set("model", model);
  try {
    const body = await api(`/v1/items?${params}`);
    if (seq !== state.searchSeq) return; // a newer search answered first
    showError($("#search-error"), null);
    const list = $("#search-results");
    list.dataset.query = q;
    list.replaceChildren(...body.items.map((item) => {
      const picked = state.picks.some((p) => p.item_id === item.item_id);
      const li = el("li", { "data-item-id": item.item_id, class: picked ? "picked" : "", title: "Add to your picks" },
        titleOf(item), el("span", { class: "add", textContent: picked ? "✓" : "+" }));
      li.addEventListener("click", () => addPick(item));
      return li;
    }));
    $("#search-note").textContent = q
      ? `${body.total.toLocaleString()} match${body.total === 1 ? "" : "es"}${body.total > body.items.length ? `, showing ${body.items.length}` : ""}`
      : "Most popular tracks:";
  } catch (err) {
    if (seq === state.searchSeq) showError($("#search-error"), err);
  }
}

function addPick(item) {
  if (state.picks.some((p) => p.item_id === item.item_id)) return;
  state.picks.push({ item_id: item.item_id, name: item.name });
  renderPicks();
}

function removePick(itemId) {
  state.picks = state.picks.filter((p) => p.item_id !== itemId);
  renderPicks();
}

function renderPicks() {
  const list = $("#picks");
  list.replaceChildren(...state.picks.map((p) => {
    const remove = el("button", { type: "button", textContent: "×", title: "Remove", ariaLabel: `Remove ${p.name || p.item_id}` });
    remove.addEventListener("click", () => removePick(p.item_id));
    return el("li", { "data-item-id": p.item_id }, el("span", { textContent: p.name || p.item_id, title: p.item_id }), remove);
  }));
  $("#pick-count").textContent = String(state.picks.length);
  $("#picks-empty").hidden = state.picks.length > 0;
  $("#recommend").disabled = state.picks.length === 0;
  document.querySelectorAll("#search-results li").forEach((li) => {
    const picked = state.picks.some((p) => p.item_id === li.dataset.itemId);
    li.classList.toggle("picked", picked);
    li.querySelector(".add").textContent = picked ? "✓" : "+";
  });
}

// --- recommendations -------------------------------------------------------------------

async function recommendInto(panelId) {
  const panel = $(panelId);
  const model = $(`${panelId} select`).value;
  const k = Number($("#k").value);
  panel.dataset.state = "loading";
  showError($(".error", panel), null);
  try {
    const body = await api("/v1/recommend", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ model, history: state.picks.map((p) => p.item_id), k }),
    });
    const top = body.items.length ? Math.max(...body.items.map((i) => i.score)) : 0;
    const low = body.items.length ? Math.min(...body.items.map((i) => i.score)) : 0;
    const span = top - low || 1;
    $(".recs", panel).replaceChildren(...body.items.map((item) => {
      const width = 15 + 85 * (item.score - low) / span;
      return el("li", { "data-item-id": item.item_id, title: `${item.name || item.item_id} (${item.item_id})` },
        el("span", { class: "rank", textContent: String(item.rank) }),
        titleOf(item),
        el("div", { class: "score" },
          el("span", { textContent: item.score.toFixed(4) }),
          el("div", { class: "bar" }, el("i", { style: `width:${width.toFixed(1)}%` }))));
    }));
    const ignored = $(".ignored", panel);
    ignored.hidden = !(body.ignored_items && body.ignored_items.length);
    ignored.textContent = ignored.hidden ? "" :
      `Not in this model's catalogue, skipped: ${body.ignored_items.join(", ")}`;
    $(".placeholder", panel).hidden = true;
    panel.dataset.state = "done";
  } catch (err) {
    $(".recs", panel).replaceChildren();
    $(".placeholder", panel).hidden = false;
    showError($(".error", panel), err);
    panel.dataset.state = "error";
  }
}

function markShared() {
  const a = new Set([...document.querySelectorAll("#panel-a .recs li")].map((li) => li.dataset.itemId));
  const b = new Set([...document.querySelectorAll("#panel-b .recs li")].map((li) => li.dataset.itemId));
  document.querySelectorAll("#panel-a .recs li").forEach((li) => li.classList.toggle("shared", b.has(li.dataset.itemId)));
  document.querySelectorAll("#panel-b .recs li").forEach((li) => li.classList.toggle("shared", a.has(li.dataset.itemId)));
  $("#legend").hidden = !document.querySelector(".recs li.shared");
}

async function recommend() {
  if (!state.picks.length) return;
  await Promise.all([recommendInto("#panel-a"), recommendInto("#panel-b")]);
  markShared();
}

// --- wiring ----------------------------------------------------------------------------

$("#search").addEventListener("input", () => {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(search, 150);
});
$("#recommend").addEventListener("click", recommend);
$("#clear").addEventListener("click", () => {
  state.picks = [];
  renderPicks();
});
["#panel-a", "#panel-b"].forEach((id) => {
  $(`${id} select`).addEventListener("change", async () => {
    updateModelInfo(id);
    if (id === "#panel-a") search();
    if (state.picks.length) {
      await recommendInto(id);
      markShared();
    }
  });
});
$("#token-save").addEventListener("click", () => {
  state.token = $("#token").value.trim();
  sessionStorage.setItem("encore-token", state.token);
  $("#token-bar").hidden = true;
  loadModels();
});
renderPicks();
loadModels();
