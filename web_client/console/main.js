// The web console: operators (signed in with the admin key: a cookie session)
// set up communities, schools and classroom endpoints, schedule lessons, hand out
// links with QR codes, watch running lessons and download attendance; a teacher
// (with the teacher link in the fragment) sees "my lesson". Everything goes
// through the HTTP API; the server checks every request.

import { Api, ApiError } from "./api.js";
import { MAX_POINTS, drawChart } from "./chart.js";
import { $, button, copyText, el, saveBlob, slug, status } from "./dom.js";
import { roleLabel } from "../roles.js";
import { readClaims, tokenFromLocation } from "../token.js";

const LIVE_INTERVAL_MS = 2000;
// Links a phone may open: a QR code beside them.
const QR_ROLES = new Set(["classroom", "student"]);

const ui = {
  api: null,
  teacher: null, // the teacher's claims in teacher mode
  communityId: null,
  schools: [], // the selected community's schools
  endpoints: new Map(), // school id -> endpoints
  lessons: [],
  lesson: null, // the lesson whose links are shown
  links: [],
  liveTimer: null,
  history: new Map(), // lesson id -> chart points
};

function showView(name) {
  status(null); // a note about the previous view does not belong to the next
  for (const id of ["sign-in", "setup", "links", "live"]) $(id).hidden = id !== name;
  for (const tab of document.querySelectorAll("#console-nav [data-view]")) {
    tab.setAttribute("aria-pressed", String(tab.dataset.view === name));
  }
  if (name === "live") startLive();
  else stopLive();
}

function failed(error) {
  console.error(error);
  status(error instanceof ApiError ? error.message : String(error?.message ?? error), "error");
}

/** A form's submit runs `action`; errors show in the status line. */
function onSubmit(id, action) {
  $(id).addEventListener("submit", async (event) => {
    event.preventDefault();
    status(null);
    const submit = $(id).querySelector("button[type=submit]");
    if (submit) submit.disabled = true;
    try {
      await action();
    } catch (error) {
      failed(error);
    } finally {
      if (submit) submit.disabled = false;
    }
  });
}

/** POST with an id made from the name; if that id is taken, let the server choose one. */
async function create(path, body, name) {
  const id = slug(name);
  try {
    return await ui.api.post(path, id ? { id, ...body } : body);
  } catch (error) {
    if (error instanceof ApiError && error.status === 409 && id) return ui.api.post(path, body);
    throw error;
  }
}

const schoolName = (id) => ui.schools.find((s) => s.id === id)?.name ?? id;

// -- signing in and out ------------------------------------------------------------

async function operatorSession() {
  const response = await fetch("/console/session", { cache: "no-store" });
  return response.ok ? response.json() : null;
}

function showSignIn() {
  $("console-nav").hidden = true;
  showView("sign-in");
  $("sign-in-key").focus();
}

onSubmit("sign-in-form", async () => {
  const response = await fetch("/console/session", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ key: $("sign-in-key").value.trim() }),
  });
  $("sign-in-key").value = "";
  if (!response.ok) {
    $("sign-in-error").textContent =
      response.status === 401 ? "That is not the admin key." : `Signing in failed (${response.status}).`;
    $("sign-in-error").hidden = false;
    return;
  }
  $("sign-in-error").hidden = true;
  await startOperator(await response.json());
});

$("sign-out").addEventListener("click", async () => {
  try {
    await ui.api.json("DELETE", "/console/session");
  } catch (error) {
    failed(error);
    return;
  }
  ui.api = null;
  status("You are signed out.");
  showSignIn();
});

// -- setup: communities, schools, endpoints ------------------------------------------

async function loadCommunities(select = null) {
  const communities = await ui.api.get("/api/communities");
  const picker = $("community-select");
  picker.replaceChildren(
    ...communities.map((c) => el("option", { value: c.id, text: c.name })),
  );
  if (!communities.length) picker.append(el("option", { value: "", text: "No community yet: create one" }));
  ui.communityId = select ?? (communities.some((c) => c.id === ui.communityId) ? ui.communityId : communities[0]?.id ?? null);
  picker.value = ui.communityId ?? "";
  await loadSchools();
}

