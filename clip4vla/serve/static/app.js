// clip4vla search page: plain JavaScript, no framework, no build step.
// Every list of results comes from the same JSON rows as `clip4vla-search query --json`;
// media and thumbnails are fetched by the row's file number (`id`), never by a path.
"use strict";

const $ = (id) => document.getElementById(id);
const EXAMPLES = ["a small red shape with a high siren", "a blue circle moving in silence", "green rising chirps over rain",
  "a voice chanting", "a dog barking in the rain"];
const BROWSE_PAGE = 24;
const page = { audioExtensions: [], maxUploadMb: 20, current: null, request: 0, browsed: 0 };

async function getJSON(url, options) {
  const response = await fetch(url, options);
  let body;
  try { body = await response.json(); } catch (_) { body = { error: `HTTP ${response.status}` }; }
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return body;
}

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  Object.assign(node, props);
  for (const child of children) node.append(child);
  return node;
}

// A message's `backticked` parts as code, the rest as text (never as HTML).
function richText(text) {
  return text.split("`").map((part, i) => (i % 2 ? el("code", { textContent: part }) : part));
}

function showNotice(message, { error = false, command = null } = {}) {
  const notice = $("notice");
  notice.replaceChildren(...richText(message));
  if (command) notice.append(" Run: ", el("code", { className: "command", textContent: command }));
  notice.className = error ? "notice error" : "notice";
  notice.hidden = false;
}

function clearNotice() { $("notice").hidden = true; }

const fileName = (path) => path.split("/").pop();
const seconds = (t) => `${t.toFixed(1)} s`;
const isSound = (path) => page.audioExtensions.some((ext) => path.toLowerCase().endsWith(ext));
const number = (x) => (x === null || x === undefined ? "–" : x.toFixed(3));

const MODE_WORDS = {
  av: "ranked by their average (a side a file lacks counts as the query's average over the index)",
  v: "ranked by vision; sound shown for comparison",
  a: "ranked by sound; vision shown for comparison",
};
const SOUND_MODE = {
  av: "a sound is matched against the files' pictures and sound, averaged (the switch above applies)",
  v: "a sound is matched against the files' pictures (the switch above applies)",
  a: "a sound is matched against the files' sound (the switch above applies)",
};

async function loadStatus() {
  let status;
  try {
    status = await getJSON("/api/status");
  } catch (err) {
    $("status").textContent = `status unavailable: ${err.message}`;
    return;
  }
  page.audioExtensions = status.audio_extensions || [];
  page.maxUploadMb = status.max_upload_mb;
  $("k").max = status.max_k;
  const line = $("status");
  if (!status.ok) {
    line.textContent = `${status.folder}: no usable index`;
    showNotice(`${status.problem}. ${status.command ? "" : status.hint}`, { error: true, command: status.command });
    $("results-title").textContent = "Once the folder is indexed, its files show here.";
    return;
  }
  line.replaceChildren(
    `${status.files} files (${status.windows} windows) in ${status.folder} · model ${status.model} · ` +
    `indexed ${status.built.slice(0, 16).replace("T", " ")} · `);
  if (status.unreadable_count) {
    const details = el("details", {}, el("summary", { textContent: `${status.unreadable_count} unreadable` }));
    for (const item of status.unreadable) details.append(el("div", { textContent: `${item.path}: ${item.reason}` }));
    line.append(details);
  } else {
    line.append("0 unreadable");
  }
  const stale = status.stale;
  const changed = stale.changed.count + stale.new.count + stale.deleted.count;
  if (changed) {
    const parts = [];
    if (stale.changed.count) parts.push(`${stale.changed.count} changed`);
    if (stale.new.count) parts.push(`${stale.new.count} new`);
    if (stale.deleted.count) parts.push(`${stale.deleted.count} deleted`);
    showNotice(`The index is out of date: ${parts.join(", ")} since it was built ` +
      `(e.g. ${[...stale.changed.examples, ...stale.new.examples, ...stale.deleted.examples].slice(0, 3).join(", ")}).`,
    { command: status.command });
  }
  browse();
}

// One component of a score: label, a bar (0 to 1) and the number; dimmed when it did not rank.
function part(label, value, used) {
  const bar = el("span", { className: "bar" }, el("span", { className: "fill" }));
  bar.firstChild.style.width = `${Math.max(0, Math.min(1, value ?? 0)) * 100}%`;
  return el("span", { className: `part ${label}${used ? "" : " unused"}`, title: used ? "" : "not used for this ranking" },
    el("span", { className: "label", textContent: label }), bar, el("span", { className: "value", textContent: number(value) }));
}

function scoreParts(scores, modality) {
  return el("span", { className: "parts" },
    part("vision", scores.vision, modality !== "a"), part("sound", scores.sound, modality !== "v"));
}

