// Reading the join token from the link, only to greet people before they join.
// The server checks the signature and expiry; nothing here is trusted.

/** The token from the URL fragment (#token=...), or null. */
export function tokenFromLocation(location = window.location) {
  const fragment = new URLSearchParams(location.hash.replace(/^#/, ""));
  const token = fragment.get("token");
  return token && token.trim() ? token.trim() : null;
}

function base64UrlDecode(text) {
  const padded = text.replace(/-/g, "+").replace(/_/g, "/").padEnd(Math.ceil(text.length / 4) * 4, "=");
  const bytes = Uint8Array.from(atob(padded), (c) => c.charCodeAt(0));
  return new TextDecoder().decode(bytes);
}

/**
 * The claims of a JWT (its middle part), or null when it cannot be read.
 * Returns {name, role, school, lesson, exp}.
 */
export function readClaims(token) {
  const parts = token.split(".");
  if (parts.length !== 3) return null;
  try {
    const claims = JSON.parse(base64UrlDecode(parts[1]));
    if (typeof claims !== "object" || claims === null) return null;
    return {
      name: String(claims.name ?? ""),
      role: String(claims.role ?? ""),
      school: String(claims.school ?? ""),
      lesson: String(claims.lesson ?? ""),
      exp: Number(claims.exp ?? 0),
    };
  } catch {
    return null;
  }
}
