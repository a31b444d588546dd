// The HTTP API, as the console calls it: the operator with the cookie session
// (and its CSRF token on requests that change something), a teacher with the
// join token from the page's fragment. Every action goes through these routes.

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export class Api {
  /** `csrf` for a cookie session, or `token` for a teacher. */
  constructor({ csrf = null, token = null } = {}) {
    this.csrf = csrf;
    this.token = token;
  }

  headers(method, json) {
    const headers = {};
    if (json) headers["Content-Type"] = "application/json";
    if (this.token) headers.Authorization = `Bearer ${this.token}`;
    else if (this.csrf && method !== "GET") headers["X-CSRF-Token"] = this.csrf;
    return headers;
  }

  async raw(method, path, body) {
    const response = await fetch(path, {
      method,
      headers: this.headers(method, body !== undefined),
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "same-origin",
      cache: "no-store",
    });
    if (!response.ok) {
      let message = `${response.status} ${response.statusText}`;
      try {
        message = (await response.json()).error ?? message;
      } catch {
        // not JSON: keep the status line
      }
      throw new ApiError(response.status, message);
    }
    return response;
  }

  async json(method, path, body) {
    const response = await this.raw(method, path, body);
    return response.status === 204 ? null : response.json();
  }

  get(path) {
    return this.json("GET", path);
  }

  post(path, body) {
    return this.json("POST", path, body);
  }
}
