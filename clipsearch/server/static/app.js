// The clipsearch page: plain JS over /api/ (docs/api.md). The query lives in the URL
// (?q=..&in=.. or ?similar=ID), so searches can be bookmarked and the back button works.
"use strict";

const PAGE = 40;
const $ = (id) => document.getElementById(id);
const grid = $("grid"), summary = $("summary"), empty = $("empty"), viewer = $("viewer");
let search = null;       // {kind: "text"|"similar"|"image", value, folder}
let results = [];        // everything shown so far
let more = false, loading = false, generation = 0, current = -1, library = null;

async function api(url, options) {
  const response = await fetch(url, options);
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error || `${response.status} ${response.statusText}`);
  return body;
}

function urlOf(s) {
  const p = new URLSearchParams();
  if (s.kind === "text") p.set("q", s.value);
  if (s.kind === "similar") p.set("similar", s.value);
  if (s.folder) p.set("in", s.folder);
  const query = p.toString();
  return query ? `/?${query}` : "/";
}

function fromUrl() {
  const p = new URLSearchParams(location.search);
  const folder = p.get("in") || "";
  if (p.get("q")) return { kind: "text", value: p.get("q"), folder };
  if (/^\d+$/.test(p.get("similar") || "")) return { kind: "similar", value: p.get("similar"), folder };
  return null;
}

function go(s, push = true) {
  search = s;
  if (push && s && s.kind !== "image") history.pushState(null, "", urlOf(s));
  $("q").value = s && s.kind === "text" ? s.value : "";
  $("in").value = s ? s.folder : $("in").value;
  results = []; more = false; grid.replaceChildren(); generation++;
  if (!s) { showIntro(); return; }
  empty.hidden = true;
  loadMore();
}

async function loadMore() {
  if (!search || loading) return;
  loading = true;
  const mine = generation, s = search;
  const p = new URLSearchParams({ limit: PAGE, offset: results.length });
  if (s.folder) p.set("in", s.folder);
  let label;
  try {
    let body;
    if (s.kind === "text") {
      p.set("q", s.value); label = `“${s.value}”`;
      body = await api(`/api/search?${p}`);
    } else if (s.kind === "similar") {
      if (!s.name) s.name = baseName((await api(`/api/file/${s.value}/info`)).path);
      label = `photos like ${s.name}`;
      body = await api(`/api/similar/${s.value}?${p}`);
    } else {
      label = "photos like your image";
      body = await api(`/api/search/image?${p}`, { method: "POST", body: s.value });
    }
    if (mine !== generation) return;
    more = body.more;
    body.results.forEach((r) => addCard(r));
    results.push(...body.results);
    const weak = body.good_match === false ? " · no good match: these are the closest" : "";
    summary.textContent = results.length
      ? `${results.length}${more ? "+" : ""} results for ${label}${weak}`
      : library && library.indexed === 0 ? "" : `Nothing found for ${label}` +
        (body.reason ? `: ${body.reason}` : "");
    if (!results.length && library && library.indexed === 0) showIntro();
  } catch (err) {
    if (mine === generation) summary.textContent = `⚠ ${err.message}`;
  } finally {
    loading = false;
  }
}

function addCard(r) {
  const index = grid.children.length;  // cards are added before results grows
  const li = document.createElement("li");
  const card = document.createElement("button");
  card.className = "card"; card.type = "button";
  card.title = r.path;
  const thumb = document.createElement("div"); thumb.className = "thumb";
  const img = document.createElement("img");
  img.loading = "lazy"; img.decoding = "async"; img.alt = baseName(r.path);
  img.src = r.thumbnail; img.width = 256; img.height = 256;
  const score = document.createElement("span"); score.className = "score";
  score.textContent = r.score.toFixed(3);
  const name = document.createElement("span"); name.className = "name";
  name.textContent = baseName(r.path);
  thumb.append(img, score); card.append(thumb, name); li.append(card);
  card.addEventListener("click", () => openViewer(index));
  grid.append(li);
}

const baseName = (path) => path.split("/").pop();

async function openViewer(index) {
  const r = results[index];
  if (!r) return;
  current = index;
  $("viewer-img").src = r.file; $("viewer-img").alt = baseName(r.path);
  $("viewer-name").textContent = baseName(r.path);
  $("viewer-path").textContent = r.path.slice(0, r.path.length - baseName(r.path).length);
  // taken_at_source: "exif" (the camera's date) or "mtime" (only the file's date is known)
  $("viewer-date").textContent = r.taken_at
    ? new Date(r.taken_at).toLocaleString() +
      (r.taken_at_source === "mtime" ? " (file date, no EXIF)" : "")
    : "unknown";
  $("viewer-score").textContent = r.score.toFixed(4);
  $("viewer-size").textContent = r.width ? `${r.width} × ${r.height}` : "";
  $("open").href = r.file;
  if (!viewer.open) viewer.showModal();
  try {
    const info = await api(`/api/file/${r.file_id}/info`);
    if (current === index) $("viewer-size").textContent =
      `${r.width} × ${r.height} · ${formatBytes(info.size)}`;
  } catch (_) { /* the picture is shown anyway */ }
}

