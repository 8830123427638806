// faceagent console: fills each page from the console's JSON routes. Everything that came from the broker
// is put in the page as text (textContent), never as markup. State-changing requests carry the CSRF token.
"use strict";

const csrf = document.querySelector('meta[name="csrf-token"]').content;
const $ = (selector, root = document) => root.querySelector(selector);

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "dataset") Object.assign(node.dataset, value);
    else if (key === "className") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (value !== undefined && value !== null && value !== false) node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

async function api(path, body) {
  const options = { credentials: "same-origin", headers: {} };
  if (body !== undefined) {
    options.method = "POST";
    options.headers = { "Content-Type": "application/json", "X-CSRF-Token": csrf };
    options.body = JSON.stringify(body);
  }
  const response = await fetch(path, options);
  const text = await response.text();
  let data;
  try { data = JSON.parse(text); } catch { data = { error: text.trim() || response.statusText }; }
  if (!response.ok) throw new Error(data.error || response.statusText);
  return data;
}

const show = (value) => (value === null || value === undefined || value === "" ? "–" : String(value));

function confirmDialog(text, extra = []) {
  const dialog = $("#confirm");
  $("#confirm-text").textContent = text;
  $("#confirm-extra").replaceChildren(...extra);
  dialog.returnValue = "";
  dialog.showModal();
  return new Promise((resolve) => dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true }));
}

function outcomeLines(target, devices, describe) {
  target.replaceChildren(...Object.entries(devices).map(([device, outcome]) =>
    el("div", { className: outcome.ok ? "ok" : "bad", dataset: { device } },
      `${device}: ${outcome.ok ? describe(outcome.data) : "refused: " + outcome.error}`)));
}

// ------------------------------------------------------------------------------------------- charts

// Four small charts per device, each with its own axis: figures of different units never share a scale.
const CHARTS = [
  ["frames/s", [["fps", "frames/s", "#0969da"]]],
  ["latency ms", [["latency_p50_ms", "p50", "#1a7f37"], ["latency_p95_ms", "p95", "#cf222e"]]],
  ["CPU °C", [["cpu_temp_c", "°C", "#bc4c00"]]],
  ["outbox depth · dropped frames (since start)", [["outbox_depth", "outbox", "#8250df"], ["dropped_frames", "dropped", "#6e7781"]]],
];

function latest(values) {
  for (let i = values.length - 1; i >= 0; i--) if (values[i] !== null) return values[i];
  return null;
}

// The last hour of points, at least a minute wide; with no point yet, the hour up to now (uPlot passes null, which
// would otherwise put the axis at 1970).
function timeRange(plot, low, high) {
  if (low === null || high === null) {
    const now = Date.now() / 1000;
    return [now - 3600, now];
  }
  return [Math.max(low, high - 3600), Math.max(high, low + 60)];
}

// Time axis labels on one line, local time: "14:05", or "14:05:30" when ticks are seconds apart. uPlot's own
// add a second line with the date at the first tick and wherever the minute changes, and on a chart this narrow
// those collide ("1:36am1:37am"); the charts span at most the last hour, and the page says the day.
function timeLabels(plot, splits, axis, space, increment) {
  const two = (n) => String(n).padStart(2, "0");
  return splits.map((t) => {
    const at = new Date(t * 1000);
    const minute = `${at.getHours()}:${two(at.getMinutes())}`;
    return increment < 60 ? `${minute}:${two(at.getSeconds())}` : minute;
  });
}

function drawChart(container, series) {
  container.dataset.points = String(series.t.length);
  container.dataset.since = series.t.length ? String(series.t[0]) : "";  // the oldest point: before this console?
  if (typeof uPlot === "undefined") return;
  if (!container.plots) {
    const width = Math.max(170, Math.floor((container.clientWidth || 400) / 2) - 10);
    container.plots = CHARTS.map(([title, lines]) => {
      const heading = el("div", { className: "mini-title" }, title);
      const box = el("div", { className: "mini" }, heading);
      container.append(box);
      const options = {
        width,
        height: 100,
        legend: { show: false },
        cursor: { drag: { x: false, y: false } },
        scales: { x: { time: true, range: timeRange } },
        series: [{}, ...lines.map(([, label, stroke]) => ({ label, stroke, width: 1.5, spanGaps: true }))],
        axes: [
          { size: 24, space: 60, font: "10px system-ui", ticks: { size: 3 }, values: timeLabels },
          { size: 42, font: "10px system-ui", ticks: { size: 3 } },
        ],
      };
      const plot = new uPlot(options, [[], ...lines.map(() => [])], box);
      return { title, lines, heading, plot };
    });
  }
  for (const { title, lines, heading, plot } of container.plots) {
    plot.setData([series.t, ...lines.map(([key]) => series[key])]);
    const now = lines.map(([key, label]) => `${label} ${show(latest(series[key]))}`).join(", ");
    heading.textContent = `${title}: ${now}`;
  }
}

