// Before the lesson: the pre-join screen (who one joins as, a camera preview,
// camera and microphone pickers, Join; a classroom skips it) and the lobby while
// the teacher has not let one in yet.

import { listDevices } from "../media.js";
import { setBanner, showScreen, whoLabel } from "../ui.js";

const $ = (id) => document.getElementById(id);

// What the pre-join screen says to a role about what happens once in.
const NOTES = {
  student: "You can watch and listen; the teacher decides when you may use your camera and microphone.",
  observer: "You will watch and listen.",
};

export class PrejoinView {
  /**
   * @param store the lesson (store.js): shows the lobby while the server holds one there
   * @param page the controller (connect, openMedia, leave)
   * @param claims name, role, school and lesson from the link (not trusted: greeting only)
   */
  constructor(store, page, claims) {
    this.store = store;
    this.page = page;
    this.claims = claims;
    $("lobby-leave").addEventListener("click", () => page.leave());
    store.subscribe((change) => change.type === "lobby_wait" && this.showLobby());
  }

  /** Show the pre-join screen; Join connects. */
  show() {
    const { claims, page } = this;
    const who = whoLabel(claims);
    $("prejoin-who").textContent = `You will join lesson “${claims.lesson}” as ${who}.`;
    $("prejoin-note").textContent = NOTES[claims.role] ?? "";
    showScreen("prejoin");
    $("join-button").addEventListener("click", () => {
      $("join-button").disabled = true;
      $("join-button").textContent = "Joining…";
      page.connect();
    });
  }

  /** The local camera and microphone (or none) to preview. */
  preview(stream) {
    $("prejoin-preview").srcObject = stream;
  }

  async fillDevicePickers(localStream) {
    const { cameras, microphones } = await listDevices();
    const fill = (select, devices, current, label) => {
      select.replaceChildren(
        ...devices.map((d, i) => {
          const option = document.createElement("option");
          option.value = d.deviceId;
          option.textContent = d.label || `${label} ${i + 1}`;
          option.selected = d.deviceId === current;
          return option;
        }),
      );
      select.disabled = devices.length === 0;
    };
    const settings = (track) => track?.getSettings().deviceId ?? "";
    fill($("camera-select"), cameras, settings(localStream?.getVideoTracks()[0]), "Camera");
    fill($("microphone-select"), microphones, settings(localStream?.getAudioTracks()[0]), "Microphone");
    const reopen = () =>
      this.page.openMedia({ cameraId: $("camera-select").value, microphoneId: $("microphone-select").value });
    $("camera-select").onchange = reopen;
    $("microphone-select").onchange = reopen;
  }

  /** Sent instead of welcome: this participant waits in the lobby until let in. */
  showLobby() {
    setBanner(null);
    $("lobby-text").textContent =
      this.store.lobbyReason === "waiting_for_teacher"
        ? "Please wait: the teacher has not joined yet. You will be let in as soon as the teacher is here."
        : "Please wait, the teacher will let you in.";
    showScreen("lobby");
  }
}
