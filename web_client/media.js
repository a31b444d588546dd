// The local camera, microphone and screen, and what to say when they fail.

/** A sentence for people about why getUserMedia / getDisplayMedia failed. */
export function explainMediaError(error, what = "camera and microphone") {
  switch (error?.name) {
    case "NotAllowedError":
    case "SecurityError":
      return `The browser blocked the ${what}. Allow access with the camera icon in the address bar, then reload the page. You can still join to watch and listen.`;
    case "NotFoundError":
    case "OverconstrainedError":
      return `No ${what} was found. Plug one in and reload the page, or join to watch and listen.`;
    case "NotReadableError":
    case "AbortError":
      return `The ${what} is busy or not working (another program may be using it). Close that program and reload the page.`;
    default:
      return `The ${what} could not be started (${error?.message || error}). You can still join to watch and listen.`;
  }
}

/**
 * Open the camera and microphone (each may fail on its own).
 * Returns {stream, error} where error is a sentence or null.
 */
export async function openCameraAndMicrophone({ cameraId, microphoneId } = {}) {
  // 720p where the camera has it: browsers send three simulcast layers only from
  // 960x540 up (two from 640x360), so a 640x480 default would never send the top one.
  const size = { width: { ideal: 1280 }, height: { ideal: 720 } };
  const video = cameraId ? { deviceId: { exact: cameraId }, ...size } : size;
  const audio = microphoneId ? { deviceId: { exact: microphoneId } } : true;
  if (!navigator.mediaDevices?.getUserMedia) {
    return {
      stream: new MediaStream(),
      error: "This page needs a secure address (https) to use the camera; ask for a corrected link.",
    };
  }
  try {
    return { stream: await navigator.mediaDevices.getUserMedia({ video, audio }), error: null };
  } catch (first) {
    // One device may be missing or blocked: try each alone before giving up.
    const stream = new MediaStream();
    for (const constraints of [{ video }, { audio }]) {
      try {
        const part = await navigator.mediaDevices.getUserMedia(constraints);
        part.getTracks().forEach((t) => stream.addTrack(t));
      } catch {
        /* reported below */
      }
    }
    const missing = stream.getVideoTracks().length === 0 ? "camera" : "microphone";
    const what = stream.getTracks().length === 0 ? "camera and microphone" : missing;
    return { stream, error: explainMediaError(first, what) };
  }
}

/** The cameras and microphones the page may choose from. */
export async function listDevices() {
  const devices = (await navigator.mediaDevices?.enumerateDevices?.()) ?? [];
  return {
    cameras: devices.filter((d) => d.kind === "videoinput"),
    microphones: devices.filter((d) => d.kind === "audioinput"),
  };
}

/** Ask for a screen (and its audio if offered). Returns the stream or throws. */
export function openScreen() {
  return navigator.mediaDevices.getDisplayMedia({ video: { frameRate: 15 }, audio: true });
}
