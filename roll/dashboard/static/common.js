// Shared helpers of the dashboard pages: the token (kept in this browser's localStorage), JSON
// fetches, element building. Text from run stores is only ever set as textContent.
"use strict";
window.roll = (() => {
  const TOKEN_KEY = "roll-dashboard-token";

  function token() {
    return localStorage.getItem(TOKEN_KEY) || "";
  }

  // `roll dashboard` prints http://127.0.0.1:PORT/#token=...: the fragment never reaches the
  // server (or its logs); keep it here and drop it from the address bar.
  function takeTokenFromHash() {
    const match = location.hash.match(/(?:^#|&)token=([^&]+)/);
    if (match) {
      localStorage.setItem(TOKEN_KEY, decodeURIComponent(match[1]));
      history.replaceState(null, "", location.pathname + location.search);
    }
  }

  function showTokenState() {
    const state = document.getElementById("token-state");
    if (state) state.textContent = token() ? "set" : "not set";
  }

  function setupTokenForm() {
    const form = document.getElementById("token-form");
    if (!form) return;
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const input = document.getElementById("token-input");
      const value = input.value.trim();
      if (value) localStorage.setItem(TOKEN_KEY, value);
      else localStorage.removeItem(TOKEN_KEY);
      input.value = "";
      showTokenState();
    });
    showTokenState();
  }

  async function getJSON(path) {
    const response = await fetch(path, { headers: { Accept: "application/json" } });
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      throw new Error(`${response.status}: ${body.detail || response.statusText}`);
    }
    return response.json();
  }

  async function post(path, body, contentType) {
    const headers = { Accept: "application/json", Authorization: `Bearer ${token()}` };
    if (contentType) headers["Content-Type"] = contentType;
    const response = await fetch(path, { method: "POST", headers, body });
    const data = await response.json().catch(() => ({}));
    return { status: response.status, ok: response.ok, data };
  }

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "text") node.textContent = value;
      else if (name === "class") node.className = value;
      else node.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function pageData() {
    const node = document.getElementById("page-data");
    return node ? JSON.parse(node.textContent) : {};
  }

  function fmt(value) {
    if (value === null || value === undefined) return "–";
    if (typeof value !== "number") return String(value);
    return Math.abs(value) >= 1e4 || (value !== 0 && Math.abs(value) < 1e-3)
      ? value.toExponential(3)
      : String(Number(value.toPrecision(4)));
  }

  function fmtTime(seconds) {
    if (seconds === null || seconds === undefined) return "";
    return new Date(seconds * 1000).toLocaleString();
  }

  takeTokenFromHash();
  document.addEventListener("DOMContentLoaded", setupTokenForm);
  return { token, getJSON, post, el, pageData, fmt, fmtTime };
})();
