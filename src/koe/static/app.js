// koe's web page: submit files as jobs (POST /v1/jobs), follow them (GET /v1/jobs/{id}), read and download the
// results (GET /v1/jobs/{id}/result?format=...). Plain JS, no build step, no third-party code.
"use strict";

(() => {
  const KEY_STORE = "koe.apiKey";
  const NAMES_STORE = "koe.jobNames"; // job id -> the file's name, so a reload still shows names
  const SPEAKERS_STORE = "koe.speakerNames"; // job id -> {label: name the user gave}
  const MAX_NAMES = 500;
  const POLL_MS = 750;
  const FINISHED = new Set(["completed", "failed", "expired", "cancelled", "rejected"]);
  const EXTENSIONS = { text: "txt", json: "json", verbose_json: "json", srt: "srt", vtt: "vtt", tsv: "tsv", rttm: "rttm" };
  // Whisper's language codes (koe.options.LANGUAGES; tests/test_web.py checks the two agree).
  const LANGUAGES = (
    "en zh de es ru ko fr ja pt tr pl ca nl ar sv it id hi fi vi he uk el ms cs ro da hu ta no th ur hr bg lt " +
    "la mi ml cy sk te fa lv bn sr az sl kn et mk br eu is hy ne mn bs kk sq sw gl mr pa si km sn yo so af oc " +
    "ka be tg sd gu am yi lo uz fo ht ps tk nn mt sa lb my bo tl mg as tt haw ln ha ba jw su yue"
  ).split(" ");

  const $ = (id) => document.getElementById(id);
  const jobs = new Map(); // id -> {id, name, file, url, view, el, announced}
  let chosen = []; // File objects waiting to be submitted
  let keyPrompt = null; // the open key dialog's promise, shared by every request that got a 401
  let keyDeclined = false; // the user cancelled the dialog: stop asking until they press "API key"
  let pollTimer = null;
  let viewing = null; // the job shown in the transcript view

  // ---------------------------------------------------------------- requests

  class ApiError extends Error {
    constructor(status, type, message) {
      super(message);
      this.status = status;
      this.type = type;
    }
  }

  async function errorFrom(resp) {
    let text = "";
    try {
      text = await resp.text();
      const body = JSON.parse(text);
      const err = body.error || body;
      const message = typeof err === "string" ? err : err.message || err.detail || text;
      return new ApiError(resp.status, err.type || err.code || "error", String(message));
    } catch (_) {
      return new ApiError(resp.status, "error", text.trim() || `${resp.status} ${resp.statusText}`);
    }
  }

  // fetch() with the API key; on a 401 ask for a key (once for every request waiting) and try again.
  async function api(path, init = {}) {
    for (;;) {
      const headers = new Headers(init.headers || {});
      const key = sessionStorage.getItem(KEY_STORE);
      if (key) headers.set("Authorization", `Bearer ${key}`);
      let resp;
      try {
        resp = await fetch(path, { ...init, headers });
      } catch (e) {
        throw new ApiError(0, "network", `Cannot reach the server (${e.message}).`);
      }
      if (resp.ok) return resp;
      const error = await errorFrom(resp);
      if (resp.status !== 401 || keyDeclined) throw error;
      const used = key;
      const fresh = await askKey(used ? `The server refused that key: ${error.message}` : null, used);
      if (fresh === null) throw error;
    }
  }

  async function json(path, init) {
    return (await api(path, init)).json();
  }

  // ---------------------------------------------------------------- API key

  function askKey(why, refusedKey) {
    // Another request may already have stored a new key while this one was in flight: just retry with it.
    const current = sessionStorage.getItem(KEY_STORE);
    if (current && current !== refusedKey) return Promise.resolve(current);
    if (keyPrompt) return keyPrompt;
    const dialog = $("key-dialog");
    const input = $("key-input");
    const opener = document.activeElement;
    $("key-why").textContent = why || "This server needs an API key. It is kept in this browser tab only.";
    input.value = "";
    keyPrompt = new Promise((resolve) => {
      const done = (value) => {
        dialog.removeEventListener("close", onClose);
        $("key-cancel").removeEventListener("click", onCancel);
        keyPrompt = null;
        if (value) {
          sessionStorage.setItem(KEY_STORE, value);
          keyDeclined = false;
        } else {
          keyDeclined = true;
        }
        $("key-button").hidden = false;
        $("key-button").textContent = value ? "Change API key" : "Enter API key";
        if (opener && opener.focus && document.contains(opener)) opener.focus();
        if (value) schedulePoll(0);
        resolve(value || null);
      };
      const onClose = () => done(dialog.returnValue === "ok" ? input.value.trim() : "");
      const onCancel = () => dialog.close("cancel");
      dialog.addEventListener("close", onClose);
      $("key-cancel").addEventListener("click", onCancel);
      dialog.returnValue = "";
      dialog.showModal();
      input.focus();
    });
    return keyPrompt;
  }

  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    if (!$("key-input").value.trim()) {
      $("key-input").focus();
      return;
    }
    $("key-dialog").close("ok");
  });

  $("key-button").addEventListener("click", async () => {
    keyDeclined = false;
    const key = await askKey("Enter the API key for this server.", sessionStorage.getItem(KEY_STORE) || "");
    if (key) loadServer();
  });

  // ---------------------------------------------------------------- remembered file names

  function loadNames() {
    try {
      return JSON.parse(localStorage.getItem(NAMES_STORE) || "{}") || {};
    } catch (_) {
      return {};
    }
  }

  function rememberName(id, name) {
    const names = loadNames();
    names[id] = name;
    const ids = Object.keys(names);
    for (const old of ids.slice(0, Math.max(0, ids.length - MAX_NAMES))) delete names[old];
    try {
      localStorage.setItem(NAMES_STORE, JSON.stringify(names));
    } catch (_) {
      // storage full or disabled: names are a convenience only
    }
  }

  // ---------------------------------------------------------------- speaker names

  function speakerNames(jobId) {
    try {
      return (JSON.parse(localStorage.getItem(SPEAKERS_STORE) || "{}") || {})[jobId] || {};
    } catch (_) {
      return {};
    }
  }

  function renameSpeaker(jobId, label, name) {
    let all = {};
    try {
      all = JSON.parse(localStorage.getItem(SPEAKERS_STORE) || "{}") || {};
    } catch (_) {
      all = {};
    }
    all[jobId] = { ...(all[jobId] || {}), [label]: name };
    try {
      localStorage.setItem(SPEAKERS_STORE, JSON.stringify(all));
    } catch (_) {
      // storage full or disabled: the names still show until the page is reloaded
    }
    for (const span of document.querySelectorAll("#segments .speaker")) {
      if (span.dataset.speaker === label) span.textContent = name || label;
    }
  }

  function showSpeakers(job, labels) {
    const names = speakerNames(job.id);
    $("speakers").hidden = !labels.length;
    $("speaker-names").replaceChildren(
      ...labels.map((label, i) => {
        const id = `speaker-name-${i}`;
        const input = el("input", { id, type: "text", value: names[label] || label, "data-speaker": label });
        input.addEventListener("input", () => renameSpeaker(job.id, label, input.value.trim()));
        return el("p", { class: "field" }, el("label", { for: id }, label), input);
      }),
    );
    return names;
  }

  // ---------------------------------------------------------------- formatting

  function clock(seconds, decimals = 1) {
    const s = Math.max(0, Number(seconds) || 0);
    const h = Math.floor(s / 3600);
    const m = Math.floor((s % 3600) / 60);
    const rest = (s % 60).toFixed(decimals).padStart(decimals ? 3 + decimals : 2, "0");
    return h ? `${h}:${String(m).padStart(2, "0")}:${rest}` : `${m}:${rest}`;
  }

  function duration(seconds) {
    if (seconds == null || !isFinite(seconds)) return "";
    if (seconds < 10) return `${seconds.toFixed(1)} s`;
    if (seconds < 60) return `${Math.round(seconds)} s`;
    return clock(seconds, 0);
  }

  function stem(name) {
    const base = name.replace(/^.*[\\/]/, "");
    const dot = base.lastIndexOf(".");
    return (dot > 0 ? base.slice(0, dot) : base) || "transcript";
  }

  function announce(text) {
    $("status").textContent = text;
  }

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (v == null || v === false) continue;
      if (k === "class") node.className = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? "" : v);
    }
    for (const child of children) if (child != null) node.append(child);
    return node;
  }

  // ---------------------------------------------------------------- server facts

  async function loadServer() {
    const server = $("server");
    try {
      const body = await json("v1/web/models");
      fillModels(body.default, body.models || []);
      server.textContent = "Ready";
    } catch (e) {
      fillModels(null, []);
      server.textContent = e.status === 404 ? "Ready" : `Server: ${e.message}`;
    }
    try {
      const body = await json("v1/jobs?limit=50");
      const list = Array.isArray(body) ? body : body.jobs || body.data || [];
      for (const view of list.slice().reverse()) if (!jobs.has(view.id)) addJob(view, null);
      schedulePoll(0);
    } catch (e) {
      if (e.status !== 404) $("form-error").textContent = e.message;
    }
  }

  function fillModels(served, models) {
    const select = $("model");
    const previous = select.value;
    select.replaceChildren(el("option", { value: "" }, served ? `${served} (served)` : "Server default"));
    for (const name of models) if (name !== served) select.append(el("option", { value: name }, name));
    if ([...select.options].some((o) => o.value === previous)) select.value = previous;
  }

  function fillLanguages() {
    const names = typeof Intl.DisplayNames === "function" ? new Intl.DisplayNames(["en"], { type: "language" }) : null;
    const label = (code) => {
      try {
        const name = names && names.of(code === "jw" ? "jv" : code);
        return name && name !== code ? `${name} (${code})` : code;
      } catch (_) {
        return code;
      }
    };
    const items = LANGUAGES.map((code) => [label(code), code]).sort((a, b) => a[0].localeCompare(b[0]));
    for (const [text, code] of items) $("language").append(el("option", { value: code }, text));
  }

  // ---------------------------------------------------------------- choosing files

  function setChosen(files) {
    chosen = files;
    const list = $("chosen");
    list.replaceChildren();
    chosen.forEach((file, i) => {
      list.append(
        el(
          "li",
          {},
          el("span", {}, `${file.name} `),
          el("span", { class: "muted" }, `(${(file.size / 1e6).toFixed(1)} MB) `),
          el(
            "button",
            {
              type: "button",
              class: "link",
              "aria-label": `Remove ${file.name}`,
              onclick: () => setChosen(chosen.filter((_, j) => j !== i)),
            },
            "Remove",
          ),
        ),
      );
    });
    $("form-error").textContent = "";
  }

  const fileKey = (f) => `${f.name}\u0000${f.size}\u0000${f.lastModified}`;
  function addChosen(files) {
    const seen = new Set(chosen.map(fileKey));
    setChosen([...chosen, ...[...files].filter((f) => !seen.has(fileKey(f)))]);
  }

  $("files").addEventListener("change", (event) => addChosen(event.target.files));

  const drop = $("drop");
  for (const name of ["dragenter", "dragover"]) {
    drop.addEventListener(name, (event) => {
      event.preventDefault();
      drop.classList.add("over");
    });
  }
  for (const name of ["dragleave", "drop"]) {
    drop.addEventListener(name, () => drop.classList.remove("over"));
  }
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    const files = [...(event.dataTransfer ? event.dataTransfer.files : [])];
    if (files.length) addChosen(files);
  });
  // A file dropped beside the drop zone must not navigate away from the page.
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => event.preventDefault());

  // ---------------------------------------------------------------- submitting

  $("submit-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const files = chosen.length ? chosen : [...$("files").files];
    if (!files.length) {
      $("form-error").textContent = "Choose at least one audio or video file first.";
      $("files").focus();
      return;
    }
    $("form-error").textContent = "";
    const options = {
      model: $("model").value,
      language: $("language").value,
      task: $("task").value,
      format: $("format").value,
      diarize: $("diarize").checked,
    };
    const button = $("submit");
    button.disabled = true;
    setChosen([]);
    $("files").value = "";
    announce(`Submitting ${files.length} file${files.length > 1 ? "s" : ""}.`);
    try {
      await Promise.all(files.map((file) => submit(file, options)));
    } finally {
      button.disabled = false;
    }
  });

  async function submit(file, options) {
    const form = new FormData();
    form.append("file", file, file.name);
    if (options.model) form.append("model", options.model);
    if (options.language) form.append("language", options.language);
    if (options.task !== "transcribe") form.append("task", options.task);
    form.append("format", options.format);
    if (options.diarize) form.append("diarize", "true");
    const local = `local-${Math.random().toString(36).slice(2)}`;
    const pending = addJob({ id: local, status: "uploading" }, file);
    try {
      const view = await json("v1/jobs", { method: "POST", body: form });
      jobs.delete(local);
      pending.id = view.id;
      jobs.set(view.id, pending);
      rememberName(view.id, file.name);
      update(pending, view);
      schedulePoll(0);
    } catch (e) {
      update(pending, { id: local, status: "rejected", error: { type: e.type, message: e.message } });
    }
  }

  // ---------------------------------------------------------------- the job list

  function addJob(view, file) {
    const name = file ? file.name : view.filename || loadNames()[view.id] || view.id;
    const job = { id: view.id, name, file, url: null, view: null, announced: null };
    if (file) job.url = URL.createObjectURL(file);
    job.el = el("li", { class: "job" });
    $("jobs").prepend(job.el);
    $("no-jobs").hidden = true;
    jobs.set(view.id, job);
    update(job, view);
    return job;
  }

  function update(job, view) {
    job.view = view;
    const status = view.status || "queued";
    const progress = view.progress || {};
    const timings = view.timings || {};
    const total = progress.total_s;
    const done = status === "completed" && total ? total : progress.done_s || 0;
    const now = Date.now() / 1000;

    const parts = [];
    let queued = timings.time_in_backlog_s;
    if (queued == null && view.created_at) {
      if (status === "queued") queued = Math.max(0, now - view.created_at);
      else if (view.started_at) queued = Math.max(0, view.started_at - view.created_at);
    }
    if (queued != null) parts.push(`${status === "queued" ? "waiting" : "in queue"} ${duration(queued)}`);
    if (status === "running" && view.started_at) parts.push(`running ${duration(Math.max(0, now - view.started_at))}`);
    if (status === "completed" && timings.processing_s && total) {
      parts.push(`took ${duration(timings.processing_s)}`);
      parts.push(`${(total / timings.processing_s).toFixed(1)}× real time`);
    }

    const label = { uploading: "uploading", rejected: "not accepted" }[status] || status;
    const bar = el("progress", { max: total || 1, value: total ? Math.min(done, total) : status === "completed" ? 1 : null });
    bar.setAttribute("aria-label", `Progress of ${job.name}`);
    const amount = total ? `${duration(done)} of ${duration(total)} of audio` : status === "queued" ? "" : "";

    const actions = el("div", { class: "actions" });
    if (status === "completed") {
      actions.append(el("button", { type: "button", class: "primary", onclick: () => openTranscript(job) }, "View transcript"));
    }
    if (status === "queued") {
      actions.append(el("button", { type: "button", onclick: () => cancel(job) }, "Cancel"));
    }
    const error = view.error
      ? el("p", { class: "error job-error" }, `${view.error.message || view.error.type}`)
      : null;

    job.el.dataset.status = status;
    job.el.dataset.id = job.id;
    const children = [
      el(
        "div",
        { class: "job-head" },
        el("span", { class: "job-name" }, job.name),
        el("span", { class: `badge ${status}` }, label),
      ),
      FINISHED.has(status) && status !== "completed" ? null : bar,
      el("p", { class: "job-facts" }, [amount, ...parts].filter(Boolean).join(" · ")),
      error,
      actions.childElementCount ? actions : null,
    ];
    job.el.replaceChildren(...children.filter((child) => child != null));

    if (job.announced !== status && status !== "uploading") {
      if (job.announced !== null || !FINISHED.has(status)) {
        announce(`${job.name}: ${label}${view.error ? ` (${view.error.message})` : ""}.`);
      }
      job.announced = status;
    }
  }

  async function cancel(job) {
    try {
      await api(`v1/jobs/${encodeURIComponent(job.id)}`, { method: "DELETE" });
      update(job, await json(`v1/jobs/${encodeURIComponent(job.id)}`));
    } catch (e) {
      $("form-error").textContent = `${job.name}: ${e.message}`;
    }
  }

  function schedulePoll(delay = POLL_MS) {
    clearTimeout(pollTimer);
    pollTimer = setTimeout(poll, delay);
  }

  async function poll() {
    const open = [...jobs.values()].filter((j) => j.view && !FINISHED.has(j.view.status) && j.view.status !== "uploading");
    await Promise.all(
      open.map(async (job) => {
        try {
          update(job, await json(`v1/jobs/${encodeURIComponent(job.id)}`));
        } catch (e) {
          if (e.status === 404) update(job, { ...job.view, status: "failed", error: { message: "The job no longer exists on the server." } });
        }
      }),
    );
    const busy = [...jobs.values()].some((j) => j.view && !FINISHED.has(j.view.status));
    if (busy) schedulePoll(document.hidden ? POLL_MS * 4 : POLL_MS);
  }

  // ---------------------------------------------------------------- the transcript view

  function resultPath(job, format) {
    return `v1/jobs/${encodeURIComponent(job.id)}/result?format=${encodeURIComponent(format)}`;
  }

  async function openTranscript(job) {
    viewing = job;
    const viewer = $("viewer");
    const player = $("player");
    viewer.hidden = false;
    $("viewer-heading").textContent = `Transcript: ${job.name}`;
    $("viewer-error").textContent = "";
    $("viewer-warnings").textContent = "";
    $("viewer-meta").textContent = "Loading…";
    $("segments").replaceChildren();
    $("speakers").hidden = true;
    if (job.url) {
      if (player.src !== job.url) player.src = job.url;
      player.hidden = false;
      $("no-audio").hidden = true;
    } else {
      player.removeAttribute("src");
      player.hidden = true;
      $("no-audio").hidden = false;
    }
    $("viewer-heading").focus();
    try {
      const result = await json(resultPath(job, "verbose_json"));
      if (viewing !== job) return;
      const segments = result.segments || [];
      const facts = [
        result.language && `language: ${result.language}`,
        result.duration && `${duration(result.duration)} of audio`,
        `${segments.length} segment${segments.length === 1 ? "" : "s"}`,
      ];
      $("viewer-meta").textContent = facts.filter(Boolean).join(" · ");
      // e.g. an English-only model on speech in another language: its text is likely made up (koe.hallucination)
      $("viewer-warnings").textContent = (result.warnings || []).map((w) => `Warning: ${w}`).join(" ");
      if (!segments.length) $("segments").append(el("li", { class: "muted" }, result.text || "No speech found."));
      const names = showSpeakers(job, result.speakers || []);
      for (const seg of segments) {
        const stamp = `${clock(seg.start)} – ${clock(seg.end)}`;
        const who = seg.speaker
          ? el("span", { class: "speaker", "data-speaker": seg.speaker }, names[seg.speaker] || seg.speaker)
          : "";
        $("segments").append(
          el(
            "li",
            { "data-start": seg.start, "data-end": seg.end },
            el(
              "button",
              { type: "button", class: "segment", disabled: job.url ? null : true, onclick: () => playFrom(seg.start) },
              el("span", { class: "stamp" }, stamp),
              el("span", { class: "text" }, who, seg.text.trim()),
            ),
          ),
        );
      }
    } catch (e) {
      $("viewer-meta").textContent = "";
      $("viewer-error").textContent = e.message;
    }
  }

  function playFrom(start) {
    const player = $("player");
    player.currentTime = Number(start) || 0;
    const playing = player.play();
    if (playing && playing.catch) playing.catch((e) => ($("viewer-error").textContent = `Cannot play the audio: ${e.message}`));
  }

  $("player").addEventListener("timeupdate", () => {
    const t = $("player").currentTime;
    for (const li of $("segments").children) {
      const on = t >= Number(li.dataset.start) && t < Number(li.dataset.end);
      const button = li.firstElementChild;
      if (!button) continue;
      if (on) button.setAttribute("aria-current", "time");
      else button.removeAttribute("aria-current");
    }
  });

  for (const button of document.querySelectorAll("[data-download]")) {
    button.addEventListener("click", () => download(button.dataset.download));
  }

  async function download(format) {
    const job = viewing;
    if (!job) return;
    $("viewer-error").textContent = "";
    try {
      const blob = await (await api(resultPath(job, format))).blob();
      const name = `${stem(job.name)}.${EXTENSIONS[format] || format}`;
      const url = URL.createObjectURL(blob);
      const link = el("a", { href: url, download: name, hidden: true });
      document.body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60_000);
      announce(`Downloaded ${name}.`);
    } catch (e) {
      $("viewer-error").textContent = e.message;
    }
  }

  // ---------------------------------------------------------------- start

  window.addEventListener("visibilitychange", () => {
    if (!document.hidden) schedulePoll(0);
  });
  if (sessionStorage.getItem(KEY_STORE)) $("key-button").hidden = false;
  fillLanguages();
  loadServer();
})();