// ------------------------------------------------------------------------------------------- fleet

function statusFacts(view) {
  const status = view.status || {};
  const gallery = status.gallery || {};
  const models = status.models || {};
  const camera = status.camera || {};
  const storage = status.storage || {};
  const telemetry = view.telemetry || {};
  const facts = [
    ["last seen", view.last_seen],
    ["version", status.version],
    ["models", [models.detector, models.embedder].filter(Boolean).join(" · ")],
    ["people", gallery.people === undefined ? null : `${gallery.people} (${show(gallery.templates)} templates)`],
    ["gallery digest", gallery.digest],
    ["camera", camera.state ? `${camera.state}${camera.fps !== undefined ? `, ${camera.fps} frames/s read` : ""}` : null],
    ["storage", storage.state ? `${storage.state}${storage.free_bytes ? `, ${(storage.free_bytes / 2 ** 30).toFixed(1)} GiB free` : ""}` : null],
    ["started", status.started_at],
    ["uptime", status.uptime_s === undefined ? null : `${Math.round(status.uptime_s / 60)} min`],
    ["frames/s now", telemetry.fps],
  ];
  return facts.flatMap(([name, value]) => [el("dt", {}, name), el("dd", { dataset: { fact: name } }, show(value))]);
}

function fleetCard(view) {
  const card = el("article", { className: "card", dataset: { device: view.device } },
    el("h2", {}, el("a", { href: `/device/${encodeURIComponent(view.device)}` }, view.device), " ",
      el("span", { className: "badge" })),
    el("dl", { className: "facts" }),
    el("ul", { className: "attention" }),
    el("div", { className: "chart", dataset: { points: "0" } }));
  return card;
}

function updateCard(card, view) {
  const badge = $(".badge", card);
  badge.textContent = view.online ? "online" : "offline";
  badge.className = `badge ${view.online ? "online" : "offline"}`;
  $(".facts", card).replaceChildren(...statusFacts(view));
  $(".attention", card).replaceChildren(...view.attention.map((note) => el("li", {}, note)));
  card.dataset.online = view.online ? "1" : "";
  card.dataset.attention = view.attention.length ? "1" : "";
}

