// The shopsearch search page: plain JavaScript, no build step, no third-party code.
//
// Safety rule for this file: text that comes from the server or the shopper (queries, titles,
// categories, notes, error messages) only ever reaches the page through textContent, text
// nodes or new Option(text, value); never through innerHTML or similar. A query such as
// <img src=x onerror=alert(1)> is therefore shown literally and never runs.
"use strict";

(() => {
  const K = 10; // products per search; the page has no pager
  const SESSION_KEY = "shopsearch.session_id";

  const $ = (id) => document.getElementById(id);
  const ui = {
    form: $("search-form"),
    q: $("q"),
    category: $("category"),
    minPrice: $("min-price"),
    maxPrice: $("max-price"),
    priceHint: $("price-hint"),
    explain: $("explain"),
    status: $("status"),
    error: $("error"),
    notes: $("notes"),
    timings: $("timings"),
    results: $("results"),
    empty: $("empty"),
  };

  const priceFormat = new Intl.NumberFormat("zh-CN", { style: "currency", currency: "CNY" });

  // The stage scores an explained result may carry, in pipeline order.
  const SCORES = [
    ["bm25", "BM25", 3],
    ["dense", "dense", 3],
    ["fused", "fused", 3],
    ["click_logit", "rerank logit", 2],
    ["click_probability", "p(click)", 3],
    ["score", "final score", 3],
  ];

  // -- small helpers -----------------------------------------------------------------------

  /** A new element; `props.text` becomes its textContent, `props.data` its data-attributes. */
  function el(tag, props = {}, children = []) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props)) {
      if (value === undefined || value === null) continue;
      if (key === "text") node.textContent = String(value);
      else if (key === "className") node.className = value;
      else if (key === "data") Object.assign(node.dataset, value);
      else node.setAttribute(key, String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(typeof child === "string" ? document.createTextNode(child) : child);
    }
    return node;
  }

  function isNumber(value) {
    return typeof value === "number" && Number.isFinite(value);
  }

  function randomId() {
    const bytes = new Uint8Array(16);
    crypto.getRandomValues(bytes); // available on plain http too, unlike randomUUID
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  /** One id per browser tab, kept in sessionStorage (a fresh one if storage is off). */
  const sessionId = (() => {
    try {
      let id = sessionStorage.getItem(SESSION_KEY);
      if (!id) {
        id = randomId();
        sessionStorage.setItem(SESSION_KEY, id);
      }
      return id;
    } catch (_) {
      return randomId();
    }
  })();

  async function readJson(response) {
    const text = await response.text();
    try {
      return JSON.parse(text);
    } catch (_) {
      return null;
    }
  }

  /** The server's own words for a failed response: {"error": {"type", "message"}}. */
  function errorMessage(response, body) {
    const message = body && body.error && body.error.message;
    if (message) return String(message);
    return `The server answered ${response.status} ${response.statusText}`.trim();
  }

  function showError(message, type) {
    ui.error.textContent = message;
    ui.error.dataset.type = type || "";
    ui.error.hidden = false;
  }

  function clearError() {
    ui.error.textContent = "";
    ui.error.hidden = true;
  }

  function setState(state) {
    document.body.dataset.state = state;
    ui.results.setAttribute("aria-busy", state === "loading" ? "true" : "false");
  }

  function setStatus(children, className = "status") {
    ui.status.className = className;
    ui.status.replaceChildren(...children);
  }

  function clearResults() {
    ui.results.replaceChildren();
    delete ui.results.dataset.requestId;
    ui.notes.replaceChildren();
    ui.notes.hidden = true;
    ui.timings.replaceChildren();
    ui.timings.hidden = true;
    ui.empty.hidden = true;
  }

  // -- searching ---------------------------------------------------------------------------

  let sequence = 0; // only the latest search may draw its answer
  let inFlight = null;
  let searched = false;

  /** The filters as query parameters, or an error message for an unreadable price. */
  function filterParams() {
    const params = {};
    if (ui.category.value) params.category = ui.category.value;
    for (const [input, name, label] of [
      [ui.minPrice, "min_price", "Minimum price"],
      [ui.maxPrice, "max_price", "Maximum price"],
    ]) {
      if (input.validity.badInput) return { error: `${label} is not a number` };
      if (input.value !== "") params[name] = input.value;
    }
    if (ui.explain.checked) params.explain = "true";
    return { params };
  }

  async function search() {
    const q = ui.q.value.trim();
    if (inFlight) inFlight.abort();
    inFlight = null;
    const mine = ++sequence;
    clearError();
    if (!q) {
      clearResults();
      setStatus(
        ["Type what you are looking for first, e.g. 夏季连衣裙 or king poster bed."],
        "status hint",
      );
      setState("idle");
      ui.q.focus();
      return;
    }
    const filters = filterParams();
    if (filters.error) {
      clearResults();
      setStatus([]);
      showError(filters.error, "bad_request");
      setState("error");
      return;
    }
    const shown = { q, ...filters.params };
    const params = new URLSearchParams({ ...shown, k: String(K), session_id: sessionId });

    searched = true;
    setState("loading");
    setStatus(["Searching…"], "status loading");
    const controller = new AbortController();
    inFlight = controller;
    let response;
    let body;
    try {
      response = await fetch(`/search?${params}`, {
        signal: controller.signal,
        headers: { Accept: "application/json" },
      });
      body = await readJson(response);
    } catch (err) {
      if (mine !== sequence) return; // a newer search replaced this one
      clearResults();
      setStatus([]);
      showError(`Cannot reach the search server (${err.message || err}).`, "network");
      setState("error");
      return;
    }
    if (mine !== sequence) return;
    inFlight = null;
    if (!response.ok || !body || !Array.isArray(body.results)) {
      clearResults();
      setStatus([]);
      showError(errorMessage(response, body), body && body.error && body.error.type);
      setState("error");
      return;
    }
    render(body, Boolean(filters.params.explain));
    history.replaceState(null, "", `?${new URLSearchParams(shown)}`);
    setState("done");
  }

  // -- drawing an answer -------------------------------------------------------------------

  function render(body, explain) {
    clearResults();
    const results = body.results;
    ui.results.dataset.requestId = body.request_id;

    const count = results.length;
    const meta = [];
    if (body.stage) meta.push(`stage ${body.stage}`);
    if (body.timings_ms && isNumber(body.timings_ms.total)) {
      meta.push(`${formatMs(body.timings_ms.total)}`);
    }
    setStatus([
      el("strong", { text: count === 1 ? "1 result" : `${count} results` }),
      " for ",
      el("q", { className: "query", text: body.query }),
      meta.length ? el("span", { className: "meta", text: ` · ${meta.join(" · ")}` }) : null,
    ]);

    const notes = Array.isArray(body.notes) ? body.notes : [];
    for (const note of notes) ui.notes.append(el("li", { text: note }));
    ui.notes.hidden = notes.length === 0;

    if (explain) renderTimings(body);

    for (const result of results) {
      ui.results.append(renderResult(result, body.request_id, explain));
    }
    ui.empty.hidden = count > 0;
  }

  function formatMs(ms) {
    if (!isNumber(ms)) return "";
    return `${ms < 10 ? ms.toFixed(2) : ms.toFixed(0)} ms`;
  }

  function renderTimings(body) {
    const timings = body.timings_ms || {};
    const steps = Object.entries(timings).filter(([step, ms]) => step !== "total" && isNumber(ms));
    const slowest = Math.max(...steps.map(([, ms]) => ms), 0.001);
    const list = el("ol", { className: "timing-list" });
    for (const [step, ms] of steps) {
      const bar = el("span", { className: "bar" });
      bar.style.width = `${Math.max(1, (100 * ms) / slowest).toFixed(1)}%`;
      list.append(
        el("li", { data: { step } }, [
          el("span", { className: "step", text: step }),
          el("span", { className: "track" }, [bar]),
          el("span", { className: "ms", text: formatMs(ms) }),
        ]),
      );
    }
    const total = isNumber(timings.total) ? timings.total : null;
    ui.timings.append(
      el("h2", { text: "Where the time went" }, [
        total === null ? null : el("span", { className: "total", text: ` ${formatMs(total)}` }),
      ]),
      list,
    );
    const terms = Array.isArray(body.query_terms) ? body.query_terms : [];
    ui.timings.append(
      el("p", { id: "query-terms", className: "query-terms" }, [
        "Query terms: ",
        ...(terms.length
          ? terms.map((t) => el("span", { className: "term", text: t }))
          : [el("em", { text: "none" })]),
      ]),
    );
    ui.timings.hidden = false;
  }

  function renderResult(result, requestId, explain) {
    const li = el("li", {
      className: "result",
      data: { productId: result.id, rank: String(result.rank), clicked: "false" },
    });

    const title = el("button", { type: "button", className: "title", text: result.title });
    title.addEventListener("click", () => recordClick(li, requestId, result.id));

    const meta = el("div", { className: "meta" }, [
      result.category ? el("span", { className: "category", text: result.category }) : null,
      el("span", { className: "product-id", text: result.id }),
      el("span", { className: "clicked-badge", text: "✓ clicked" }),
    ]);

    const main = el("div", { className: "result-main" }, [title, meta]);
    if (explain) {
      const scores = renderScores(result);
      if (scores) main.append(scores);
      if (Array.isArray(result.matched_terms)) main.append(renderMatched(result.matched_terms));
    }

    const side = el("div", { className: "result-side" }, [
      isNumber(result.price)
        ? el("span", { className: "price", text: priceFormat.format(result.price) })
        : el("span", { className: "price unknown", text: "no price" }),
    ]);
    if (isNumber(result.click_probability)) {
      const p = result.click_probability;
      const fill = el("span", { className: "meter-fill" });
      fill.style.width = `${Math.min(100, Math.max(0, 100 * p)).toFixed(1)}%`;
      side.append(
        el("span", { className: "p-click", title: "the reranker's click probability" }, [
          `p(click) ${p.toFixed(2)}`,
        ]),
        el("span", { className: "meter", "aria-hidden": "true" }, [fill]),
      );
    }

    li.append(el("span", { className: "rank", text: String(result.rank) }), main, side);
    return li;
  }

  function renderScores(result) {
    const dl = el("dl", { className: "scores" });
    for (const [key, label, digits] of SCORES) {
      if (!isNumber(result[key])) continue;
      dl.append(
        el("div", { data: { score: key } }, [
          el("dt", { text: label }),
          el("dd", { text: result[key].toFixed(digits) }),
        ]),
      );
    }
    return dl.childElementCount ? dl : null;
  }

  function renderMatched(terms) {
    return el("p", { className: "matched-terms" }, [
      "Matched: ",
      ...(terms.length
        ? terms.map((t) => el("span", { className: "term", text: t }))
        : [el("em", { text: "no query term (a dense match)" })]),
    ]);
  }

  // -- clicks ------------------------------------------------------------------------------

  function recordClick(li, requestId, productId) {
    if (li.dataset.clicked === "true") return; // one click event per shown result
    li.dataset.clicked = "true";
    li.classList.add("clicked");
    fetch("/events", {
      method: "POST",
      keepalive: true, // survives the shopper leaving the page
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ request_id: requestId, product_id: productId, type: "click" }),
    })
      .then(async (response) => {
        if (response.ok) {
          li.dataset.clickState = "recorded";
          return;
        }
        const body = await readJson(response);
        li.dataset.clickState = "failed";
        showError(`The click was not recorded: ${errorMessage(response, body)}`, "bad_event");
      })
      .catch((err) => {
        li.dataset.clickState = "failed";
        showError(`The click was not recorded (${err.message || err}).`, "network");
      });
  }

  // -- filters -----------------------------------------------------------------------------

  async function loadFacets(wanted) {
    let body;
    try {
      const response = await fetch("/facets", { headers: { Accept: "application/json" } });
      body = await readJson(response);
      if (!response.ok || !body) throw new Error(errorMessage(response, body));
    } catch (err) {
      showError(`Filters are unavailable: ${err.message || err}`, "facets");
      return;
    }
    const categories = Array.isArray(body.categories) ? body.categories.map(String) : [];
    for (const name of categories) ui.category.append(new Option(name, name));
    if (wanted && !categories.includes(wanted)) ui.category.append(new Option(wanted, wanted));
    if (wanted) ui.category.value = wanted;
    const price = body.price;
    if (price && isNumber(price.min) && isNumber(price.max)) {
      const low = priceFormat.format(price.min);
      const high = priceFormat.format(price.max);
      ui.priceHint.textContent = `This catalogue: ${low} – ${high}`;
    }
    ui.category.dataset.loaded = "true";
  }

  // -- wiring ------------------------------------------------------------------------------

  ui.form.addEventListener("submit", (event) => {
    event.preventDefault();
    search();
  });
  // Category and explain apply at once to the search on the page; prices on Enter / Search.
  for (const input of [ui.category, ui.explain]) {
    input.addEventListener("change", () => {
      if (searched && ui.q.value.trim()) search();
    });
  }
  document.addEventListener("keydown", (event) => {
    const typing = event.target instanceof HTMLElement && event.target.closest("input, select");
    if (event.key === "/" && !typing) {
      event.preventDefault();
      ui.q.focus();
      ui.q.select();
    }
  });

  // A shared or reloaded address (?q=...&category=...) searches again.
  const url = new URLSearchParams(location.search);
  ui.q.value = url.get("q") || "";
  ui.minPrice.value = url.get("min_price") || "";
  ui.maxPrice.value = url.get("max_price") || "";
  ui.explain.checked = url.get("explain") === "true";
  loadFacets(url.get("category") || "").then(() => {
    if (ui.q.value.trim()) search();
  });
})();