async function loadSchools() {
  ui.schools = ui.communityId ? await ui.api.get(`/api/communities/${ui.communityId}/schools`) : [];
  ui.endpoints = new Map(
    await Promise.all(ui.schools.map(async (s) => [s.id, await ui.api.get(`/api/schools/${s.id}/endpoints`)])),
  );
  renderSchools();
  await loadLessons();
}

function renderSchools() {
  $("school-list").replaceChildren(
    ...ui.schools.map((school) => {
      const rooms = ui.endpoints.get(school.id) ?? [];
      return el(
        "li",
        { dataset: { school: school.id } },
        el("span", { className: "name", text: school.name }),
        el("span", { className: "meta", text: ` (${school.id})` }),
        el(
          "ul",
          {},
          ...(rooms.length
            ? rooms.map((r) => el("li", { text: `${r.name}: ${r.headcount} students` }))
            : [el("li", { className: "note", text: "no classroom endpoint yet" })]),
        ),
      );
    }),
  );
  const options = () => ui.schools.map((s) => el("option", { value: s.id, text: s.name }));
  const keep = $("endpoint-school").value;
  $("endpoint-school").replaceChildren(...options());
  if (ui.schools.some((s) => s.id === keep)) $("endpoint-school").value = keep;
  const host = $("lesson-host").value;
  $("lesson-host").replaceChildren(...options());
  if (ui.schools.some((s) => s.id === host)) $("lesson-host").value = host;
  renderInvites();
}

/** Every school but the teacher's, invited unless unticked: the usual lesson. */
function renderInvites() {
  const host = $("lesson-host").value;
  const unticked = new Set(
    [...document.querySelectorAll("#lesson-invites input:not(:checked)")].map((i) => i.value),
  );
  $("lesson-invites").replaceChildren(
    ...ui.schools
      .filter((s) => s.id !== host)
      .map((s) =>
        el(
          "label",
          {},
          el("input", { type: "checkbox", value: s.id, checked: !unticked.has(s.id) }),
          ` ${s.name} (${(ui.endpoints.get(s.id) ?? []).length} classrooms)`,
        ),
      ),
  );
}

$("lesson-host").addEventListener("change", renderInvites);
$("community-select").addEventListener("change", async () => {
  ui.communityId = $("community-select").value || null;
  try {
    await loadSchools();
  } catch (error) {
    failed(error);
  }
});

onSubmit("community-form", async () => {
  const name = $("community-name").value.trim();
  const community = await create("/api/communities", { name }, name);
  $("community-name").value = "";
  status(`Community “${community.name}” created.`);
  await loadCommunities(community.id);
  $("school-name").focus();
});

onSubmit("school-form", async () => {
  if (!ui.communityId) throw new Error("Create a community first.");
  const name = $("school-name").value.trim();
  const school = await create(`/api/communities/${ui.communityId}/schools`, { name }, name);
  $("school-name").value = "";
  status(`School “${school.name}” added.`);
  await loadSchools();
  $("school-name").focus();
});

onSubmit("endpoint-form", async () => {
  const schoolId = $("endpoint-school").value;
  if (!schoolId) throw new Error("Add a school first.");
  const name = $("endpoint-name").value.trim();
  const body = { name, headcount: Number($("endpoint-headcount").value) };
  const endpoint = await create(`/api/schools/${schoolId}/endpoints`, body, `${schoolId}-${name}`);
  $("endpoint-name").value = "";
  status(`Classroom “${endpoint.name}” added to ${schoolName(schoolId)}.`);
  await loadSchools();
  $("endpoint-name").focus();
});

// -- lessons ---------------------------------------------------------------------------