// What a row's time span means: a window of a longer file, or the whole of a short one.
function spanText(row) {
  if (row.windows > 1) return `${seconds(row.start)}–${seconds(row.end)}`;
  return `whole file · ${seconds(row.end - row.start)}`;
}

function thumbnail(row, modality) {
  const show = modality === "a" ? "?show=sound" : "";  // ranked by sound: show what was matched
  return el("img", { className: "thumb", loading: "lazy", alt: fileName(row.path), src: `/thumb/${row.id}/${row.window}${show}` });
}

function card(row, place, view) {
  const meta = el("div", { className: "meta" }, el("span", { className: "name", textContent: `${place + 1}. ${fileName(row.path)}` }));
  if (view.scored) {
    meta.append(el("span", { className: "line" },
      el("span", { className: "score", textContent: row.score.toFixed(3), title: "score (legend above the results)" }),
      el("span", { className: "span", textContent: spanText(row) })),
    scoreParts(row, view.modality));
  } else {
    meta.append(el("span", { className: "line" },
      el("span", { className: "span", textContent: spanText(row) }),
      el("span", { className: "modified", textContent: row.modified.slice(0, 16).replace("T", " ") })));
  }
  const similar = el("button", { type: "button", className: "similar", textContent: "more like this",
    title: "rank by this window's own pictures and sound" });
  similar.addEventListener("click", (event) => { event.stopPropagation(); moreLikeThis(row); });
  meta.append(el("span", { className: "line" }, similar));
  const node = el("div", { className: "card", tabIndex: 0, title: row.path }, thumbnail(row, view.modality), meta);
  node.dataset.id = row.id;
  node.addEventListener("click", () => play(row, node, view));
  node.addEventListener("keydown", (event) => { if (event.key === "Enter") play(row, node, view); });
  return node;
}

function render(data, title, view, { append = false } = {}) {
  const grid = $("results");
  if (!append) grid.replaceChildren();
  const offset = grid.children.length;
  $("results-title").textContent = data.results.length || append ? title : `${title}: nothing to show`;
  if (data.notes && data.notes.length) showNotice(data.notes.join("; ") + "."); else if (!append) clearNotice();
  $("legend").hidden = !view.scored;
  if (view.scored) {
    $("legend").textContent = "score: cosine similarity of the query with a file's best window (higher is closer; " +
      `compare within one list) · vision: with its pictures · sound: with its sound · ${MODE_WORDS[view.modality]}` +
      (view.similar ? " · here the query is the chosen window's own pictures and sound" : "");
  }
  const cards = data.results.map((row, i) => card(row, offset + i, view));
  grid.append(...cards);
  // the player never shows a file of an older list: it moves to this list's first result
  if (view.scored && !$("player").hidden) {
    if (cards.length) play(data.results[0], cards[0], view, { autoplay: false }); else closePlayer();
  }
}

async function run(url, options, title, view) {
  const mine = ++page.request;  // a slow answer to an older request must not replace a newer one
  $("results-title").textContent = "searching…";
  $("more").hidden = true;
  try {
    const data = await getJSON(url, options);
    if (mine === page.request) render(data, title, view);
  } catch (err) {
    if (mine === page.request) {
      $("results").replaceChildren();
      $("results-title").textContent = "";
      $("legend").hidden = true;
      showNotice(err.message, { error: true });
    }
  }
}

function params() {
  return { modality: $("modality").value, k: $("k").value || "12" };
}

async function browse({ append = false } = {}) {
  const mine = ++page.request;
  const offset = append ? page.browsed : 0;
  try {
    const data = await getJSON(`/api/files?${new URLSearchParams({ offset, k: BROWSE_PAGE })}`);
    if (mine !== page.request) return;
    page.browsed = offset + data.results.length;
    render(data, `browse: ${data.total} indexed files, newest first (showing ${page.browsed}) · or type a query, or try an example`,
      { scored: false, modality: "av" }, { append });
    $("more").hidden = page.browsed >= data.total;
  } catch (err) {
    if (mine === page.request) showNotice(err.message, { error: true });
  }
}

function searchText(event) {
  if (event) event.preventDefault();
  const q = $("q").value;
  const view = { scored: true, ...params() };
  run(`/api/search?${new URLSearchParams({ q, ...params() })}`, undefined, `results for “${q}”`, view);
}

function moreLikeThis(row) {
  const view = { scored: true, similar: true, ...params() };
  const query = new URLSearchParams({ id: row.id, window: row.window, ...params() });
  run(`/api/similar?${query}`, undefined, `more like ${fileName(row.path)} ${spanText(row)}`, view);
}

