// The classroom's big screen (the room PC): it joins without a click and nobody
// sits at its keyboard, so when the teacher lifts a mute its microphone or camera
// comes back on by itself. The rest of the big screen (the stage filling the
// screen, no side panel, large notices) is style.css, for body[data-role="classroom"].

export class ClassroomView {
  /**
   * @param page the controller (localTrack, renderViews)
   * @param room the RoomView, whose "allowed back" notice needs no "press ..." hint here
   */
  constructor(page, room) {
    room.onUnmuteAllowed = (kind) => {
      const track = page.localTrack(kind);
      if (track) track.enabled = true;
      return "";
    };
  }
}