/** The next full hour, as a datetime-local value in the browser's time zone. */
function nextHour() {
  const d = new Date(Date.now() + 3600_000);
  d.setMinutes(0, 0, 0);
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:00`;
}

onSubmit("lesson-form", async () => {
  if (!ui.communityId) throw new Error("Create a community and its schools first.");
  const starts = new Date($("lesson-starts").value);
  const minutes = Number($("lesson-minutes").value);
  const title = $("lesson-title").value.trim();
  const lesson = await create(
    "/api/lessons",
    {
      community_id: ui.communityId,
      title,
      host_teacher: $("lesson-teacher").value.trim(),
      host_school: $("lesson-host").value,
      starts_at: starts.toISOString(),
      ends_at: new Date(starts.getTime() + minutes * 60_000).toISOString(),
      invited_schools: [...document.querySelectorAll("#lesson-invites input:checked")].map((i) => i.value),
      settings: {
        lobby: $("lesson-lobby").checked,
        wait_for_teacher: $("lesson-wait").checked,
        students_publish: $("lesson-students-publish").checked,
        chat_policy: $("lesson-chat").value,
      },
    },
    title,
  );
  $("lesson-title").value = "";
  await loadLessons();
  await showLinks(lesson);
});

async function loadLessons() {
  ui.lessons = ui.communityId ? await ui.api.get(`/api/lessons?community=${encodeURIComponent(ui.communityId)}`) : [];
  const rows = ui.lessons.map((lesson) => {
    const schools = [lesson.host_school, ...lesson.invited_schools].map(schoolName).join(", ");
    const actions = el(
      "td",
      { className: "actions" },
      button("Links", () => showLinks(lesson).catch(failed), { name: `Links: ${lesson.title}` }),
      button("Attendance", () => downloadAttendance(lesson.id, "csv").catch(failed), {
        name: `Attendance (CSV): ${lesson.title}`,
      }),
    );
    if (lesson.state !== "ended") {
      actions.append(
        button("End", () => endLesson(lesson.id, lesson.title), { name: `End lesson: ${lesson.title}`, className: "danger" }),
      );
    }
    return el(
      "tr",
      { dataset: { lesson: lesson.id } },
      el("td", { text: lesson.title }),
      el("td", { text: new Date(lesson.starts_at).toLocaleString() }),
      el("td", { text: schools }),
      el("td", { text: lesson.state }),
      actions,
    );
  });
  $("lesson-table").tBodies[0].replaceChildren(...rows);
  $("lessons-empty").hidden = rows.length > 0;
}

async function endLesson(lessonId, title) {
  if (!confirm(`End “${title}” for everyone? Nobody can join it afterwards.`)) return;
  try {
    await ui.api.post(`/api/lessons/${lessonId}/end`);
    status(`“${title}” has ended.`);
    if (!ui.teacher) await loadLessons();
    await refreshLive();
  } catch (error) {
    failed(error);
  }
}

// -- links -----------------------------------------------------------------------------

function linkItem(link) {
  const who = `${roleLabel(link.role)}: ${link.name}`;
  const where = [link.school ? schoolName(link.school) : null, link.headcount != null ? `${link.headcount} students` : null]
    .filter(Boolean)
    .join(", ");
  const field = el("input", { type: "text", readOnly: true, value: link.link, className: "link-text" });
  field.setAttribute("aria-label", `Link: ${link.name}`);
  field.addEventListener("focus", () => field.select());
  const copy = button(
    "Copy",
    async () => {
      copy.textContent = (await copyText(link.link)) ? "Copied" : "Select and copy";
    },
    { name: `Copy link: ${link.name}` },
  );
  const open = el("a", { href: link.link, target: "_blank", rel: "noopener noreferrer", text: "Open" });
  open.setAttribute("aria-label", `Open link: ${link.name}`);
  const qr = link.qr_svg && QR_ROLES.has(link.role) ? el("img", { src: link.qr_svg, alt: `QR code of the link for ${link.name}`, className: "qr" }) : null;
  return el(
    "li",
    { dataset: { role: link.role, school: link.school, endpoint: link.endpoint ?? "" } },
    el("div", { className: "who" }, el("strong", { text: who }), where ? el("span", { className: "meta", text: ` (${where})` }) : null),
    el("div", { className: "row" }, field, copy, open),
    el("p", { className: "meta", text: `Valid until ${new Date(link.expires_at * 1000).toLocaleString()}` }),
    qr,
  );
}

function renderLinks() {
  $("link-list").replaceChildren(...ui.links.map(linkItem));
}

async function showLinks(lesson) {
  ui.lesson = lesson;
  ui.links = await ui.api.get(`/api/lessons/${lesson.id}/links?qr=svg`);
  if (ui.teacher) ui.links = ui.links.filter((l) => l.role !== "teacher");
  $("links-title").textContent = `${lesson.title}: links`;
  const when = new Date(lesson.starts_at).toLocaleString();
  $("links-what").textContent =
    `${when}, ${lesson.host_teacher} (${schoolName(lesson.host_school)}). ` +
    "Give each school its own links; each link is one seat. Classroom links go to the room PC on the big screen.";
  $("students-school").replaceChildren(
    ...[lesson.host_school, ...lesson.invited_schools].map((id) => el("option", { value: id, text: schoolName(id) })),
  );
  renderLinks();
  await showAttendance(lesson.id);
  showView("links");
}

onSubmit("students-form", async () => {
  const names = $("students-names").value.split(/[,\n]/).map((n) => n.trim()).filter(Boolean);
  const made = await ui.api.post(`/api/lessons/${ui.lesson.id}/links?qr=svg`, {
    role: "student",
    names,
    school: $("students-school").value,
  });
  ui.links.push(...made);
  $("students-names").value = "";
  renderLinks();
  status(`${made.length} student links made.`);
});

$("links-copy-all").addEventListener("click", async () => {
  const text = ui.links
    .map((l) => `${roleLabel(l.role)}: ${l.name}${l.school ? ` (${schoolName(l.school)})` : ""}\n${l.link}`)
    .join("\n\n");
  const copied = await copyText(text);
  $("links-copy-all").textContent = copied ? "All links copied" : "Copy all links";
  status(copied ? `${ui.links.length} links copied: paste them into your message to the schools.` : "Copying was refused by the browser; select the links instead.");
});
$("links-print").addEventListener("click", () => window.print());
$("links-back").addEventListener("click", () => (ui.teacher ? null : showView("setup")));

// -- attendance ----------------------------------------------------------------------

async function downloadAttendance(lessonId, format) {
  const response = await ui.api.raw("GET", `/api/lessons/${lessonId}/attendance?format=${format}`);
  saveBlob(await response.blob(), `${lessonId}-attendance.${format}`);
}

async function showAttendance(lessonId) {
  const report = await ui.api.get(`/api/lessons/${lessonId}/attendance`);
  const rows = report.participants.map((p) =>
    el(
      "tr",
      {},
      el("td", { text: p.name }),
      el("td", { text: roleLabel(p.role) }),
      el("td", { text: schoolName(p.school) }),
      el("td", { text: String(Math.round(p.seconds_present / 60)) }),
      el("td", { text: String(p.sessions) }),
    ),
  );
  $("attendance-table").tBodies[0].replaceChildren(...rows);
  $("attendance-empty").hidden = rows.length > 0;
  $("my-attendance").hidden = false;
}

$("attendance-csv").addEventListener("click", () => downloadAttendance(ui.lesson.id, "csv").catch(failed));
$("attendance-json").addEventListener("click", () => downloadAttendance(ui.lesson.id, "json").catch(failed));

// -- live ------------------------------------------------------------------------------

function startLive() {
  if (ui.liveTimer) return;
  refreshLive().catch(failed);
  ui.liveTimer = setInterval(() => refreshLive().catch(failed), LIVE_INTERVAL_MS);
}

function stopLive() {
  clearInterval(ui.liveTimer);
  ui.liveTimer = null;
}

function liveLesson(lesson) {
  const points = ui.history.get(lesson.id) ?? [];
  points.push({ kbpsIn: lesson.kbps_in, kbpsOut: lesson.kbps_out, participants: lesson.participants });
  while (points.length > MAX_POINTS) points.shift();
  ui.history.set(lesson.id, points);
  const chart = el("figure", { className: "chart-box" });
  drawChart(chart, points);
  const people = lesson.people.map((p) =>
    el(
      "tr",
      { dataset: { participant: p.id, role: p.role } },
      el("td", { text: p.name }),
      el("td", { text: roleLabel(p.role) }),
      el("td", { text: p.school }),
      el("td", { text: p.tracks.map((t) => `${t.source}${t.muted ? " (muted)" : ""}`).join(", ") || "—" }),
      el("td", { text: p.kbps_in == null ? "…" : `${p.kbps_in}` }),
      el("td", { text: p.kbps_out == null ? "…" : `${p.kbps_out}` }),
      el("td", { text: lossText(p) }),
      el("td", { className: "warn", text: p.warnings.join("; ") }),
    ),
  );
  const scheduled = ui.lessons.find((l) => l.id === lesson.id) ?? (lesson.scheduled ? { id: lesson.id, title: lesson.title } : null);
  const section = el(
    "section",
    { className: "panel live-lesson", dataset: { lesson: lesson.id } },
    el("h2", { text: lesson.title ?? `${lesson.id} (not scheduled)` }),
    el(
      "p",
      { className: "meta" },
      `${lesson.participants} in the lesson, ${lesson.waiting} waiting. Schools: `,
      lesson.schools.map((s) => `${s.school || "none"} ${s.participants}${s.headcount ? ` (+${s.headcount} students in the room)` : ""}`).join(", "),
    ),
    lesson.warnings.length
      ? el("ul", { className: "warnings" }, ...lesson.warnings.map((w) => el("li", { text: w })))
      : null,
    chart,
    el(
      "table",
      { className: "people" },
      el("thead", {}, el("tr", {}, ...["Name", "Role", "School", "Publishes", "kbit/s in", "kbit/s out", "Loss", "Warnings"].map((h) => el("th", { text: h })))),
      el("tbody", {}, ...people),
    ),
    scheduled
      ? button("End lesson", () => endLesson(lesson.id, lesson.title ?? lesson.id), { name: `End lesson: ${lesson.title ?? lesson.id}`, className: "danger" })
      : el("p", { className: "note", text: "An ad-hoc lesson (a link made with lco token): its teacher ends it from the lesson page." }),
  );
  return section;
}

function lossText(p) {
  const worst = Math.max(-1, ...p.tracks.map((t) => t.loss_pct ?? -1), p.loss_out_pct ?? -1);
  return worst < 0 ? "…" : `${worst} %`;
}

async function refreshLive() {
  if ($("live").hidden && !ui.liveTimer) return;
  const lessons = await ui.api.get("/api/live");
  $("live-lessons").replaceChildren(...lessons.map(liveLesson));
  $("live-empty").hidden = lessons.length > 0;
}

for (const tab of document.querySelectorAll("#console-nav [data-view]")) {
  tab.addEventListener("click", () => showView(tab.dataset.view));
}

// -- start -------------------------------------------------------------------------------

async function startOperator(session) {
  ui.api = new Api({ csrf: session.csrf_token });
  $("console-nav").hidden = false;
  $("console-mode").textContent = "console";
  $("lesson-starts").value = nextHour();
  await loadCommunities();
  showView("setup");
  if (!ui.communityId) $("community-name").focus();
}

/** A teacher's page: the lesson's links for the invited schools, student links, attendance. */
async function startTeacher(token, claims) {
  ui.teacher = claims;
  ui.api = new Api({ token });
  $("console-mode").textContent = `my lesson (${claims.name})`;
  $("links-back").hidden = true;
  try {
    const lesson = await ui.api.get(`/api/lessons/${encodeURIComponent(claims.lesson)}`);
    await showLinks(lesson);
  } catch (error) {
    if (!(error instanceof ApiError) || error.status !== 404) throw error;
    // An ad-hoc lesson (lco token, the demo): no links to hand out, attendance only.
    ui.lesson = { id: claims.lesson };
    $("links-title").textContent = `Lesson ${claims.lesson}`;
    $("links-what").textContent = "This lesson was not scheduled in the console, so it has no school links; its attendance is below.";
    for (const id of ["links-copy-all", "links-print", "students-form"]) $(id).hidden = true;
    await showAttendance(claims.lesson);
    showView("links");
  }
}

async function main() {
  const token = tokenFromLocation();
  if (token) {
    const claims = readClaims(token);
    if (!claims || claims.role !== "teacher") {
      status("This link is not a teacher's link.", "error");
      return;
    }
    await startTeacher(token, claims);
    return;
  }
  const session = await operatorSession();
  if (session) await startOperator(session);
  else showSignIn();
}

window.lcoConsole = { state: () => ({ view: ["sign-in", "setup", "links", "live"].find((id) => !$(id).hidden) ?? null, links: ui.links.length }) };
main().catch(failed);
