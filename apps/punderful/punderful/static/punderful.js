// Punderful's browser code: small, dependency-free, and it never puts user text into innerHTML
// (every pun is set with textContent), so a pun cannot inject markup.
"use strict";

const SEARCH_DEBOUNCE_MS = 300; // as in the original
const POLL_MS = 300;

/** fetch() + JSON, throwing an Error with the API's message on a 4xx/5xx. */
async function api(path, options = {}) {
  const response = await fetch(path, {
    credentials: "same-origin",
    headers: options.body ? { "Content-Type": "application/json" } : {},
    ...options,
  });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    const message = (data.error && data.error.message) || `HTTP ${response.status}`;
    const error = new Error(message);
    error.status = response.status;
    throw error;
  }
  return data;
}

/** A copy of an inline SVG icon from base.html's <template id="icons"> (no emoji, no markup strings). */
function icon(name, label) {
  const found = document.getElementById("icons")?.content.querySelector(`svg[data-icon="${name}"]`);
  const svg = found ? found.cloneNode(true) : document.createElementNS("http://www.w3.org/2000/svg", "svg");
  if (label) {
    svg.removeAttribute("aria-hidden");
    svg.setAttribute("role", "img");
    svg.setAttribute("aria-label", label);
  }
  return svg;
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

/** The same card as the `pun_card` Jinja macro. */
function createPunBox(pun, { showStatus = false, preview = false } = {}) {
  const lines = pun.pun.split("\n");
  const card = el("article", "pun-card");
  card.dataset.punId = pun.id || "";
  card.dataset.status = pun.status || "";
  const text = el("div", "pun-text");
  text.append(el("p", "setup", lines[0]));
  if (lines.length > 1) {
    const punchline = el("p", "punchline");
    for (const line of lines.slice(1)) punchline.append(el("span", "line pending", line));
    const glove = el("span", "glove");
    glove.setAttribute("aria-hidden", "true");
    glove.append(icon("glove"));
    text.append(punchline, glove);
  }
  card.append(text);
  const footer = el("footer");
  if (pun.status === "published") {
    const like = el("button", "like" + (pun.liked ? " liked" : ""));
    like.append(icon("heart", "Like"));
    like.type = "button";
    like.title = "Like";
    like.setAttribute("aria-pressed", pun.liked ? "true" : "false");
    footer.append(like, el("span", "likes", String(pun.likes || 0)));
  }
  if (showStatus || (pun.status && pun.status !== "published")) {
    footer.append(el("span", `status status-${pun.status}`, pun.status));
  }
  if (typeof pun.score === "number") {
    const score = el("span", "score", `similarity ${pun.score.toFixed(2)}`);
    score.title = `cosine similarity (${pun.via})`;
    footer.append(score);
  }
  if (!preview && pun.url) {
    const open = el("a", "open");
    open.append(icon("link", "Open this pun"));
    open.href = pun.url;
    open.title = "Open this pun";
    footer.append(open);
  }
  card.append(footer);
  wireCard(card);
  return card;
}

/** Reveal the punchline line by line on first hover (200 ms apart), then drop the glove. */
function revealPunchline(card) {
  if (card.dataset.revealed) return;
  card.dataset.revealed = "1";
  const lines = [...card.querySelectorAll(".punchline .line.pending")];
  lines.forEach((line, i) => setTimeout(() => {
    line.classList.remove("pending");
    if (i === lines.length - 1) card.querySelector(".glove")?.remove();
  }, 200 * (i + 1)));
}

/** Likes only switch on (as in the original there is no unlike). */
function wireLike(button, punId) {
  if (!button) return;
  button.addEventListener("click", async () => {
    if (button.classList.contains("liked")) return;
    button.classList.add("liked");
    button.setAttribute("aria-pressed", "true");
    const counter = button.parentElement.querySelector(".likes");
    try {
      const result = await api(`/api/puns/${encodeURIComponent(punId)}/like`, { method: "POST" });
      if (counter && !result.alreadyLiked) counter.textContent = String(Number(counter.textContent) + 1);
    } catch (error) {
      button.classList.remove("liked");
      button.setAttribute("aria-pressed", "false");
      alert(`Could not like this pun: ${error.message}`);
    }
  });
}

function wireCard(card) {
  const lines = card.querySelectorAll(".punchline .line");
  if (!card.dataset.revealed) lines.forEach((line) => line.classList.add("pending"));
  for (const event of ["mouseenter", "focusin", "click"]) {
    card.addEventListener(event, () => revealPunchline(card));
  }
  wireLike(card.querySelector("button.like"), card.dataset.punId);
}

function renderGrid(container, puns, options) {
  container.replaceChildren(...puns.map((pun) => createPunBox(pun, options)));
}

// -- pages --------------------------------------------------------------------------------------

function initHome() {
  document.querySelectorAll(".pun-card").forEach(wireCard);
  const grid = document.getElementById("latest");
  // New puns publish in the background; show them without a reload.
  setInterval(async () => {
    if (document.hidden) return;
    try {
      const data = await api("/api/puns?limit=60");
      const shown = [...grid.querySelectorAll(".pun-card")].map((c) => c.dataset.punId).join();
      if (data.results.map((p) => p.id).join() !== shown) {
        renderGrid(grid, data.results);
        document.getElementById("latest-empty")?.remove();
      }
    } catch (error) { /* a missed refresh is harmless */ }
  }, 10000);
}

function initNew() {
  const form = document.getElementById("new-pun");
  const input = document.getElementById("pun-input");
  const preview = document.getElementById("preview");
  const counter = document.getElementById("counter");
  const errorBox = document.getElementById("form-error");
  const button = document.getElementById("submit-pun");
  const max = Number(input.getAttribute("maxlength"));

  const updatePreview = () => {
    counter.textContent = `${input.value.length} / ${max}`;
    counter.classList.toggle("over", input.value.length > max);
    const text = input.value.split("\n").map((l) => l.trim()).filter(Boolean).join("\n");
    if (!text) {
      preview.replaceChildren(el("p", "empty", "Start typing to see your pun."));
      return;
    }
    const card = createPunBox({ pun: text, status: "preview" }, { preview: true });
    card.querySelectorAll(".line.pending").forEach((l) => l.classList.remove("pending"));
    card.querySelector(".glove")?.remove();
    preview.replaceChildren(card);
  };
  input.addEventListener("input", updatePreview);

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    errorBox.hidden = true;
    button.disabled = true;
    try {
      const data = await api("/api/puns", { method: "POST", body: JSON.stringify({ pun: input.value }) });
      input.value = "";
      updatePreview();
      followSubmission(data.pun);
    } catch (error) {
      errorBox.textContent = error.message;
      errorBox.hidden = false;
    } finally {
      button.disabled = false;
    }
  });
}

