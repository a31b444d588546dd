// A student at home: besides what every lesson page shows (room.js), a line that
// says whether the teacher has let the student publish yet, from the `publish`
// permission the server grants and takes back.

import { setText } from "../ui.js";

const $ = (id) => document.getElementById(id);

export class StudentView {
  constructor(store) {
    this.store = store;
    store.subscribe(() => this.render());
  }

  render() {
    if (!this.store.me) return;
    const allowed = this.store.may("publish");
    setText(
      "publish-status",
      allowed
        ? "The teacher has allowed you to publish: your camera and microphone are on."
        : "The teacher has not allowed you to publish yet. You can watch and listen.",
    );
    $("publish-status").dataset.allowed = String(allowed);
  }
}