function searchSound(file) {
  if (!file) return;
  if (file.size > page.maxUploadMb * 1024 * 1024) {
    showNotice(`${file.name} is larger than ${page.maxUploadMb} MB: use a shorter sound.`, { error: true });
    return;
  }
  const form = new FormData();
  form.append("file", file);
  const { modality, k } = params();
  form.append("modality", modality);
  form.append("k", k);
  run("/api/sound", { method: "POST", body: form }, `results for the sound of ${file.name}`, { scored: true, modality, k });
}

function closePlayer() {
  for (const media of [$("player-video"), $("player-audio")]) {
    media.pause();
    media.removeAttribute("src");
    media.load();
  }
  $("player").hidden = true;
  $("layout").classList.remove("playing");
  page.current = null;
  document.querySelectorAll(".card.playing").forEach((c) => c.classList.remove("playing"));
}

function activeMedia() {
  return $("player-video").hidden ? $("player-audio") : $("player-video");
}

// The file's windows beside the player, each with its scores; clicking one plays from there.
function showWindows(row, view) {
  const list = $("now-windows");
  list.replaceChildren();
  $("now-scores").replaceChildren();
  if (view.scored) $("now-scores").append(el("span", { className: "score", textContent: `score ${row.score.toFixed(3)}` }), scoreParts(row, view.modality));
  if (row.windows <= 1) {
    $("now-span").textContent = `the whole file (${seconds(row.end - row.start)}) is one window: ` +
      (view.scored ? "its score is for all of it" : "not scored while browsing");
    return;
  }
  $("now-span").textContent = view.scored
    ? `matched ${seconds(row.start)}–${seconds(row.end)}, the best of ${row.windows} windows; click a window to jump there`
    : `${row.windows} windows of the model's clip length`;
  if (!row.per_window) return;
  row.per_window.forEach((w, i) => {
    const item = el("li", { className: i === row.window ? "window best" : "window", tabIndex: 0 },
      el("span", { className: "when", textContent: `${seconds(w.start)}–${seconds(w.end)}` }),
      el("span", { className: "score", textContent: number(w.score) }),
      scoreParts(w, view.modality));
    item.dataset.start = w.start;
    item.dataset.end = w.end;
    const jump = () => { const media = activeMedia(); media.currentTime = w.start; media.play().catch(() => {}); };
    item.addEventListener("click", jump);
    item.addEventListener("keydown", (event) => { if (event.key === "Enter") jump(); });
    list.append(item);
  });
}

function play(row, node, view, { autoplay = true } = {}) {
  const sound = isSound(row.path);
  const video = $("player-video");
  const audio = $("player-audio");
  const media = sound ? audio : video;
  const other = sound ? video : audio;
  other.pause();
  other.hidden = true;
  media.hidden = false;
  $("player").hidden = false;
  $("layout").classList.add("playing");
  page.current = row;
  document.querySelectorAll(".card.playing").forEach((c) => c.classList.remove("playing"));
  if (node) node.classList.add("playing");
  $("now-name").textContent = fileName(row.path);
  $("now-name").title = row.path;
  showWindows(row, view);
  media.addEventListener("loadedmetadata", () => {
    media.currentTime = row.start;  // the server answers Range requests, so this seeks in every browser
    if (autoplay) media.play().catch(() => {});  // a browser that blocks autoplay leaves the controls to the user
  }, { once: true });
  media.src = `/media/${row.id}`;
  media.load();
}

function markWindow(event) {
  const t = event.target.currentTime;
  for (const item of $("now-windows").children) {
    item.classList.toggle("now", t >= Number(item.dataset.start) && t < Number(item.dataset.end));
  }
}

function setUpDrop() {
  const drop = $("drop");
  for (const name of ["dragenter", "dragover"]) {
    drop.addEventListener(name, (event) => { event.preventDefault(); drop.classList.add("over"); });
  }
  for (const name of ["dragleave", "drop"]) {
    drop.addEventListener(name, () => drop.classList.remove("over"));
  }
  drop.addEventListener("drop", (event) => { event.preventDefault(); searchSound(event.dataTransfer.files[0]); });
  $("sound").addEventListener("change", (event) => searchSound(event.target.files[0]));
  const mode = () => { $("sound-mode").textContent = SOUND_MODE[$("modality").value]; };
  $("modality").addEventListener("change", mode);
  mode();
}

function setUpExamples() {
  for (const text of EXAMPLES) {
    const button = el("button", { type: "button", className: "example", textContent: text });
    button.addEventListener("click", () => { $("q").value = text; searchText(); });
    $("examples").append(button);
  }
}

$("search-form").addEventListener("submit", searchText);
$("browse").addEventListener("click", () => browse());
$("more").addEventListener("click", () => browse({ append: true }));
$("close").addEventListener("click", closePlayer);
$("now-similar").addEventListener("click", () => page.current && moreLikeThis(page.current));
$("player-video").addEventListener("timeupdate", markWindow);
$("player-audio").addEventListener("timeupdate", markWindow);
setUpExamples();
setUpDrop();
loadStatus();