/** After a submit: poll the pun and its workflow until it is published (or flagged). */
function followSubmission(pun) {
  const box = document.getElementById("submission");
  const status = document.getElementById("submission-status");
  const steps = document.getElementById("submission-steps");
  box.hidden = false;
  document.getElementById("submission-link").href = pun.url;
  document.getElementById("submission-workflow").href = pun.workflow.url;
  status.textContent = pun.status;
  status.className = `status status-${pun.status}`;
  steps.replaceChildren();
  const started = Date.now();
  const poll = async () => {
    try {
      const [current, workflow] = await Promise.all([
        api(`/api/puns/${encodeURIComponent(pun.id)}`),
        api(`/api/puns/${encodeURIComponent(pun.id)}/workflow`).catch(() => null),
      ]);
      status.textContent = current.status;
      status.className = `status status-${current.status}`;
      if (workflow) renderSteps(steps, workflow.steps, (s) => el("li", s.status, s.name));
      if (current.status !== "draft") {
        box.dataset.done = current.status;
        return;
      }
      if (workflow && workflow.status === "errored") {
        status.textContent = `draft (publishing failed: ${workflow.error ? workflow.error.message : "error"})`;
        return;
      }
    } catch (error) { /* try again */ }
    if (Date.now() - started < 5 * 60 * 1000) setTimeout(poll, POLL_MS);
  };
  poll();
}