function formatBytes(n) {
  const units = ["B", "KB", "MB", "GB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${i ? n.toFixed(1) : n} ${units[i]}`;
}

function showIntro() {
  summary.textContent = "";
  empty.replaceChildren();
  const h = document.createElement("h2"), p = document.createElement("p");
  if (library && library.indexed === 0) {
    h.textContent = "No photos indexed yet";
    p.innerHTML = library.roots.length
      ? "This library has folders but no indexed photos. Press <b>Index now</b> to index them."
      : "Add a folder with <code>clipsearch index ~/Photos</code>, then reload this page.";
  } else {
    h.textContent = "Search your photos by describing them";
    p.textContent = library
      ? `${library.indexed.toLocaleString()} photos indexed. Try “a dog on a beach”, or drop an image here.`
      : "";
  }
  empty.append(h, p); empty.hidden = false;
}

// -- status, folders and the index run ----------------------------------------------------
async function refreshStatus() {
  try {
    library = await api("/api/status");
  } catch (err) {
    $("status-text").textContent = `⚠ ${err.message}`;
    return;
  }
  $("status-text").textContent = `${library.indexed.toLocaleString()} photos` +
    (library.errors ? ` · ${library.errors} unreadable` : "") +
    (library.read_only ? " · read-only" : "");
  $("reindex").hidden = library.read_only || !library.roots.length;
  const select = $("in"), chosen = select.value || (search && search.folder) || "";
  select.replaceChildren(new Option("All folders", ""));
  for (const root of library.roots) select.append(new Option(baseName(root) || root, root));
  if (chosen && !library.roots.includes(chosen)) select.append(new Option(chosen, chosen));
  select.value = chosen;
  showProgress(library.index);
  if (!search) showIntro();
}

function showProgress(state) {
  const running = state && state.state === "running";
  $("progress").hidden = !running;
  $("reindex").disabled = running;
  if (running) {
    const pct = state.total ? (100 * state.done) / state.total : 0;
    $("progress-bar").style.width = `${pct}%`;
    $("status-text").textContent = state.stage === "compiling"
      ? "Preparing the model for this CPU (once per model)…" +
        (state.total ? ` · ${state.total.toLocaleString()} photos to index` : "")
      : state.total
      ? `Indexing ${state.done.toLocaleString()} of ${state.total.toLocaleString()}` +
        (state.rate ? ` · ${state.rate.toFixed(0)}/s` : "") +
        (state.errors ? ` · ${state.errors} unreadable` : "")
      : "Indexing: looking for new photos…";
  }
}

function listen() {
  const events = new EventSource("/api/index/events");
  let was = null;
  events.addEventListener("index", (e) => {
    const state = JSON.parse(e.data);
    showProgress(state);
    if (was === "running" && state.state !== "running") {
      refreshStatus();
      if (state.state === "failed") summary.textContent = `⚠ Indexing failed: ${state.error}`;
      else if (search && search.kind !== "image") go(search, false);
    }
    was = state.state;
  });
}

// -- input ---------------------------------------------------------------------------------
$("search").addEventListener("submit", (e) => {
  e.preventDefault();
  const q = $("q").value.trim();
  if (q) go({ kind: "text", value: q, folder: $("in").value });
});
$("in").addEventListener("change", () => {
  if (search) go({ ...search, folder: $("in").value });
});
$("reindex").addEventListener("click", async () => {
  try {
    showProgress(await api("/api/index", { method: "POST" }));
  } catch (err) { summary.textContent = `⚠ ${err.message}`; }
});
$("image").addEventListener("change", (e) => {
  if (e.target.files[0]) searchImage(e.target.files[0]);
});

function searchImage(blob) {
  history.pushState(null, "", urlOf({ kind: "image", folder: $("in").value }));
  go({ kind: "image", value: blob, folder: $("in").value }, false);
}

let dragDepth = 0;
window.addEventListener("dragenter", (e) => {
  if ([...e.dataTransfer.types].includes("Files")) { dragDepth++; $("drop").hidden = false; }
});
window.addEventListener("dragleave", () => { if (--dragDepth <= 0) { dragDepth = 0; $("drop").hidden = true; } });
window.addEventListener("dragover", (e) => e.preventDefault());
window.addEventListener("drop", (e) => {
  e.preventDefault(); dragDepth = 0; $("drop").hidden = true;
  const file = [...e.dataTransfer.files].find((f) => f.type.startsWith("image/"));
  if (file) searchImage(file);
});
window.addEventListener("paste", (e) => {
  const item = [...e.clipboardData.items].find((i) => i.type.startsWith("image/"));
  if (item) { e.preventDefault(); searchImage(item.getAsFile()); }
});

$("more").addEventListener("click", moreLikeThis);
$("close").addEventListener("click", () => viewer.close());
viewer.addEventListener("click", (e) => { if (e.target === viewer) viewer.close(); });

function moreLikeThis() {
  const r = results[current];
  if (!r) return;
  viewer.close();
  go({ kind: "similar", value: String(r.file_id), name: baseName(r.path), folder: $("in").value });
  window.scrollTo(0, 0);
}

document.addEventListener("keydown", (e) => {
  if (viewer.open) {
    if (e.key === "ArrowRight") { openViewer(Math.min(current + 1, results.length - 1)); e.preventDefault(); }
    if (e.key === "ArrowLeft") { openViewer(Math.max(current - 1, 0)); e.preventDefault(); }
    if (e.key === "m") moreLikeThis();
    return;
  }
  const typing = ["INPUT", "SELECT", "TEXTAREA"].includes(document.activeElement.tagName);
  if (e.key === "/" && !typing) { e.preventDefault(); $("q").focus(); $("q").select(); }
});

window.addEventListener("popstate", () => go(fromUrl(), false));
new IntersectionObserver((entries) => {
  if (entries[0].isIntersecting && more) loadMore();
}, { rootMargin: "800px" }).observe($("sentinel"));

refreshStatus().then(() => go(fromUrl(), false));
listen();
