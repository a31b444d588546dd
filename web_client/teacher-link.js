// On a teacher's join page: a link to "my lesson" in the console (the lesson's
// links for the invited schools, student links, attendance), carrying the same
// token in the fragment, so it never reaches a request line.

import { readClaims, tokenFromLocation } from "./token.js";

const token = tokenFromLocation();
const claims = token ? readClaims(token) : null;
if (claims?.role === "teacher") {
  for (const link of document.querySelectorAll(".my-lesson-link")) {
    link.href = `/console#token=${token}`;
    link.hidden = false;
  }
}
