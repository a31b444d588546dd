// A small live chart in plain SVG: a lesson's bitrate (in and out) and its
// participants over the last few minutes. No library, no build step.

const NS = "http://www.w3.org/2000/svg";
const WIDTH = 360;
const HEIGHT = 120;
const PAD = 24;
export const MAX_POINTS = 90; // three minutes at one look every two seconds

function svg(tag, attrs = {}) {
  const node = document.createElementNS(NS, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
  return node;
}

function line(points, key, max, className) {
  const step = (WIDTH - 2 * PAD) / Math.max(1, MAX_POINTS - 1);
  const start = WIDTH - PAD - step * (points.length - 1);
  const coords = points.map((p, i) => {
    const x = start + i * step;
    const y = HEIGHT - PAD - ((p[key] ?? 0) / max) * (HEIGHT - 2 * PAD);
    return `${x.toFixed(1)},${y.toFixed(1)}`;
  });
  return svg("polyline", { points: coords.join(" "), class: className, fill: "none" });
}

/**
 * Redraw `figure`'s chart from `points` ([{kbpsIn, kbpsOut, participants}], oldest first).
 * Bitrates share the left scale (kbit/s), participants the right one.
 */
export function drawChart(figure, points) {
  const kbpsMax = Math.max(100, ...points.map((p) => Math.max(p.kbpsIn ?? 0, p.kbpsOut ?? 0)));
  const peopleMax = Math.max(2, ...points.map((p) => p.participants ?? 0));
  const root = svg("svg", {
    viewBox: `0 0 ${WIDTH} ${HEIGHT}`,
    role: "img",
    "aria-label": "Bitrate and participants over the last minutes",
    class: "chart",
  });
  root.append(
    svg("rect", { x: PAD, y: PAD / 2, width: WIDTH - 2 * PAD, height: HEIGHT - 1.5 * PAD, class: "frame" }),
    line(points, "kbpsIn", kbpsMax, "in"),
    line(points, "kbpsOut", kbpsMax, "out"),
    line(points, "participants", peopleMax, "people"),
  );
  const label = (x, y, text, className, anchor = "start") => {
    const node = svg("text", { x, y, class: className, "text-anchor": anchor });
    node.textContent = text;
    return node;
  };
  const last = points.at(-1) ?? {};
  root.append(
    label(PAD, HEIGHT - 6, `${Math.round(kbpsMax)} kbit/s scale`, "axis"),
    label(WIDTH - PAD, HEIGHT - 6, `${peopleMax} people scale`, "axis", "end"),
    label(PAD + 4, PAD + 4, `in ${last.kbpsIn ?? 0} kbit/s`, "in-label"),
    label(PAD + 110, PAD + 4, `out ${last.kbpsOut ?? 0} kbit/s`, "out-label"),
    label(WIDTH - PAD - 4, PAD + 4, `${last.participants ?? 0} people`, "people-label", "end"),
  );
  figure.replaceChildren(root);
  figure.dataset.points = String(points.length);
}
