// sam-engine annotation page: canvas click loop over a WebSocket, task queue, history / revert, review mode.
// No build step, no dependencies. State the tests read: body[data-ws], canvas[data-mask-area],
// canvas[data-mask-final] ("false" while a click's quick answer shows and its zoomed-in one is coming),
// canvas[data-image-loaded], #status text, window.samState.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const canvas = $("canvas");
  const ctx = canvas.getContext("2d");
  const overlay = document.createElement("canvas");
  const octx = overlay.getContext("2d");

  const state = {
    token: null, user: null, ws: null, seq: 0, pending: new Map(), mode: "annotate",
    task: null, image: null, bitmap: null, result: null, existing: [], tasks: [], progress: null,
    drag: null, review: null, reviewItems: [], historyMask: null, pendingAccept: null, reconnectDelay: 250,
    finalSeq: 0, // seq of the last final masks drawn: a late quick answer never replaces them
  };
  window.samState = state;

  // ---------------------------------------------------------------------------------------------- helpers
  function setStatus(text, kind) {
    const el = $("status");
    el.textContent = text;
    el.className = kind || "";
  }

  function requestId() {
    const bytes = new Uint8Array(16);
    crypto.getRandomValues(bytes);
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  async function api(path, options = {}) {
    const headers = Object.assign({ Authorization: `Bearer ${state.token}` }, options.headers || {});
    if (options.body && typeof options.body !== "string") {
      headers["Content-Type"] = "application/json";
      options = Object.assign({}, options, { body: JSON.stringify(options.body) });
    }
    const res = await fetch(path, Object.assign({}, options, { headers }));
    if (res.status === 401) { signOut("Your token was not accepted."); throw new Error("unauthorized"); }
    if (!res.ok) {
      let detail = res.statusText;
      try { detail = (await res.json()).detail || detail; } catch (e) { /* not JSON */ }
      throw new Error(detail);
    }
    return res;
  }

  // COCO compressed RLE (column-major runs, LEB128-like text) → row-major Uint8Array of h*w.
  function rleDecode(rle) {
    const h = rle.size[0], w = rle.size[1];
    let counts = rle.counts;
    if (typeof counts === "string") {
      const s = counts; counts = [];
      let p = 0;
      while (p < s.length) {
        let x = 0, k = 0, more = 1, c = 0;
        while (more) {
          c = s.charCodeAt(p) - 48;
          x += (c & 0x1f) * Math.pow(2, 5 * k);
          more = c & 0x20; p++; k++;
          if (!more && (c & 0x10)) x -= Math.pow(2, 5 * k);
        }
        if (counts.length > 2) x += counts[counts.length - 2];
        counts.push(x);
      }
    }
    const out = new Uint8Array(h * w);
    let idx = 0, val = 0;
    for (const n of counts) {
      if (val) {
        for (let i = idx; i < idx + n; i++) {
          const col = (i / h) | 0, row = i - col * h;
          out[row * w + col] = 1;
        }
      }
      idx += n; val ^= 1;
    }
    return out;
  }

  async function pngDecode(b64, w, h) {
    const blob = await (await fetch(`data:image/png;base64,${b64}`)).blob();
    const bmp = await createImageBitmap(blob);
    const c = document.createElement("canvas"); c.width = w; c.height = h;
    const cx = c.getContext("2d"); cx.drawImage(bmp, 0, 0);
    const px = cx.getImageData(0, 0, w, h).data, out = new Uint8Array(w * h);
    for (let i = 0; i < w * h; i++) out[i] = px[i * 4] > 127 ? 1 : 0;
    return out;
  }

  // ---------------------------------------------------------------------------------------------- drawing
  function paintMask(bits, rgba, into) {
    const { width: w, height: h } = state.image;
    const img = into || octx.createImageData(w, h);
    const d = img.data;
    for (let i = 0; i < bits.length; i++) {
      if (!bits[i]) continue;
      const o = i * 4;
      d[o] = rgba[0]; d[o + 1] = rgba[1]; d[o + 2] = rgba[2]; d[o + 3] = rgba[3];
    }
    return img;
  }

  function outline(bits, w, h, rgba, img) {
    const d = img.data;
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) {
        const i = y * w + x;
        if (!bits[i]) continue;
        if (x === 0 || y === 0 || x === w - 1 || y === h - 1 || !bits[i - 1] || !bits[i + 1] || !bits[i - w] || !bits[i + w]) {
          const o = i * 4; d[o] = rgba[0]; d[o + 1] = rgba[1]; d[o + 2] = rgba[2]; d[o + 3] = rgba[3];
        }
      }
    }
  }

  function redraw() {
    if (!state.image) return;
    const { width: w, height: h } = state.image;
    ctx.clearRect(0, 0, w, h);
    if (state.bitmap) ctx.drawImage(state.bitmap, 0, 0);
    const img = octx.createImageData(w, h);
    for (const m of state.existing) {
      if (!m.bits) continue;
      const isReview = state.review && m.mask_id === state.review.mask_id;
      paintMask(m.bits, isReview ? [255, 160, 0, 90] : [63, 185, 80, 60], img);
      outline(m.bits, w, h, isReview ? [255, 160, 0, 255] : [63, 185, 80, 200], img);
    }
    let area = 0;
    const r = state.result;
    if (r && r.selected !== null && r.bits[r.selected]) {
      const bits = r.bits[r.selected];
      for (let i = 0; i < bits.length; i++) area += bits[i];
      paintMask(bits, [61, 139, 253, 120], img);
      outline(bits, w, h, [160, 200, 255, 255], img);
    }
    octx.putImageData(img, 0, 0);
    ctx.drawImage(overlay, 0, 0);
    canvas.dataset.maskArea = String(area);
    const dot = Math.max(1.5, w / 160);
    if (r) {
      for (const p of r.points || []) {
        ctx.beginPath(); ctx.arc(p[0], p[1], dot * 1.6, 0, 2 * Math.PI);
        ctx.fillStyle = p[2] ? "#3fb950" : "#f85149"; ctx.fill();
        ctx.lineWidth = dot / 2; ctx.strokeStyle = "#fff"; ctx.stroke();
      }
      if (r.box) drawBox(r.box, "#ffd33d");
    }
    if (state.drag && state.drag.moved) drawBox([state.drag.x0, state.drag.y0, state.drag.x1, state.drag.y1], "#ffd33d");
  }

  function drawBox(b, color) {
    ctx.lineWidth = Math.max(1, state.image.width / 250);
    ctx.strokeStyle = color;
    ctx.strokeRect(Math.min(b[0], b[2]), Math.min(b[1], b[3]), Math.abs(b[2] - b[0]), Math.abs(b[3] - b[1]));
  }

  function fitCanvas() {
    if (!state.image) return;
    const stage = $("stage");
    const scale = Math.max(1, Math.min((stage.clientWidth - 24) / state.image.width, (stage.clientHeight - 24) / state.image.height, 8));
    canvas.style.width = `${Math.floor(state.image.width * scale)}px`;
    canvas.style.height = `${Math.floor(state.image.height * scale)}px`;
  }

  function renderCandidates() {
    const box = $("candidates");
    box.textContent = "";
    const r = state.result;
    if (!r || !r.scores.length) return;
    r.scores.forEach((s, i) => {
      const b = document.createElement("button");
      b.type = "button";
      b.textContent = `${i + 1}: ${s.toFixed(2)}`;
      b.title = `candidate ${i + 1}, predicted IoU ${s.toFixed(3)}, ${r.areas[i]} px`;
      b.dataset.index = String(i);
      if (i === r.selected) b.classList.add("selected");
      b.addEventListener("click", () => choose(i));
      box.appendChild(b);
    });
  }

  function renderProgress(p) {
    if (!p) return;
    state.progress = p;
    const done = p.done + p.skipped;
    const el = $("progress");
    el.textContent = p.total ? `${done} / ${p.total} images done` : "no tasks assigned";
    el.dataset.done = String(done);
    el.dataset.total = String(p.total);
  }

  // ---------------------------------------------------------------------------------------------- socket
  function connect() {
    const ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`);
    state.ws = ws;
    ws.addEventListener("open", () => ws.send(JSON.stringify({ type: "auth", token: state.token })));
    ws.addEventListener("message", (ev) => onMessage(JSON.parse(ev.data)));
    ws.addEventListener("close", (ev) => {
      document.body.dataset.ws = "closed";
      for (const [, p] of state.pending) p.reject(new Error("connection closed"));
      state.pending.clear();
      if (ev.code === 4401) { signOut("Your token was not accepted."); return; }
      setStatus("Connection lost, reconnecting…", "error");
      setTimeout(connect, state.reconnectDelay);
      state.reconnectDelay = Math.min(state.reconnectDelay * 2, 5000);
    });
  }

  function send(msg) {
    return new Promise((resolve, reject) => {
      if (!state.ws || state.ws.readyState !== WebSocket.OPEN) { reject(new Error("not connected")); return; }
      const seq = ++state.seq;
      state.pending.set(seq, { resolve, reject, type: msg.type });
      state.ws.send(JSON.stringify(Object.assign({ seq }, msg)));
    });
  }

  async function onMessage(msg) {
    if (msg.type === "ready") {
      document.body.dataset.ws = "open";
      state.reconnectDelay = 250;
      state.user = msg.user;
      $("user").textContent = `${msg.user.name} (${msg.user.role})`;
      $("mode-review").hidden = !(msg.user.role === "reviewer" || msg.user.role === "admin");
      renderProgress(msg.progress);
      await retryPendingAccept();
      if (state.mode === "review") await loadReviewQueue();
      else if (state.task) await openTask(state.task.task_id);
      else await loadTasks(true);
      return;
    }
    const waiter = msg.seq != null ? state.pending.get(msg.seq) : null;
    if (msg.type === "masks" && msg.final === false) {
      // the quick whole-image answer of a pending click: draw it; the zoomed-in answer follows with this seq
      if (waiter) { await applyMasks(msg); setStatus("Refining…"); }
      return;
    }
    if (waiter) {
      state.pending.delete(msg.seq);
      if (msg.type === "error") waiter.reject(Object.assign(new Error(msg.message), { code: msg.code }));
      else waiter.resolve(msg);
    } else if (msg.type === "error") {
      setStatus(msg.message, "error");
    }
  }

  // ---------------------------------------------------------------------------------------------- tasks
  async function loadTasks(openFirst) {
    const data = await (await api("/api/tasks")).json();
    state.tasks = data.tasks;
    renderProgress(data.progress);
    const list = $("task-list");
    list.textContent = "";
    for (const t of data.tasks) {
      const li = document.createElement("li");
      li.textContent = `#${t.task_id} image ${t.image_id} · ${t.kind} · `;
      const st = document.createElement("span");
      st.className = `st-${t.status}`; st.textContent = t.status.replace("_", " ");
      li.appendChild(st);
      if (state.task && t.task_id === state.task.task_id) li.classList.add("current");
      li.addEventListener("click", () => openTask(t.task_id));
      list.appendChild(li);
    }
    if (openFirst) {
      const next = data.tasks.find((t) => t.status === "in_progress" && t.kind !== "review")
        || data.tasks.find((t) => t.status === "pending" && t.kind !== "review");
      if (next) await openTask(next.task_id);
      else showEmpty(...noTaskMessage());
    }
  }

  // What an annotator without an open task reads: none assigned yet, or all done; and who assigns more.
  function noTaskMessage() {
    const total = state.progress ? state.progress.total : 0;
    const id = state.user ? state.user.annotator_id : "NAME";
    const text = total === 0
      ? "No tasks are assigned to you yet. An admin assigns them with:"
      : `All ${total} of your tasks are done. An admin assigns more with:`;
    return [text, `python -m sam_engine.annotation assign --annotator ${id} --images 20`];
  }

  function showEmpty(text, command) {
    state.task = null; state.image = null; state.result = null;
    canvas.hidden = true;
    $("task-panel").hidden = true;  // nothing to accept, undo or skip
    const box = $("empty");
    box.hidden = false; box.textContent = text;
    if (command) {
      const code = document.createElement("code");
      code.id = "assign-command"; code.textContent = command;
      box.appendChild(document.createElement("br")); box.appendChild(code);
    }
    $("task-id").textContent = ""; $("task-info").textContent = "";
    setStatus(total0() ? "No tasks assigned" : "All tasks done", "ok");
  }

  function total0() { return !state.progress || state.progress.total === 0; }

  async function openTask(taskId) {
    await openWith({ type: "open", task_id: taskId });
  }

  async function openWith(message) {
    setStatus("Opening…");
    canvas.dataset.imageLoaded = "false";
    let msg;
    try { msg = await send(Object.assign({ progressive: true }, message)); } catch (e) { setStatus(e.message, "error"); return; }
    state.task = msg.task;
    state.image = msg.image;
    state.result = null;
    canvas.width = msg.image.width; canvas.height = msg.image.height;
    overlay.width = msg.image.width; overlay.height = msg.image.height;
    canvas.hidden = false; $("empty").hidden = true; $("task-panel").hidden = false;
    fitCanvas();
    $("task-id").textContent = msg.task ? `#${msg.task.task_id}` : `(image ${msg.image.image_id})`;
    $("task-info").textContent = msg.task
      ? `image ${msg.image.image_id} · ${msg.image.width}×${msg.image.height} · stage ${msg.task.stage} · ${msg.task.kind}`
      : `image ${msg.image.image_id} · ${msg.image.width}×${msg.image.height}`;
    renderProgress(msg.progress);
    setExisting(msg.masks);
    const blob = await (await api(msg.image.url)).blob();
    state.bitmap = await createImageBitmap(blob);
    canvas.dataset.imageLoaded = "true";
    renderCandidates();
    redraw();
    setStatus(msg.task ? "Click on an object." : "Image open.", "ok");
    if (state.mode === "annotate") loadTasks(false).catch(() => {});
  }

  function setExisting(masks) {
    state.existing = masks.map((m) => Object.assign({}, m, { bits: m.segmentation ? rleDecode(m.segmentation) : null }));
    const list = $("mask-list");
    list.textContent = "";
    for (const m of state.existing) {
      const li = document.createElement("li");
      const label = document.createElement("span");
      label.textContent = `#${m.mask_id} · ${m.area} px · ${m.status}${m.version > 1 ? ` · v${m.version}` : ""}`;
      const hist = document.createElement("button");
      hist.type = "button"; hist.textContent = "History"; hist.dataset.maskId = String(m.mask_id);
      hist.addEventListener("click", () => showHistory(m.mask_id));
      li.append(label, hist);
      list.appendChild(li);
    }
  }

  async function refreshExisting() {
    if (!state.image) return;
    const data = await (await api(`/api/images/${state.image.image_id}/masks`)).json();
    setExisting(data.masks);
    redraw();
  }

  // ---------------------------------------------------------------------------------------------- click loop
  async function applyMasks(msg) {
    const { width: w, height: h } = state.image;
    const bits = msg.format === "png"
      ? await Promise.all(msg.masks.map((m) => pngDecode(m, w, h)))
      : msg.masks.map(rleDecode);
    const final = msg.final !== false;
    if (!final && msg.seq <= state.finalSeq) return; // its refined answer is already drawn
    if (final && msg.seq != null) state.finalSeq = Math.max(state.finalSeq, msg.seq);
    canvas.dataset.maskFinal = String(final);
    state.result = { bits, scores: msg.scores, areas: msg.areas, selected: msg.selected, points: msg.points, box: msg.box, clicks: msg.clicks };
    renderCandidates();
    redraw();
  }

  async function prompt(message) {
    if (!state.image) return;
    const t0 = performance.now();
    try {
      const msg = await send(message);
      await applyMasks(msg);
      setStatus(msg.masks.length ? `${msg.clicks} click(s) · ${Math.round(performance.now() - t0)} ms` : "No prompt.");
    } catch (e) { setStatus(e.message, "error"); }
  }

  function toImage(ev) {
    const rect = canvas.getBoundingClientRect();
    const x = (ev.clientX - rect.left) * (canvas.width / rect.width);
    const y = (ev.clientY - rect.top) * (canvas.height / rect.height);
    return [Math.min(Math.max(x, 0), canvas.width - 0.01), Math.min(Math.max(y, 0), canvas.height - 0.01)];
  }

  canvas.addEventListener("contextmenu", (ev) => ev.preventDefault());
  canvas.addEventListener("mousedown", (ev) => {
    if (!state.image || (ev.button !== 0 && ev.button !== 2)) return;
    const [x, y] = toImage(ev);
    state.drag = { button: ev.button, x0: x, y0: y, x1: x, y1: y, sx: ev.clientX, sy: ev.clientY, moved: false };
  });
  window.addEventListener("mousemove", (ev) => {
    const d = state.drag;
    if (!d) return;
    if (Math.hypot(ev.clientX - d.sx, ev.clientY - d.sy) > 5) d.moved = true;
    [d.x1, d.y1] = toImage(ev);
    if (d.moved) redraw();
  });
  window.addEventListener("mouseup", (ev) => {
    const d = state.drag;
    if (!d) return;
    state.drag = null;
    if (d.moved && d.button === 0) {
      const x0 = Math.min(d.x0, d.x1), x1 = Math.max(d.x0, d.x1), y0 = Math.min(d.y0, d.y1), y1 = Math.max(d.y0, d.y1);
      if (x1 - x0 >= 1 && y1 - y0 >= 1) prompt({ type: "box", x0, y0, x1: Math.min(x1, canvas.width), y1: Math.min(y1, canvas.height) });
      else redraw();
    } else if (!d.moved) {
      // pixel index of the clicked pixel (the model adds 0.5 to reach its centre, as SAM does)
      prompt({ type: "point", x: Math.floor(d.x0), y: Math.floor(d.y0), positive: d.button === 0 });
    } else {
      redraw();
    }
    ev.preventDefault();
  });
  window.addEventListener("resize", fitCanvas);

  async function choose(index) {
    const r = state.result;
    if (!r || !r.scores.length) return;
    r.selected = index;
    renderCandidates(); redraw();
    try { await send({ type: "choose", index }); } catch (e) { setStatus(e.message, "error"); }
  }

  function cycle() {
    const r = state.result;
    if (r && r.scores.length) choose((r.selected + 1) % r.scores.length);
  }

  async function undo() { await prompt({ type: "undo" }); }
  async function reset() { await prompt({ type: "reset" }); }

  async function accept() {
    if (!state.task) { setStatus("Open a task to accept masks.", "error"); return; }
    const r = state.result;
    if (!r || r.selected === null || !r.areas[r.selected]) { setStatus("Nothing to accept yet: click on an object.", "error"); return; }
    state.pendingAccept = { type: "accept", request_id: requestId() };
    await sendAccept();
  }

  async function sendAccept() {
    try {
      const msg = await send(state.pendingAccept);
      state.pendingAccept = null;
      state.result = null;
      renderCandidates();
      renderProgress(msg.progress);
      setStatus(msg.duplicate ? `Mask #${msg.mask_id} was already saved.` : `Saved mask #${msg.mask_id}.`, "ok");
      document.body.dataset.lastAccepted = String(msg.mask_id);
      await refreshExisting();
    } catch (e) {
      if (e.message !== "connection closed" && e.message !== "not connected") state.pendingAccept = null;
      setStatus(e.message, "error");
    }
  }

  async function retryPendingAccept() {
    if (state.pendingAccept) await sendAccept();  // same request id: the server answers with the saved mask
  }

  async function next() {
    if (!state.task) return;
    try {
      const msg = await send({ type: "done" });
      renderProgress(msg.progress);
      if (msg.next_task) await openTask(msg.next_task.task_id);
      else { await loadTasks(false); showEmpty(...noTaskMessage()); }
    } catch (e) { setStatus(e.message, "error"); }
  }

  async function skip() {
    if (!state.task) return;
    try {
      const msg = await send({ type: "skip", reason: $("comment-text").value || null });
      $("comment-text").value = "";
      renderProgress(msg.progress);
      if (msg.next_task) await openTask(msg.next_task.task_id);
      else { await loadTasks(false); showEmpty(...noTaskMessage()); }
    } catch (e) { setStatus(e.message, "error"); }
  }

  async function comment() {
    const text = $("comment-text").value.trim();
    if (!text) return;
    try {
      await send({ type: "comment", text });
      $("comment-text").value = "";
      setStatus("Comment saved.", "ok");
    } catch (e) { setStatus(e.message, "error"); }
  }

  // ---------------------------------------------------------------------------------------------- history
  async function showHistory(maskId) {
    try {
      const h = await (await api(`/api/masks/${maskId}/history`)).json();
      state.historyMask = maskId;
      $("history-panel").hidden = false;
      $("history-id").textContent = `#${maskId}`;
      const list = $("history-list");
      list.textContent = "";
      for (const e of h.events) {
        const li = document.createElement("li");
        const extra = e.kind === "comment" ? `: ${e.payload.text}` : e.payload && e.payload.comment ? `: ${e.payload.comment}` : "";
        li.textContent = `${e.created_at.replace("T", " ").slice(0, 19)} · ${e.actor || "system"} · ${e.kind}${extra}`;
        if (e.reverted) li.classList.add("reverted");
        list.appendChild(li);
      }
      $("btn-revert").disabled = !h.next_revert;
      $("btn-revert").textContent = h.next_revert ? `Revert last change (${h.next_revert.kind})` : "Nothing to revert";
    } catch (e) { setStatus(e.message, "error"); }
  }

  async function revert() {
    if (state.historyMask == null) return;
    try {
      await api(`/api/masks/${state.historyMask}/revert`, { method: "POST" });
      setStatus(`Reverted a change of mask #${state.historyMask}.`, "ok");
      await showHistory(state.historyMask);
      await refreshExisting();
      if (state.mode === "review") await loadReviewQueue();
    } catch (e) { setStatus(e.message, "error"); }
  }

  // ---------------------------------------------------------------------------------------------- review
  async function loadReviewQueue() {
    const data = await (await api("/api/review/queue")).json();
    state.reviewItems = data.items;
    const list = $("review-list");
    list.textContent = "";
    for (const item of data.items) {
      const li = document.createElement("li");
      const label = document.createElement("span");
      label.textContent = `#${item.mask_id} · image ${item.image_id} · ${item.source} · ${item.status}`;
      if (state.review && state.review.mask_id === item.mask_id) li.classList.add("current");
      const open = document.createElement("button");
      open.type = "button"; open.textContent = "Open"; open.dataset.maskId = String(item.mask_id);
      open.addEventListener("click", () => openReview(item));
      li.append(label, open);
      list.appendChild(li);
    }
    if (!data.items.length) $("review-current").textContent = "Nothing waits for review.";
  }

  async function openReview(item) {
    state.review = item;
    await openWith({ type: "open", image_id: item.image_id });
    let how = "Draw a new mask to fix it.";
    if (item.has_prompt) {
      // the model's masks at the prompt that made the proposal (no click counted): pick one, click to correct
      try {
        await applyMasks(await send({ type: "start_from", mask_id: item.mask_id }));
        how = "The model's masks at its prompt: pick one or click to correct it, then fix.";
      } catch (e) { setStatus(e.message, "error"); }
    }
    $("review-current").textContent = `Reviewing mask #${item.mask_id} (${item.area} px). ${how}`;
    await loadReviewQueue();
    redraw();
  }

  async function verdict(kind) {
    if (!state.review) { setStatus("Open a mask from the review queue first.", "error"); return; }
    try {
      const msg = await send({
        type: "review", mask_id: state.review.mask_id, verdict: kind,
        comment: $("review-comment").value || null, task_id: state.review.review_task_id || null,
      });
      $("review-comment").value = "";
      setStatus(`Review saved: mask #${msg.mask_id} ${msg.status}${msg.fixed_mask_id ? `, fixed as #${msg.fixed_mask_id}` : ""}.`, "ok");
      state.review = null; state.result = null;
      renderCandidates();
      await refreshExisting();
      await loadReviewQueue();
    } catch (e) { setStatus(e.message, "error"); }
  }

  function setMode(mode) {
    state.mode = mode;
    document.body.classList.toggle("mode-review", mode === "review");
    $("mode-annotate").classList.toggle("active", mode === "annotate");
    $("mode-review").classList.toggle("active", mode === "review");
    $("review-panel").hidden = mode !== "review";
    $("tasks-panel").hidden = mode === "review";
    if (mode === "review") loadReviewQueue().catch((e) => setStatus(e.message, "error"));
    else { state.review = null; loadTasks(!state.task).catch((e) => setStatus(e.message, "error")); }
  }

  // ---------------------------------------------------------------------------------------------- wiring
  $("btn-accept").addEventListener("click", accept);
  $("btn-undo").addEventListener("click", undo);
  $("btn-reset").addEventListener("click", reset);
  $("btn-next").addEventListener("click", next);
  $("btn-skip").addEventListener("click", skip);
  $("btn-comment").addEventListener("click", comment);
  $("btn-revert").addEventListener("click", revert);
  $("btn-history-close").addEventListener("click", () => { $("history-panel").hidden = true; state.historyMask = null; });
  $("btn-review-accept").addEventListener("click", () => verdict("accept"));
  $("btn-review-fix").addEventListener("click", () => verdict("fix"));
  $("btn-review-reject").addEventListener("click", () => verdict("reject"));
  $("mode-annotate").addEventListener("click", () => setMode("annotate"));
  $("mode-review").addEventListener("click", () => setMode("review"));

  document.addEventListener("keydown", (ev) => {
    const tag = (ev.target && ev.target.tagName) || "";
    if (tag === "INPUT" || tag === "TEXTAREA" || ev.altKey || ev.metaKey) return;
    const key = ev.key.toLowerCase();
    if (ev.ctrlKey && key !== "z") return;
    if (key === "a") { ev.preventDefault(); accept(); }
    else if (key === "z") { ev.preventDefault(); undo(); }
    else if (key === "n") { ev.preventDefault(); next(); }
    else if (key === "r") { ev.preventDefault(); reset(); }
    else if (key === "m" || key === "tab") { ev.preventDefault(); cycle(); }
    else if (key === "1" || key === "2" || key === "3") { ev.preventDefault(); choose(Number(key) - 1); }
  });

  function signOut(message) {
    sessionStorage.removeItem("sam-token");
    state.token = null;
    if (state.ws) { try { state.ws.close(); } catch (e) { /* closed */ } }
    $("app").hidden = true; $("login").hidden = false;
    setStatus(message || "", "error");
  }

  function start(token) {
    state.token = token;
    sessionStorage.setItem("sam-token", token);
    $("login").hidden = true; $("app").hidden = false;
    connect();
  }

  $("login-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const t = $("token-input").value.trim();
    if (t) start(t);
  });

  // A token may arrive in the URL fragment (never sent to the server); it is moved to sessionStorage.
  const m = /(?:^|&)token=([^&]+)/.exec(location.hash.slice(1));
  if (m) history.replaceState(null, "", location.pathname + location.search);
  const token = m ? decodeURIComponent(m[1]) : sessionStorage.getItem("sam-token");
  if (token) start(token); else { $("login").hidden = false; }
})();
