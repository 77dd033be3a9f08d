// clip4vla search page: plain JavaScript, no framework, no build step.
// Every list of results comes from the same JSON rows as `clip4vla-search query --json`;
// media and thumbnails are fetched by the row's file number (`id`), never by a path.
"use strict";

const $ = (id) => document.getElementById(id);
const page = { audioExtensions: [], maxUploadMb: 20, current: null, request: 0 };

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

function showNotice(message, { error = false, command = null } = {}) {
  const notice = $("notice");
  notice.replaceChildren(message);
  if (command) notice.append(" Run: ", el("code", { textContent: command }));
  notice.className = error ? "notice error" : "notice";
  notice.hidden = false;
}

function clearNotice() { $("notice").hidden = true; }

const fileName = (path) => path.split("/").pop();
const seconds = (t) => `${t.toFixed(1)} s`;
const isSound = (path) => page.audioExtensions.some((ext) => path.toLowerCase().endsWith(ext));

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
    showNotice(`${status.problem}.`, { error: true, command: status.command });
    return;
  }
  line.replaceChildren(
    `${status.files} files (${status.windows} windows) in ${status.folder} · model ${status.model} · indexed ${status.built} · `);
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
}

function render(data, title) {
  const grid = $("results");
  grid.replaceChildren();
  $("results-title").textContent = data.results.length ? title : `${title}: nothing to show`;
  if (data.notes && data.notes.length) showNotice(data.notes.join("; ") + "."); else clearNotice();
  data.results.forEach((row, place) => {
    const similar = el("button", { type: "button", className: "similar", textContent: "more like this",
      title: "rank by this window's own pictures and sound" });
    similar.addEventListener("click", (event) => { event.stopPropagation(); moreLikeThis(row); });
    const card = el("div", { className: "card", tabIndex: 0, title: row.path },
      el("img", { className: "thumb", loading: "lazy", alt: fileName(row.path), src: `/thumb/${row.id}/${row.window}` }),
      el("div", { className: "meta" },
        el("span", { className: "name", textContent: `${place + 1}. ${fileName(row.path)}` }),
        el("span", { className: "line" },
          el("span", { className: "score", textContent: row.score.toFixed(3) }),
          el("span", { className: "span", textContent: `${seconds(row.start)}–${seconds(row.end)}` })),
        el("span", { className: "line" }, similar)));
    card.dataset.id = row.id;
    card.dataset.start = row.start;
    card.addEventListener("click", () => play(row, card));
    card.addEventListener("keydown", (event) => { if (event.key === "Enter") play(row, card); });
    grid.append(card);
  });
}

async function run(url, options, title) {
  const mine = ++page.request;  // a slow answer to an older request must not replace a newer one
  $("results-title").textContent = "searching…";
  try {
    const data = await getJSON(url, options);
    if (mine === page.request) render(data, title);
  } catch (err) {
    if (mine === page.request) {
      $("results").replaceChildren();
      $("results-title").textContent = "";
      showNotice(err.message, { error: true });
    }
  }
}

function params() {
  return { modality: $("modality").value, k: $("k").value || "12" };
}

function searchText(event) {
  event.preventDefault();
  const q = $("q").value;
  const query = new URLSearchParams({ q, ...params() });
  run(`/api/search?${query}`, undefined, `results for “${q}”`);
}

function moreLikeThis(row) {
  const query = new URLSearchParams({ id: row.id, window: row.window, ...params() });
  run(`/api/similar?${query}`, undefined, `more like ${fileName(row.path)} ${seconds(row.start)}–${seconds(row.end)}`);
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
  run("/api/sound", { method: "POST", body: form }, `results for the sound of ${file.name}`);
}

function play(row, card) {
  const sound = isSound(row.path);
  const video = $("player-video");
  const audio = $("player-audio");
  const media = sound ? audio : video;
  const other = sound ? video : audio;
  other.pause();
  other.hidden = true;
  media.hidden = false;
  $("player").hidden = false;
  page.current = row;
  document.querySelectorAll(".card.playing").forEach((c) => c.classList.remove("playing"));
  if (card) card.classList.add("playing");
  $("now-name").textContent = fileName(row.path);
  $("now-span").textContent = `matched ${seconds(row.start)}–${seconds(row.end)}`;
  $("timeline-window").style.width = "0";
  media.addEventListener("loadedmetadata", () => {
    const duration = media.duration || row.end;
    $("timeline-window").style.left = `${(100 * row.start) / duration}%`;
    $("timeline-window").style.width = `${(100 * (row.end - row.start)) / duration}%`;
    media.currentTime = row.start;  // the server answers Range requests, so this seeks in every browser
    media.play().catch(() => {});  // a browser that blocks autoplay leaves the controls to the user
  }, { once: true });
  media.src = `/media/${row.id}`;
  media.load();
}

function updateHead(event) {
  const media = event.target;
  if (media.duration) $("timeline-head").style.left = `${(100 * media.currentTime) / media.duration}%`;
}

function seekTimeline(event) {
  const media = $("player-video").hidden ? $("player-audio") : $("player-video");
  const box = $("timeline").getBoundingClientRect();
  if (media.duration) media.currentTime = ((event.clientX - box.left) / box.width) * media.duration;
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
}

$("search-form").addEventListener("submit", searchText);
$("now-similar").addEventListener("click", () => page.current && moreLikeThis(page.current));
$("player-video").addEventListener("timeupdate", updateHead);
$("player-audio").addEventListener("timeupdate", updateHead);
$("timeline").addEventListener("click", seekTimeline);
setUpDrop();
loadStatus();
