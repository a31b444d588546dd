// Director mode and recording on the page.
//
// Director: the teacher chooses what the stage of every classroom big screen shows
// (one participant's camera or screen, or two side by side), for every classroom or
// for one. Classroom pages follow without a click; a student follows too unless it
// unticks "Follow the teacher's stage"; the teacher's own console is not directed.
//
// Recording: when it starts every page shows a notice that stays while it lasts and
// plays a short chime; a teacher starts and stops it; a school's delegate declines it.

const $ = (id) => document.getElementById(id);

function make(tag, props = {}, ...children) {
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children);
  return node;
}

/** What this page's stage must show now: a list of {participant_id, source}, or null. */
export function directedItems(me, state, follow) {
  if (!me || !state) return null;
  if (me.role === "classroom") {
    const own = state.classroom_stages?.[me.id];
    return (own ?? state.stage)?.items ?? null;
  }
  if (me.role === "student" && follow) return state.stage?.items ?? null;
  return null;
}

function sourcesOf(participant) {
  const sources = new Set((participant.tracks ?? []).filter((t) => t.kind === "video").map((t) => t.source));
  return ["camera", "screen"].filter((s) => sources.has(s));
}

/** The teacher's panel: choose the stage per lesson or per classroom; a student's follow box. */
export class DirectorPanel {
  constructor(send, onFollowChanged) {
    this.send = send;
    this.follow = true;
    this.onFollowChanged = onFollowChanged;
  }

  render(me, participants, state, runs) {
    const panel = $("director-panel");
    const followPanel = $("follow-panel");
    if (!panel || !followPanel || !me) return;
    followPanel.hidden = me.role !== "student";
    const box = $("follow-director");
    if (box && !box.dataset.wired) {
      box.dataset.wired = "true";
      box.addEventListener("change", () => {
        this.follow = box.checked;
        this.onFollowChanged();
      });
    }
    panel.hidden = !runs;
    if (!runs) return;
    const everyone = [me, ...participants.values()];
    const classrooms = everyone.filter((p) => p.role === "classroom");
    const scope = $("director-scope");
    const chosenScope = scope.value;
    scope.replaceChildren(
      make("option", { value: "", textContent: "Every classroom" }),
      ...classrooms.map((c) => make("option", { value: c.id, textContent: `${c.name} (${c.school})` })),
    );
    scope.value = classrooms.some((c) => c.id === chosenScope) ? chosenScope : "";
    const choices = everyone.flatMap((p) =>
      sourcesOf(p).map((source) => ({
        value: `${p.id}|${source}`,
        label: `${p.id === me.id ? "You" : p.name}${source === "screen" ? " (screen)" : ""}`,
      })),
    );
    for (const [id, optional] of [
      ["director-first", false],
      ["director-second", true],
    ]) {
      const select = $(id);
      const previous = select.value;
      select.replaceChildren(
        ...(optional ? [make("option", { value: "", textContent: "— nothing beside it —" })] : []),
        ...choices.map((c) => make("option", { value: c.value, textContent: c.label })),
      );
      if (choices.some((c) => c.value === previous)) select.value = previous;
    }
    const current = scope.value ? state.classroom_stages?.[scope.value] : state.stage;
    $("director-status").textContent = current
      ? `Big screens show: ${current.items
          .map((item) => {
            const who = everyone.find((p) => p.id === item.participant_id);
            return `${who ? (who.id === me.id ? "you" : who.name) : "someone who left"}${item.source === "screen" ? " (screen)" : ""}`;
          })
          .join(" beside ")}.`
      : "Big screens choose for themselves.";
    if (!panel.dataset.wired) {
      panel.dataset.wired = "true";
      $("director-show").addEventListener("click", () => this.show());
      $("director-release").addEventListener("click", () =>
        this.send("direct_stage", { stage: null, classroom: $("director-scope").value || null }),
      );
    }
  }

  show() {
    const items = ["director-first", "director-second"]
      .map((id) => $(id).value)
      .filter(Boolean)
      .map((value) => {
        const [participant_id, source] = value.split("|");
        return { participant_id, source };
      });
    if (!items.length) return;
    this.send("direct_stage", { stage: { items }, classroom: $("director-scope").value || null });
  }
}

/** The recording notice (every page), the teacher's record button, a delegate's refusal. */
export class RecordingPanel {
  constructor(send) {
    this.send = send;
    this.recording = false;
    this.chimes = 0;
  }

  /** A `recording_changed` message, or the state of a welcome / lesson_updated. */
  changed(recording, message) {
    const notice = $("recording-notice");
    if (recording && !this.recording) this.chime();
    this.recording = recording;
    notice.hidden = !recording;
    if (message) $("recording-text").textContent = message;
    else if (recording && !$("recording-text").textContent) {
      $("recording-text").textContent = "This lesson is being recorded.";
    }
    document.body.dataset.recording = String(recording);
  }

  render(me, state, may) {
    const panel = $("recording-panel");
    if (!panel || !me) return;
    const records = may("record");
    const declines = may("decline_recording");
    panel.hidden = !records && !declines;
    const record = $("record-button");
    record.hidden = !records;
    record.textContent = state.recording ? "Stop recording" : "Start recording";
    record.setAttribute("aria-pressed", String(Boolean(state.recording)));
    const declined = (state.recording_declined ?? []).includes(me.school);
    const decline = $("decline-recording-button");
    decline.hidden = !declines;
    decline.textContent = declined ? "Allow recording of my school" : "Decline recording for my school";
    decline.setAttribute("aria-pressed", String(declined));
    $("recording-status").textContent = [
      state.recording ? "Recording." : "Not recording.",
      (state.recording_declined ?? []).length
        ? `Not recorded: ${state.recording_declined.join(", ")}.`
        : "",
    ].join(" ");
    if (!panel.dataset.wired) {
      panel.dataset.wired = "true";
      record.addEventListener("click", () =>
        this.send(this.recording ? "stop_recording" : "start_recording", {}),
      );
      decline.addEventListener("click", () =>
        this.send("decline_recording", { declined: decline.getAttribute("aria-pressed") !== "true" }),
      );
    }
  }

  /** Two short tones: heard even on a big screen across the room. */
  chime() {
    this.chimes += 1;
    try {
      const context = new AudioContext();
      const start = context.currentTime;
      for (const [offset, frequency] of [
        [0, 660],
        [0.25, 880],
      ]) {
        const oscillator = context.createOscillator();
        const gain = context.createGain();
        oscillator.frequency.value = frequency;
        gain.gain.setValueAtTime(0.2, start + offset);
        gain.gain.exponentialRampToValueAtTime(0.001, start + offset + 0.2);
        oscillator.connect(gain).connect(context.destination);
        oscillator.start(start + offset);
        oscillator.stop(start + offset + 0.2);
      }
      setTimeout(() => context.close(), 1000);
    } catch {
      // No audio output: the notice is still shown.
    }
  }
}