async function fleetPage() {
  const root = $("#fleet");
  const cards = new Map();
  const visible = new Set();
  const observer = new IntersectionObserver((entries) => {
    for (const entry of entries) {
      if (entry.isIntersecting) visible.add(entry.target.dataset.device);
      else visible.delete(entry.target.dataset.device);
    }
    refreshCharts();
  });
  const filter = $("#fleet-filter");
  const search = $("#fleet-search");

  function applyFilter() {
    const word = search.value.trim().toLowerCase();
    for (const card of cards.values()) {
      const shown = (!word || card.dataset.device.toLowerCase().includes(word))
        && (filter.value !== "attention" || card.dataset.attention)
        && (filter.value !== "offline" || !card.dataset.online);
      card.hidden = !shown;
    }
  }
  filter.addEventListener("change", applyFilter);
  search.addEventListener("input", applyFilter);

  // emptyOnly: only the charts still without a point (a console just started gets each device's hour within
  // seconds of seeing it, from get_telemetry: asked for every second until it is there, not at the next 5 s)
  async function refreshCharts(emptyOnly = false) {
    const wanted = [...visible].filter((device) => cards.has(device) && !cards.get(device).hidden
      && (!emptyOnly || $(".chart", cards.get(device)).dataset.points === "0")).slice(0, 60);
    if (!wanted.length) return;
    const query = wanted.map((device) => "device=" + encodeURIComponent(device)).join("&");
    const data = await api("/api/series?" + query);
    for (const [device, series] of Object.entries(data.series)) {
      if (cards.has(device)) drawChart($(".chart", cards.get(device)), series);
    }
  }

  async function refresh() {
    const data = await api("/api/fleet");
    $("#broker").textContent = data.connected ? "broker connected" : "broker not connected";
    const seen = new Set();
    for (const view of data.devices) {
      seen.add(view.device);
      let card = cards.get(view.device);
      if (!card) {
        card = fleetCard(view);
        cards.set(view.device, card);
        root.append(card);
        observer.observe(card);
      }
      updateCard(card, view);
    }
    for (const [device, card] of cards) {
      if (!seen.has(device)) { observer.unobserve(card); card.remove(); cards.delete(device); visible.delete(device); }
    }
    const online = data.devices.filter((view) => view.online).length;
    $("#fleet-count").textContent = `${data.devices.length} devices, ${online} online`;
    applyFilter();
  }

  for (let second = 0; ; second++) {
    try {
      if (second % 5 === 0) { await refresh(); await refreshCharts(); } else await refreshCharts(true);
    } catch (error) { $("#broker").textContent = String(error.message); }
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
}

// ------------------------------------------------------------------------------------------- events

function eventsPage() {
  const form = $("#event-filter");
  const params = new URLSearchParams(location.search);
  for (const name of ["device", "person", "type"]) form.elements[name].value = params.get(name) || "";
  const rows = $("#events");
  let source = null;

  function open() {
    if (source) source.close();
    rows.replaceChildren();
    const query = new URLSearchParams();
    for (const name of ["device", "person", "type"]) if (form.elements[name].value) query.set(name, form.elements[name].value);
    history.replaceState(null, "", query.toString() ? "?" + query : location.pathname);
    source = new EventSource("/api/events?" + query);
    source.addEventListener("open", () => { $("#events-state").textContent = "live"; });
    source.addEventListener("error", () => { $("#events-state").textContent = "reconnecting…"; });
    source.addEventListener("fleet", (message) => {
      const event = JSON.parse(message.data);
      rows.prepend(el("tr", { dataset: { type: event.type, device: event.device, event: event.event_id || "" } },
        el("td", {}, show(event.at)), el("td", {}, event.device), el("td", {}, event.type),
        el("td", { className: "person" }, show(event.name || event.person_id)), el("td", {}, show(event.camera_id)),
        el("td", {}, show(event.frames)), el("td", {}, ...correctionButtons(event))));
      while (rows.children.length > 500) rows.lastChild.remove();
    });
  }
  form.addEventListener("submit", (submitted) => { submitted.preventDefault(); open(); });
  open();
}

// Corrections of one event's decision, sent to the device that made it.
function correctionButtons(event) {
  if (!event.event_id) return [];
  const button = (kind, text) => el("button", { className: kind, onclick: () => correct(event, kind) }, text);
  if (event.type === "face_recognized") return [button("wrong-person", "Wrong person…"), " ", button("is-person", "Someone else…")];
  if (event.type === "face_unknown") return [button("is-person", "Is…"), " ", button("enroll-unknown", "Enroll…")];
  return [];
}

async function correct(event, kind) {
  const result = $("#correct-result");
  const who = event.name || event.person_id;
  const body = { device: event.device, event_id: event.event_id };
  let question;
  let extra = [];
  if (kind === "wrong-person") {
    body.action = "wrong_person";
    question = `Was the face ${event.device} saw at ${event.at} not ${who}? The device keeps it as a face that is ` +
      `not ${who} (so it is not named ${who} again) and takes back any template it learned from it.`;
  } else if (kind === "is-person") {
    body.action = "is_person";
    const listing = await api("/api/people");
    const choices = listing.people.flatMap((person) => person.devices.filter((d) => d.device === event.device)
      .map((d) => el("option", { value: d.person_id }, `${person.name || d.person_id} (${d.person_id})`)));
    extra = [el("label", {}, "The face is ", el("select", { id: "correct-person" }, ...choices))];
    question = `Who was the face ${event.device} saw at ${event.at}? Its best views become that person's templates on ${event.device}.`;
  } else {
    body.action = "enroll_from_event";
    extra = [el("label", {}, "Name ", el("input", { id: "correct-name", maxlength: 200 })),
      el("label", {}, "Consent reference ", el("input", { id: "correct-consent", maxlength: 200 })),
      el("label", { className: "check" }, el("input", { type: "checkbox", id: "correct-consent-ok" }),
        " The person gave this consent, recorded under the reference above.")];
    question = `Enroll the unknown face ${event.device} saw at ${event.at} as a new person on ${event.device}? Consent is required.`;
  }
  if (!(await confirmDialog(question, extra))) return;
  if (kind === "is-person") body.person_id = $("#correct-person").value;
  if (kind === "enroll-unknown") {
    if (!$("#correct-consent-ok").checked) { result.textContent = "not enrolled: consent was not confirmed"; return; }
    body.name = $("#correct-name").value;
    body.consent = { reference: $("#correct-consent").value };
  }
  result.textContent = "asking the device…";
  try {
    const answer = await api("/api/events/correct", body);
    outcomeLines(result, answer.devices, (data) => (body.action === "wrong_person"
      ? `${data.person_id} will not be named for this face again; ${data.templates_deleted} templates taken back`
      : `${data.created ? "enrolled" : "added views to"} ${data.person.name || data.person.id} (${data.person.id}): ${data.templates_added} new templates`));
  } catch (error) { result.textContent = error.message; }
}

// ------------------------------------------------------------------------------------------- people

function consentText(consent) {
  if (!consent) return "none recorded";
  return [consent.reference, consent.given_by && `by ${consent.given_by}`, consent.given_at && `at ${consent.given_at}`,
    consent.purpose && `for ${consent.purpose}`].filter(Boolean).join(", ");
}

async function peoplePage() {
  let listing = { people: [], devices: [] };
  const rows = $("#people");
  const filter = $("#people-filter");
  const deviceChoice = $("#people-device");

  function render() {
    const device = deviceChoice.value;
    const people = listing.people
      .map((person) => (device ? { ...person, devices: person.devices.filter((d) => d.device === device) } : person))
      .filter((person) => person.devices.length)
      .filter((person) => filter.value !== "stale" || person.needs_reenrollment_on.length);
    rows.replaceChildren(...people.map((person) => {
      const name = person.name || person.devices[0].person_id;
      return el("tr", { dataset: { person: name } },
        el("td", { className: "name" }, name),
        el("td", {}, show(person.external_ref)),
        el("td", {}, ...person.devices.map((d) => el("div", {}, `${d.device} `, el("span", { className: "small" }, `${d.person_id}, ${d.templates} templates`)))),
        el("td", {}, ...person.devices.map((d) => el("div", {}, consentText(d.consent)))),
        el("td", {}, person.devices.filter((d) => d.needs_reenrollment).map((d) => d.device).join(", ") || "–"),
        el("td", {},
          el("button", { className: "rename", onclick: () => rename(person) }, "Rename…"), " ",
          el("button", { className: "erase danger", onclick: () => erase(person) }, "Erase…")));
    }));
    if (!people.length) rows.append(el("tr", {}, el("td", { colspan: 6, className: "muted" }, "nobody enrolled")));
  }

  async function load() {
    $("#people-state").textContent = "asking the devices…";
    listing = await api("/api/people");
    const problems = Object.entries(listing.problems).map(([device, problem]) => `${device}: ${problem}`);
    if (listing.offline.length) problems.push(`offline, not asked: ${listing.offline.join(", ")}`);
    $("#people-problems").hidden = !problems.length;
    $("#people-problems").textContent = problems.join("; ");
    const chosen = deviceChoice.value;
    deviceChoice.replaceChildren(el("option", { value: "" }, "fleet-wide (merged)"),
      ...listing.devices.map((device) => el("option", { value: device }, device)));
    deviceChoice.value = listing.devices.includes(chosen) ? chosen : "";
    $("#enroll-devices").replaceChildren(el("legend", {}, "On devices"),
      ...listing.devices.map((device) => el("label", { className: "check" },
        el("input", { type: "checkbox", name: "device", value: device, checked: true }), device)));
    const camera = $("#camera-device").value;
    $("#camera-device").replaceChildren(...listing.devices.map((device) => el("option", { value: device }, device)));
    if (listing.devices.includes(camera)) $("#camera-device").value = camera;
    $("#people-state").textContent = `${listing.people.length} people on ${listing.devices.length} online devices`;
    render();
  }

  async function rename(person) {
    const input = el("input", { id: "rename-name", value: person.name || "", maxlength: 200 });
    const where = person.devices.map((d) => d.device).join(", ");
    if (!(await confirmDialog(`Rename ${person.name || person.devices[0].person_id} on ${where} to:`, [input]))) return;
    const targets = person.devices.map((d) => ({ device: d.device, person_id: d.person_id }));
    try {
      const result = await api("/api/people/rename", { targets, name: input.value });
      outcomeLines($("#enroll-result"), result.devices, () => `renamed to ${input.value}`);
    } catch (error) { $("#enroll-result").textContent = error.message; }
    await load();
  }

  async function erase(person) {
    const name = person.name || person.devices[0].person_id;
    const boxes = person.devices.map((d) => el("label", { className: "check" },
      el("input", { type: "checkbox", className: "erase-target", checked: true, dataset: { device: d.device, person: d.person_id } }),
      `${d.device} (${d.person_id}, ${d.templates} templates)`));
    const text = `Erase ${name} from ${person.devices.length} device(s)? On each device ticked below, the person, ` +
      "their templates, their events and any kept face chips are deleted, and a person_erased event is published. " +
      "This cannot be undone.";
    if (!(await confirmDialog(text, boxes))) return;
    const targets = boxes.map((box) => $("input", box)).filter((box) => box.checked)
      .map((box) => ({ device: box.dataset.device, person_id: box.dataset.person }));
    if (!targets.length) return;
    try {
      const result = await api("/api/people/erase", { targets });
      outcomeLines($("#enroll-result"), result.devices, (data) => `erased ${name}: ${data.deleted.templates} templates, ${data.deleted.events} events`);
    } catch (error) { $("#enroll-result").textContent = error.message; }
    await load();
  }

  filter.addEventListener("change", render);
  deviceChoice.addEventListener("change", render);

  let capture = null;  // {device, capture_id} while the device's camera collects views
  function captureText(data) {
    if (data.status === "IN_PROGRESS") return `${data.step}: ${data.views} of ${data.views_needed} views, ${data.seconds_left} s left`;
    if (data.status === "SUCCEEDED") {
      return `SUCCEEDED: ${data.created ? "enrolled" : "added views to"} ${data.person.name || data.person.id} ` +
        `(${data.person.id}) from the camera: ${data.templates_added} new templates`;
    }
    return `${data.status}: ${show(data.reason)}`;
  }
  async function followCapture() {
    const result = $("#camera-result");
    while (capture) {
      await new Promise((resolve) => setTimeout(resolve, 1000));
      const query = new URLSearchParams(capture).toString();
      const answer = (await api("/api/people/capture?" + query)).devices[capture.device];
      if (!answer.ok) { result.textContent = answer.error; break; }
      result.dataset.status = answer.data.status;
      result.textContent = `${capture.device}: ${captureText(answer.data)}`;
      if (answer.data.status !== "IN_PROGRESS") break;
    }
    capture = null;
    $("#camera-submit").disabled = false;
    $("#camera-cancel").disabled = true;
    await load();
  }
  $("#camera-enroll").addEventListener("submit", async (submitted) => {
    submitted.preventDefault();
    const result = $("#camera-result");
    const device = $("#camera-device").value;
    const number = (input) => (input.value === "" ? undefined : Number(input.value));
    const body = { device, name: $("#camera-name").value, external_ref: $("#camera-ref").value,
      consent: { reference: $("#camera-consent").value },
      seconds: number($("#camera-seconds")), views: number($("#camera-views")) };
    result.textContent = "asking the device…";
    delete result.dataset.status;
    try {
      const answer = (await api("/api/people/enroll-camera", body)).devices[device];
      if (!answer.ok) { result.dataset.status = "REFUSED"; result.textContent = `${device}: refused: ${answer.error}`; return; }
      result.dataset.status = answer.data.status;
      result.textContent = `${device}: ${captureText(answer.data)}`;
      if (answer.data.status !== "IN_PROGRESS") return;
      capture = { device, capture_id: answer.data.capture_id };
      $("#camera-submit").disabled = true;
      $("#camera-cancel").disabled = false;
      followCapture().catch((error) => { result.textContent = error.message; });
    } catch (error) { result.dataset.status = "REFUSED"; result.textContent = error.message; }
  });
  $("#camera-cancel").addEventListener("click", async () => {
    if (capture) await api("/api/people/capture", capture).catch(() => {});
  });
  $("#enroll").addEventListener("submit", async (submitted) => {
    submitted.preventDefault();
    const form = submitted.target;
    const result = $("#enroll-result");
    const files = [...$("#enroll-photos").files];
    const images = await Promise.all(files.map((file) => new Promise((resolve, reject) => {
      const reader = new FileReader();
      reader.onload = () => resolve({ data: String(reader.result).split(",", 2)[1], label: file.name });
      reader.onerror = () => reject(reader.error);
      reader.readAsDataURL(file);
    })));
    const devices = [...form.querySelectorAll('input[name="device"]:checked')].map((box) => box.value);
    const body = {
      devices, images, name: $("#enroll-name").value, external_ref: $("#enroll-ref").value,
      consent: { reference: $("#enroll-consent").value, given_by: $("#enroll-consent-by").value, purpose: $("#enroll-purpose").value },
    };
    result.textContent = "sending…";
    $("#enroll-submit").disabled = true;
    try {
      const answer = await api("/api/people/enroll", body);
      outcomeLines(result, answer.devices, (data) => {
        const refused = data.photos.filter((p) => !p.accepted).map((p) => `${p.label}: ${p.reason}`);
        return `${data.created ? "enrolled" : "added photos to"} ${data.person.name || data.person.id} (${data.person.id}): ` +
          `${data.templates_added} new templates${refused.length ? "; refused " + refused.join("; ") : ""}`;
      });
      form.reset();
    } catch (error) {
      result.replaceChildren(el("div", { className: "bad" }, error.message));
    } finally {
      $("#enroll-submit").disabled = false;
    }
    await load();
  });
  try { await load(); } catch (error) { $("#people-state").textContent = error.message; }
}

// ------------------------------------------------------------------------------------------- device

function parseSetting(text, original) {
  if (typeof original === "boolean") return text;
  try { return JSON.parse(text); } catch { return text; }
}

async function devicePage() {
  const device = document.body.dataset.device;
  const base = `/api/device/${encodeURIComponent(device)}`;
  let original = {};

  async function refresh() {
    const view = await api(base);
    const badge = $("#device-state");
    badge.textContent = view.online ? "online" : "offline";
    badge.className = `badge ${view.online ? "online" : "offline"}`;
    $("#device-status").replaceChildren(...statusFacts(view));
    $("#device-attention").replaceChildren(...view.attention.map((note) => el("li", {}, note)));
    drawChart($("#device-chart"), view.series);
    if (view.model_update) showModelUpdate(view.model_update);
    showRollout(view.rollout);
    $("#replies").replaceChildren(...view.replies.map((r) => el("tr", {},
      el("td", {}, r.at), el("td", {}, r.command),
      el("td", { className: r.status === "ok" ? "ok" : "bad" }, r.status === "ok" ? "ok" : `${show(r.code)}: ${show(r.message)}`),
      el("td", { className: "small" }, show(r.request_id)))));
    $("#actions").replaceChildren(...view.actions.map((a) => el("tr", {},
      el("td", {}, a.at), el("td", {}, a.command), el("td", {}, a.what), el("td", {}, a.by),
      el("td", {}, a.ok ? "ok" : show(a.error)))));
  }

  function showModelUpdate(job) {
    const parts = [`job ${show(job.job_id)}: ${show(job.status)}`];
    if (job.model_id) parts.push(`${job.model_id} ${show(job.version)}`);
    if (job.bytes_total) parts.push(`${show(job.bytes_received)} of ${job.bytes_total} bytes received`);
    if (job.step) parts.push(`at ${job.step}`);
    if (job.reason) parts.push(job.reason);
    $("#model-update").textContent = parts.join(" · ");
  }

  let rolloutRunning = false;
  function rolloutPhase(job, progress) {
    if (progress.phase === "chunk" && progress.status === "IN_PROGRESS" && progress.chunks_done === job.chunks && !job.finished)
      return `all ${job.chunks} chunks received; the device is checking the model`;
    if (progress.phase === "chunk") return `chunk ${progress.chunks_done} of ${job.chunks}`;
    return show(progress.phase);
  }

  function showRollout(job) {
    rolloutRunning = Boolean(job && !job.finished);
    if (!job) return;
    $("#model-job").hidden = false;
    $("#model-job-title").textContent = `job ${job.job_id}: ${job.described} from ${job.release}, started ${job.started_at}` +
      (job.finished ? ", ended" : ", running") + (job.problem ? `: ${job.problem}` : "");
    const mine = job.progress[device] || {};
    $("#model-progress").max = mine.bytes_total || 1;
    $("#model-progress").value = mine.bytes_received || 0;
    $("#model-jobs").replaceChildren(...Object.entries(job.progress).map(([name, p]) => el("tr", { dataset: { device: name, status: p.status } },
      el("td", {}, name), el("td", { className: "phase" }, rolloutPhase(job, p)),
      el("td", { className: p.status === "SUCCEEDED" ? "ok" : ["FAILED", "DROPPED", "REFUSED", "SILENT"].includes(p.status) ? "bad" : "" }, show(p.status)),
      el("td", {}, p.bytes_total ? `${show(p.bytes_received)} of ${p.bytes_total} bytes` : "–"),
      el("td", {}, show(p.message || (p.step ? `at ${p.step}` : ""))))));
    $("#model-steps").replaceChildren(...(mine.acknowledged || []).map((bytes, index) =>
      el("li", { dataset: { bytes } }, `chunk ${index + 1}: ${bytes} of ${mine.bytes_total} bytes received`)));
  }

  async function loadReleases() {
    const listing = await api("/api/releases");
    const usable = listing.releases.filter((r) => !r.problem);
    $("#model-release").replaceChildren(...usable.map((r) =>
      el("option", { value: r.name }, `${r.name}: ${r.model_id} ${r.version} (${r.role}, ${r.size} bytes)`)));
    $("#model-install-submit").disabled = !usable.length;
    const problems = listing.releases.filter((r) => r.problem).map((r) => r.problem);
    if (!listing.folder) $("#model-install-result").textContent = "start the console with --releases FOLDER to install from here";
    else if (!usable.length) $("#model-install-result").textContent = `no usable release bundle in ${listing.folder}`;
    if (problems.length) $("#model-install-result").textContent += " " + problems.join("; ");
  }

  $("#model-install").addEventListener("submit", async (submitted) => {
    submitted.preventDefault();
    const release = $("#model-release").value;
    const everywhere = $("#model-fleet").checked;
    const devices = everywhere ? (await api("/api/fleet")).devices.filter((v) => v.online).map((v) => v.device) : [device];
    const text = `Install ${release} on ${everywhere ? `every online device (${devices.join(", ")})` : device}? ` +
      "Each device checks the model on its test faces before it switches to it; people enrolled under another " +
      "embedder may need re-enrollment.";
    if (!(await confirmDialog(text))) return;
    try {
      const answer = await api("/api/model-updates", { release, devices });
      $("#model-install-result").textContent = `started job ${answer.job.job_id}`;
      showRollout(answer.job);
      await refresh();
    } catch (error) { $("#model-install-result").textContent = error.message; }
  });

  async function loadSettings() {
    const form = $("#settings");
    const answer = (await api(`${base}/config`)).devices[device];
    if (!answer.ok) { form.replaceChildren(el("p", { className: "error" }, answer.error)); return; }
    const { settings, settable, remote } = answer.data;
    const inForce = answer.data.matching || {};  // figures left unset: the embedder's stated or built-in ones
    original = {};
    const rows = settable.map((key) => {
      const [section, name] = key.split(".");
      const value = (settings[section] || {})[name];
      original[key] = value;
      const figure = value === null ? inForce[key] : undefined;
      const input = typeof value === "boolean"
        ? el("input", { type: "checkbox", name: key, checked: value })
        : el("input", { type: "text", name: key, value: value === null ? "" : String(value),
          placeholder: figure ? `${figure.value} (${figure.source})` : "" });
      return el("div", { className: "row" },
        el("span", { className: "key" }, key, remote.includes(key) ? el("span", { className: "small" }, " (set remotely)") : null),
        input, el("span", { className: "field-error", dataset: { key } }));
    });
    form.replaceChildren(el("div", { className: "field-error", id: "settings-error", dataset: { key: "" } }), ...rows,
      el("div", {}, el("button", { type: "submit", id: "settings-save" }, "Save"), " ", el("span", { id: "settings-result", className: "result" })));
  }

  $("#settings").addEventListener("submit", async (submitted) => {
    submitted.preventDefault();
    const form = submitted.target;
    for (const span of form.querySelectorAll(".field-error")) span.textContent = "";
    $("#settings-result").textContent = "";
    const values = {};
    for (const input of form.querySelectorAll("input[name]")) {
      const key = input.name;
      const value = input.type === "checkbox" ? input.checked : parseSetting(input.value, original[key]);
      if (JSON.stringify(value) !== JSON.stringify(original[key])) values[key] = value;
    }
    if (!Object.keys(values).length) { $("#settings-result").textContent = "nothing changed"; return; }
    try {
      const answer = (await api(`${base}/config`, { values })).devices[device];
      if (answer.ok) {
        Object.assign(original, answer.data.changed);
        $("#settings-result").textContent = "saved: " + Object.keys(answer.data.changed).join(", ");
        return;
      }
      const key = Object.keys(values).find((k) => answer.error.includes(k + ":") || answer.error.includes(k + " "));
      const target = key ? form.querySelector(`.field-error[data-key="${CSS.escape(key)}"]`) : $("#settings-error");
      target.textContent = answer.error;
    } catch (error) {
      $("#settings-error").textContent = error.message;
    }
  });

  $("#restart").addEventListener("click", async () => {
    const text = `Restart ${device}? It stops its camera loop, finishes what it is doing and starts again; ` +
      "a device takes at most one restart a minute.";
    if (!(await confirmDialog(text))) return;
    try {
      outcomeLines($("#restart-result"), (await api(`${base}/restart`, {})).devices, () => "restarting");
    } catch (error) { $("#restart-result").textContent = error.message; }
  });

  $("#model-update-refresh").addEventListener("click", async () => {
    try {
      const answer = (await api(`${base}/model-update`)).devices[device];
      if (answer.ok) showModelUpdate(answer.data);
      else $("#model-update").textContent = answer.error;
    } catch (error) { $("#model-update").textContent = error.message; }
  });

  let olderThan = null;
  async function loadAudit(before) {
    $("#audit-state").textContent = "asking the device…";
    const answer = (await api(`${base}/audit${before ? "?before=" + before : ""}`)).devices[device];
    if (!answer.ok) { $("#audit-state").textContent = answer.error; return; }
    const rows = answer.data.records.map((r) => el("tr", { dataset: { seq: r.seq } },
      el("td", {}, r.seq), el("td", {}, r.at), el("td", {}, r.actor), el("td", {}, r.action),
      el("td", { className: "small" }, show(r.target)),
      el("td", { className: "small" }, Object.entries(r.details).map(([k, v]) => `${k}=${JSON.stringify(v)}`).join(" "))));
    if (before) $("#audit").append(...rows); else $("#audit").replaceChildren(...rows);
    olderThan = answer.data.next_before;
    $("#audit-older").disabled = !olderThan;
    $("#audit-state").textContent = `${$("#audit").children.length} records${olderThan ? "" : ", the oldest kept"}`;
  }
  const auditFailed = (error) => { $("#audit-state").textContent = error.message; };
  $("#audit-newest").addEventListener("click", () => loadAudit(null).catch(auditFailed));
  $("#audit-older").addEventListener("click", () => loadAudit(olderThan).catch(auditFailed));
  loadAudit(null).catch(auditFailed);
  loadReleases().catch((error) => { $("#model-install-result").textContent = error.message; });

  loadSettings().catch((error) => { $("#settings").replaceChildren(el("p", { className: "error" }, error.message)); });
  for (;;) {
    try { await refresh(); } catch (error) { $("#device-state").textContent = error.message; }
    const empty = $("#device-chart").dataset.points === "0";  // the device's hour is on its way (get_telemetry)
    await new Promise((resolve) => setTimeout(resolve, rolloutRunning ? 500 : empty ? 1000 : 5000));  // progress, soon
  }
}

const pages = { fleet: fleetPage, events: eventsPage, people: peoplePage, device: devicePage };
(pages[document.body.dataset.page] || (() => {}))();
