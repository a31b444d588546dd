// The teacher's console: the lesson's controls, the lobby, unmute requests, raised
// hands, breakout groups and the buttons next to each person. Every part and every
// button is there because the server said this participant may do it, to that
// person (`permissions` and `targets` in the store); a page whose participant may
// do none of it shows none of it. The server checks every action again.

import { actionButton, kindWord, renderGroups, renderHands, renderLobby, renderUnmuteRequests } from "../lesson.js";

const $ = (id) => document.getElementById(id);
const KINDS = ["audio", "video"];
const CHAT = new Set(["chat_message", "chat_history"]); // nothing here shows chat

export class TeacherView {
  /**
   * @param store the lesson (store.js)
   * @param page the controller (send)
   * @param room the RoomView, whose people list gets this view's buttons
   */
  constructor(store, page, room) {
    this.store = store;
    this.send = page.send;
    room.actionsFor = (p) => this.actionsFor(p);
    this.bind();
    store.subscribe((change) => !CHAT.has(change.type) && this.render());
  }

  bind() {
    const send = this.send;
    $("mute-all-audio").addEventListener("click", () => send("mute_all", { kind: "audio" }));
    $("mute-all-video").addEventListener("click", () => send("mute_all", { kind: "video" }));
    $("lock-button").addEventListener("click", () => send("lock_lesson", { locked: !this.store.lesson.locked }));
    $("end-button").addEventListener("click", () => {
      if (window.confirm("End the lesson for everyone? Everyone will be disconnected.")) send("end_lesson");
    });
    $("breakout-start").addEventListener("submit", (event) => {
      event.preventDefault();
      const count = Number.parseInt($("breakout-count").value, 10);
      if (count >= 2) send("start_breakout", { count });
    });
    $("breakout-main").addEventListener("click", () => send("visit_group", { group: null }));
    $("broadcast-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const input = $("broadcast-text");
      const text = input.value.trim();
      if (text && send("broadcast", { text })) input.value = "";
    });
    $("broadcast-audio").addEventListener("click", () =>
      send("broadcast_audio", { on: this.store.lesson.broadcast_audio_from !== this.store.me?.id }),
    );
    $("breakout-end").addEventListener("click", () => send("end_breakout"));
  }

  /** The buttons next to a participant: what the server lets this page send about them. */
  actionsFor(p) {
    const store = this.store;
    const send = this.send;
    const inline = [];
    const more = [];
    const target = { participant_id: p.id };
    if (p.can_publish ? store.mayTarget("revoke_publish", p) : store.mayTarget("grant_publish", p)) {
      inline.push(
        p.can_publish
          ? { label: "Stop publishing", onClick: () => send("revoke_publish", target) }
          : { label: "Allow to publish", onClick: () => send("grant_publish", target) },
      );
    }
    for (const kind of KINDS) {
      const muted = (p.muted ?? []).includes(kind);
      if (!store.mayTarget(muted ? "allow_unmute" : "mute", p)) continue;
      const word = kindWord(kind);
      inline.push(
        muted
          ? { label: `Allow ${word}`, onClick: () => send("allow_unmute", { ...target, kind }) }
          : { label: `Mute ${word}`, onClick: () => send("mute", { ...target, kind }) },
      );
    }
    if (store.mayTarget("set_presenter", p)) {
      more.push({
        label: p.presenter ? "Stop presenting" : "Make presenter",
        onClick: () => send("set_presenter", { ...target, presenter: !p.presenter }),
      });
    }
    if (store.mayTarget("spotlight", p)) {
      const lit = store.lesson.spotlight === p.id;
      more.push({
        label: lit ? "Remove spotlight" : "Spotlight",
        pressed: lit,
        onClick: () => send("spotlight", { participant_id: lit ? null : p.id }),
      });
    }
    if (store.mayTarget("remove", p)) {
      more.push({
        label: "Remove from lesson",
        className: "danger",
        onClick: () => {
          if (window.confirm(`Remove ${p.name} from the lesson? Their link will stop working.`)) {
            send("remove", target);
          }
        },
      });
    }
    return { inline, more };
  }

  /** Lobby, unmute requests, raised hands, breakout groups, lesson controls. */
  render() {
    const store = this.store;
    const me = store.me;
    if (!me) return;
    const send = this.send;
    const lesson = store.lesson;
    // The lesson: lock, mute all, end.
    const runs = store.may("run_lesson");
    $("lesson-controls").hidden = !runs;
    $("lock-button").textContent = lesson.locked ? "Unlock lesson" : "Lock lesson";
    $("lock-button").setAttribute("aria-pressed", String(lesson.locked));
    $("lock-status").textContent = lesson.locked ? "The lesson is locked: nobody new can join." : "The lesson is open.";
    // The lobby.
    $("lobby-panel").hidden = !store.may("admit") || store.waiting.length === 0;
    renderLobby(store.waiting, (p) => [
      ...(store.mayTarget("admit", p)
        ? [actionButton("Admit", p.name, () => send("admit", { participant_id: p.id }), "primary")]
        : []),
      ...(store.mayTarget("deny", p) ? [actionButton("Deny", p.name, () => send("deny", { participant_id: p.id }))] : []),
    ]);
    // Unmute requests (the server sends them only to those who may lift the mute).
    const requests = [...store.unmuteRequests.values()]
      .map((r) => ({ participant: store.participants.get(r.participant_id), kind: r.kind }))
      .filter((r) => r.participant);
    $("unmute-panel").hidden = requests.length === 0;
    renderUnmuteRequests(
      requests,
      (p, kind) => send("allow_unmute", { participant_id: p.id, kind }),
      (p, kind) => store.dismissUnmuteRequest(p.id, kind),
    );
    // Raised hands: those who may give the floor or lower hands see the queue.
    $("hands-panel").hidden = !("grant_floor" in store.targets || "lower_hand" in store.targets);
    renderHands(store.hands, (hand) => {
      // A hand is always someone in the lesson; its entry may come a moment later.
      const p = store.participants.get(hand.participant_id);
      const buttons = [];
      if (store.mayTarget("grant_floor", p)) {
        buttons.push(
          actionButton("Give the floor", hand.name, () => send("grant_floor", { participant_id: p.id }), "primary"),
        );
      }
      if (store.mayTarget("lower_hand", p)) {
        buttons.push(actionButton("Lower", hand.name, () => send("lower_hand", { participant_id: p.id })));
      }
      return buttons;
    });
    // Breakout groups.
    $("breakout-panel").hidden = !runs;
    $("breakout-start").hidden = lesson.breakout;
    $("breakout-running").hidden = !lesson.breakout;
    if (lesson.breakout) {
      const nameOf = (id) => {
        const p = store.who(id);
        return p.role ? `${p.name}${p.school ? ` (${p.school})` : ""}` : null;
      };
      renderGroups(lesson.groups ?? {}, nameOf, me.group ?? null, (group) => send("visit_group", { group }));
      $("breakout-main").hidden = !me.group;
      const broadcasting = lesson.broadcast_audio_from === me.id;
      $("broadcast-audio").setAttribute("aria-pressed", String(broadcasting));
      $("broadcast-audio").textContent = broadcasting ? "Stop broadcasting my audio" : "Broadcast my audio to all groups";
    }
  }
}