function renderSteps(container, steps, make) {
  container.replaceChildren(...steps.filter((s) => s.type === "do").map(make));
}

function initSearch() {
  const input = document.getElementById("search-input");
  const results = document.getElementById("search-results");
  const statusLine = document.getElementById("search-status");
  results.querySelectorAll(".pun-card").forEach(wireCard);
  input.form.addEventListener("submit", (event) => event.preventDefault());
  let timer = null;
  let inflight = null;

  const run = async () => {
    const query = input.value.trim();
    const url = new URL(window.location.href);
    if (query) url.searchParams.set("q", query); else url.searchParams.delete("q");
    history.replaceState(null, "", url);
    if (inflight) inflight.abort();
    if (!query) {
      results.replaceChildren();
      statusLine.textContent = "Semantic search: try a topic, not just a word.";
      return;
    }
    inflight = new AbortController();
    statusLine.textContent = "Searching…";
    try {
      const data = await api(`/api/puns/search?q=${encodeURIComponent(query)}`, { signal: inflight.signal });
      renderGrid(results, data.results);
      const n = data.results.length;
      statusLine.textContent = n ? `${n} pun${n === 1 ? "" : "s"} found` : "No puns found";
    } catch (error) {
      if (error.name !== "AbortError") statusLine.textContent = error.message;
    }
  };
  input.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(run, SEARCH_DEBOUNCE_MS);
  });
}

function initPun() {
  const punId = document.body.dataset.punId;
  const detail = document.querySelector(".pun-detail");
  wireLike(detail.querySelector("button.like"), punId);
  const similar = document.getElementById("similar");
  const statusBadge = document.getElementById("pun-status");
  const stepsBody = document.getElementById("workflow-steps");

  const loadWorkflow = async () => {
    try {
      const workflow = await api(`/api/puns/${encodeURIComponent(punId)}/workflow`);
      renderSteps(stepsBody, workflow.steps, (s) => {
        const row = el("tr");
        const attempts = s.attempts.length + (s.attempts.some((a) => a.error) ? " (retried)" : "");
        const output = s.error ? `${s.error.name}: ${s.error.message}` : JSON.stringify(s.output);
        for (const cell of [s.name, s.status, s.durationMs ?? "", attempts, output]) row.append(el("td", "", String(cell)));
        return row;
      });
      return workflow;
    } catch (error) {
      return null;
    }
  };
  const loadSimilar = async () => {
    try {
      const data = await api(`/api/puns/${encodeURIComponent(punId)}/similar`);
      if (data.results.length) renderGrid(similar, data.results);
      else similar.replaceChildren(el("p", "empty", "No similar puns yet."));
    } catch (error) {
      similar.replaceChildren(el("p", "error", error.message));
    }
  };
  const waitForPublish = async () => {
    const pun = await api(`/api/puns/${encodeURIComponent(punId)}`).catch(() => null);
    await loadWorkflow();
    if (pun && pun.status === "published") {
      statusBadge.textContent = "published";
      statusBadge.className = "status status-published";
      loadSimilar();
    } else if (pun && pun.status === "flagged") {
      statusBadge.textContent = "flagged";
      statusBadge.className = "status status-flagged";
    } else {
      setTimeout(waitForPublish, 1000);
    }
  };
  if (document.body.dataset.status === "published") {
    loadSimilar();
    loadWorkflow();
  } else {
    waitForPublish();
  }
}

function initMe() {
  document.querySelectorAll(".pun-card").forEach(wireCard);
}

const PAGES = { home: initHome, new: initNew, search: initSearch, pun: initPun, me: initMe };
document.addEventListener("DOMContentLoaded", () => {
  const init = PAGES[document.body.dataset.page];
  if (init) init();
});
